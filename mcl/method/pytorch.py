"""The method for any PyTorch landmark regressor whose last layer is a linear shape prediction layer D -> 2n.

Section IV-E of the paper applies weighting fine-tuning to another network (DAN); its conclusion says the
network "can be replaced with a more powerful one". This module is that, for a PyTorch model:

  LandmarkLoss      Eq. 4 as a module, the value our Caffe loss layers compute (METHOD §3)
  MultiCenterHeads  m copies of the shape prediction layer, one per cluster (Algorithm 1, steps 4..3+m)
  assemble_heads    Eq. 2-3: one nn.Linear taking each landmark's rows from its cluster's head
  algorithm1        the whole of Algorithm 1: BM, Eq. 5, weighting fine-tuning in two parts, Eq. 9, the heads
                    with the feature extractor fixed, the assembly; and the equal-budget control

The Eq. 5/8/9 arithmetic is `mcl.method.loss_weights`' and the splice of Eq. 2-3 is `mcl.method.assembly`'s,
the code the Caffe pipeline runs; the schedule and solver constants are `mcl.method.stages`'. Training is the
torch engine's: Caffe's SGD update, its "step" learning-rate policy and its data layers' batch order are
`mcl.method.sgd`'s, the one implementation mcl.engine trains the Caffe nets with (METHOD §5.2).

A model's contract: its output is the output of its shape prediction layer (by default the last module it
registers), an `nn.Linear(D, 2n)` fed the feature x (N, D); coordinates x1 y1 x2 y2 ... Fixed layers are in
eval mode while fixed (their BatchNorm uses and keeps its stored statistics, the `global` reading of METHOD §5.3,
the pipeline's default), and the heads train on features computed once per training row with the whole
feature extractor in eval mode.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mcl.method import loss_weights
from mcl.method.assembly import splice
from mcl.method.errors import ModelError
from mcl.method.layouts import Layout, get_layout
from mcl.method.sgd import Blob, CaffeSGD, SGDSettings, batch_rows
from mcl.method.stages import (
    ALPHA,
    BATCH_SIZE,
    GAMMA,
    MOMENTUM,
    STAGES,
    WEIGHT_DECAY,
    algorithm1_chain,
    stage_iterations,
    stage_stepsize,
)

__all__ = ["ALGORITHM1_STAGES", "Algorithm1Result", "LandmarkData", "LandmarkLoss", "LayoutMismatchError",
           "ModelError", "MultiCenterHeads", "Schedule", "ShapeLayerError", "StageSchedule", "algorithm1",
           "as_layout", "assemble_heads", "features_of", "landmark_errors", "predict", "shape_layer_of"]

# The stages algorithm1 trains, in order: the stage table's chain from step 1 (assembly trains nothing).
ALGORITHM1_STAGES = algorithm1_chain()


class ShapeLayerError(ModelError):
    """A shape prediction layer that is not an nn.Linear D -> 2n, or a model whose output is not that layer's."""


class LayoutMismatchError(ValueError):
    """A layout, a weight vector or a batch whose number of landmarks does not match the others."""


def as_layout(layout: Layout | str | int) -> Layout:
    return layout if isinstance(layout, Layout) else get_layout(layout)


def check_shape_layer(layer: nn.Module, layout: Layout) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise ShapeLayerError(f"the shape prediction layer must be an nn.Linear D -> 2n, got {type(layer).__name__}")
    if layer.out_features != 2 * layout.n_points:
        raise LayoutMismatchError(f"the shape prediction layer gives {layer.out_features} values; layout "
                                  f"{layout.name} has {layout.n_points} landmarks (2n = {2 * layout.n_points})")
    return layer


# ---- Eq. 4 -------------------------------------------------------------------------------------------

class LandmarkLoss(nn.Module):
    """Eq. 4 averaged over the batch: mean_i sum_j u_j ((dx_ij)^2 + (dy_ij)^2) / (2 d_i^2), u_j = 1 by default.

    `pred`, `target`: (N, 2n), x1 y1 x2 y2 ...; `d`: (N,) inter-ocular distances in the coordinates' units.
    As in the Caffe net (METHOD §3.1), prediction and target are each scaled by 1/d before they are subtracted.
    """

    def __init__(self, weights=None):
        super().__init__()
        u = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        if u is not None and u.ndim != 1:
            raise LayoutMismatchError(f"loss weights must be one value per landmark, got shape {tuple(u.shape)}")
        self.register_buffer("weights", u)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 2 or pred.shape != target.shape or pred.shape[1] % 2:
            raise LayoutMismatchError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both "
                                      "be (N, 2n)")
        n = pred.shape[1] // 2
        if d.shape != (pred.shape[0],):
            raise LayoutMismatchError(f"d must be (N,) = ({pred.shape[0]},), got {tuple(d.shape)}")
        if self.weights is not None and self.weights.shape[0] != n:
            raise LayoutMismatchError(f"{self.weights.shape[0]} loss weights for {n} landmarks")
        inv = (1.0 / d)[:, None]
        sq = ((pred * inv - target * inv) ** 2).reshape(len(pred), n, 2).sum(-1)
        if self.weights is not None:
            sq = sq * self.weights
        return sq.sum(1).mean() / 2


# ---- the heads and their assembly (steps 4..3+m, Eq. 2-3) ---------------------------------------------

class MultiCenterHeads(nn.Module):
    """One copy of `shape_layer` per cluster P_i of `layout`, each starting from its weights (steps 4..3+m).

    forward(x) gives {cluster: (N, 2n)}, each head's whole output, in the layout's head order."""

    def __init__(self, shape_layer: nn.Linear, layout: Layout | str | int):
        super().__init__()
        self.layout = as_layout(layout)
        check_shape_layer(shape_layer, self.layout)
        self.heads = nn.ModuleDict({c: copy.deepcopy(shape_layer).requires_grad_(True)
                                    for c in self.layout.cluster_names})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {c: head(x) for c, head in self.heads.items()}


def assemble_heads(heads: MultiCenterHeads) -> nn.Linear:
    """Eq. 2-3: one nn.Linear whose rows 2j, 2j+1 (and bias entries) are head i's for every j in P_i.

    The rows are copied (mcl.method.assembly.splice), so on its own clusters it computes exactly what each head
    computes."""
    first = next(iter(heads.heads.values()))
    blobs = {}
    for c, head in heads.heads.items():
        w = head.weight.detach().cpu().numpy()
        b = head.bias.detach().cpu().numpy() if head.bias is not None else np.zeros(w.shape[0], w.dtype)
        blobs[c] = [w, b]
    w, b = splice(blobs, heads.layout)
    out = nn.Linear(first.in_features, first.out_features, bias=first.bias is not None,
                    device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(w))
        if out.bias is not None:
            out.bias.copy_(torch.from_numpy(b))
    return out


# ---- a model's shape prediction layer and its features ----------------------------------------------

def shape_layer_of(model: nn.Module, layout: Layout, name: str | None = None) -> tuple[str, nn.Linear]:
    """(name, layer) of the model's shape prediction layer: `name`, else the last module it registers."""
    modules = dict(model.named_modules())
    if name is None:
        leaves = [k for k, m in modules.items() if k and not any(True for _ in m.children())]
        if not leaves:
            raise ShapeLayerError(f"{type(model).__name__} has no layers")
        name = leaves[-1]
    if name not in modules:
        raise ShapeLayerError(f"{type(model).__name__} has no layer {name!r}")
    return name, check_shape_layer(modules[name], layout)


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def features_of(model: nn.Module, shape_layer: str, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The feature x (N, D) the shape prediction layer receives, in eval mode, without gradients; checks that
    the model's output is that layer's output (the contract of this module)."""
    layer = model.get_submodule(shape_layer)
    seen = {}
    hook = layer.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], y=out))
    out, was = [], model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                y = model(images[i:i + batch])
                if "y" not in seen or y is not seen["y"] and not torch.equal(y, seen["y"]):
                    raise ShapeLayerError(f"the model's output is not its layer {shape_layer!r}'s output: the shape "
                                          "prediction layer must be the last thing the model computes")
                out.append(seen.pop("x").detach())
                seen.clear()
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(out)


def predict(model: nn.Module, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """(N, 2n) predictions in eval mode, as float64 NumPy."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    model.train(was)
    return out.cpu().numpy().astype(np.float64)


# ---- data and schedule ----------------------------------------------------------------------------

@dataclass
class LandmarkData:
    """A split as tensors: images (N, C, H, W), targets (N, 2n), d (N,) in the targets' units."""

    images: torch.Tensor
    targets: torch.Tensor
    d: torch.Tensor

    @classmethod
    def of(cls, data, layout: Layout, device="cpu", what: str = "data") -> LandmarkData:
        if isinstance(data, LandmarkData):
            images, targets, d = data.images, data.targets, data.d
        else:
            images, targets, d = data
        t = [torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.float32)
             .to(device) for a in (images, targets, d)]
        images, targets, d = t
        if targets.ndim != 2 or targets.shape[1] != 2 * layout.n_points:
            raise LayoutMismatchError(f"{what}: targets of shape {tuple(targets.shape)}; layout {layout.name} needs "
                                      f"(N, {2 * layout.n_points})")
        if not (len(images) == len(targets) == len(d)) or d.ndim != 1 or len(d) == 0:
            raise LayoutMismatchError(f"{what}: {len(images)} images, {len(targets)} targets and d of shape "
                                      f"{tuple(d.shape)} do not match")
        return cls(images, targets, d)


def landmark_errors(model: nn.Module, data: LandmarkData) -> np.ndarray:
    """b_j / w_j of Eq. 5 and Eq. 9 in the data's coordinates: each landmark's mean of ||pred - gt|| / d."""
    pred = predict(model, data.images).reshape(len(data.d), -1, 2)
    gt = data.targets.cpu().numpy().astype(np.float64).reshape(pred.shape)
    return (np.linalg.norm(pred - gt, axis=-1) / data.d.cpu().numpy().astype(np.float64)[:, None]).mean(axis=0)


@dataclass(frozen=True)
class StageSchedule:
    iterations: int
    stepsize: int
    base_lr: float


@dataclass(frozen=True)
class Schedule:
    """Every stage's iterations, step size and learning rate, and the solver's constants (METHOD §5)."""

    stages: dict[str, StageSchedule] = field(default_factory=dict)
    batch_size: int = BATCH_SIZE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    gamma: float = GAMMA

    @classmethod
    def from_stages(cls, scale: float = 1.0, schedule: str | None = None, batch_size: int = BATCH_SIZE) -> Schedule:
        """The Caffe pipeline's schedule (mcl.method.stages: the paper's times `scale`, or a named one)."""
        return cls({s: StageSchedule(stage_iterations(STAGES[s], scale, schedule),
                                     stage_stepsize(STAGES[s], scale, schedule), STAGES[s].base_lr)
                    for s in ALGORITHM1_STAGES}, batch_size)

    def describe(self) -> dict:
        return {"batch_size": self.batch_size, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "gamma": self.gamma, "lr_policy": "step",
                "stages": {k: {"iterations": v.iterations, "stepsize": v.stepsize, "base_lr": v.base_lr}
                           for k, v in self.stages.items()}}


def solver_settings(stage: StageSchedule, schedule: Schedule) -> SGDSettings:
    """A stage's solver as Caffe holds it (every SolverParameter field a float32, METHOD §5.2): lr_policy "step"."""
    return SGDSettings(base_lr=np.float32(stage.base_lr), lr_policy="step", gamma=np.float32(schedule.gamma),
                       stepsize=int(stage.stepsize), momentum=np.float32(schedule.momentum),
                       weight_decay=np.float32(schedule.weight_decay))


def learnable_blobs(named_params: Iterable[tuple[str, torch.Tensor]]) -> list[Blob]:
    """The parameters that train (requires_grad) as Caffe's learnable blobs, in the model's order: a bias at
    lr_mult 2, decay_mult 0, every other parameter 1, 1 (the multipliers mcl.caffe.netgen writes)."""
    out, seen = [], {}
    for n, p in named_params:
        if not p.requires_grad:
            continue
        layer, _, attr = n.rpartition(".")
        mult = (2.0, 0.0) if attr == "bias" else (1.0, 1.0)
        out.append(Blob(layer, seen.get(layer, 0), p, np.float32(mult[0]), np.float32(mult[1])))
        seen[layer] = seen.get(layer, 0) + 1
    return out


def batch_order(n: int, seed: int) -> torch.Tensor:
    """The training rows in the order the batches take them: one seeded permutation, the counterpart of the
    data preparation's one shuffle of the training crops (a Caffe data layer then reads them in order)."""
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


def _train(model: nn.Module, forward: Callable, data: LandmarkData, inputs: torch.Tensor, stage: StageSchedule,
           schedule: Schedule, order: torch.Tensor, name: str, log: Callable | None) -> dict:
    """One stage: `forward(inputs[rows], rows)` -> the loss, Caffe's SGD (mcl.method.sgd) on the model's
    trainable parameters; iteration k takes batch k of `order` as a Caffe data layer does (from batch 0)."""
    sgd = CaffeSGD(solver_settings(stage, schedule), learnable_blobs(model.named_parameters()))
    order = order.to(data.d.device)
    losses, t0 = [], time.perf_counter()
    for it in range(stage.iterations):
        rows = order[batch_rows(it, schedule.batch_size, len(order), order.device)]
        loss = forward(inputs[rows.to(inputs.device)], rows)
        loss.backward()
        rate = sgd.apply_update(it)
        losses.append(float(loss.detach()))
        if log and (it + 1) % max(1, stage.iterations // 10) == 0:
            log(f"{name}: iteration {it + 1}/{stage.iterations}, lr {float(rate):g}, loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - t0
    return {"iterations": stage.iterations, "seconds": seconds,
            "seconds_per_iteration": seconds / max(1, stage.iterations),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "base_lr": stage.base_lr, "stepsize": stage.stepsize}


def _train_model(model: nn.Module, data: LandmarkData, weights, stage: StageSchedule, schedule: Schedule,
                 order: torch.Tensor, name: str, log, fixed: tuple[str, ...] = ()) -> dict:
    """A stage that trains the model end to end on Eq. 4 with `weights`, the modules named in `fixed` fixed."""
    model.train()
    for f in fixed:
        model.get_submodule(f).eval().requires_grad_(False)
    loss = LandmarkLoss(weights).to(data.d.device)
    return _train(model, lambda x, rows: loss(model(x), data.targets[rows], data.d[rows]), data, data.images, stage,
                  schedule, order, name, log)


@dataclass
class Algorithm1Result:
    """BM, WM, AM, the heads, the equal-budget control (None if not asked for), the loss weights
    ({"eq5": (n,), "eq9": {cluster: (n,)}}), the validation errors they came from ({"bm", "wm"}) and each
    stage's iterations, seconds and losses."""

    bm: nn.Module
    wm: nn.Module
    am: nn.Module
    heads: MultiCenterHeads
    equal_budget: nn.Module | None
    weights: dict
    errors: dict
    stages: dict
    shape_layer: str
    fixed_in_stage2: tuple[str, ...]


def algorithm1(model: nn.Module, layout: Layout | str | int, train, val, schedule: Schedule, *,
               fixed_in_stage2: Iterable[str], shape_layer: str | None = None, alpha: float = ALPHA, seed: int = 0,
               device: str | torch.device = "cpu", val_errors: Callable[[nn.Module], np.ndarray] | None = None,
               equal_budget: bool = True, log: Callable[[str], None] | None = None) -> Algorithm1Result:
    """Algorithm 1 on `model` (left untouched: each product is a copy).

    train, val: LandmarkData or (images (N, C, H, W), targets (N, 2n), d (N,)). schedule: e.g.
    Schedule.from_stages(0.01). fixed_in_stage2: names (as in model.named_modules()) of the early layers
    step 2 fixes (the paper: conv11..conv32). val_errors(model) -> (n,): the validation errors b_j / w_j of
    Eq. 5 and Eq. 9 (default: landmark_errors on `val`, in its coordinates). seed: the order of the training
    rows (one permutation), which every stage's batches take in turn from the first, as Caffe's data layers do.
    """
    lay = as_layout(layout)
    base = copy.deepcopy(model).to(device)
    name, _ = shape_layer_of(base, lay, shape_layer)
    fixed = tuple(fixed_in_stage2)
    modules = dict(base.named_modules())
    missing = [f for f in fixed if f not in modules or not f]
    if missing:
        raise ModelError(f"{type(model).__name__} has no layer(s) {', '.join(map(repr, missing))} to fix in stage 2")
    if any(f == name or name.startswith(f + ".") for f in fixed):
        raise ModelError(f"stage 2 cannot fix the shape prediction layer {name!r}")
    absent = [s for s in ALGORITHM1_STAGES if s not in schedule.stages]
    if absent:
        raise ValueError(f"the schedule lacks stage(s) {', '.join(absent)}")
    tr = LandmarkData.of(train, lay, device, "train")
    va = LandmarkData.of(val, lay, device, "val")
    errors_of = val_errors or (lambda m: landmark_errors(m, va))
    features_of(base, name, tr.images[:2])  # the contract, checked before any training
    st, stages = schedule.stages, {}
    # One order of the training rows for every stage, each stage from its batch 0: as the pipeline's stages
    # read the one shuffled training split through their data layers.
    order = batch_order(len(tr.d), seed)

    # The table's rows in order (mcl.method.stages.algorithm1_chain): each starts from a copy of its start's
    # product (step 1 from the model), trains with the loss weights of its row (u_j = 1, or Eq. 5 / Eq. 9 from
    # the validation errors of the product its row names) and the layers its row fixes (stage 2's: the model's
    # `fixed_in_stage2`); the heads' row builds its start from that product's shape layer (METHOD §5.1).
    products: dict[str, nn.Module] = {}
    weights: dict[str, object] = {}
    errors: dict[str, np.ndarray] = {}

    def weights_of(row) -> object:
        if row.weights == "uniform":
            return None
        source = STAGES[row.weights_from]
        if source.product not in errors:
            e = np.asarray(errors_of(products[source.name]), dtype=np.float64)
            if e.shape != (lay.n_points,):
                raise LayoutMismatchError(f"val_errors gave shape {e.shape}; layout {lay.name} has "
                                          f"{lay.n_points} landmarks")
            errors[source.product] = e
        if row.weights not in weights:  # Eq. 5 for every landmark; Eq. 9 for every cluster
            e = errors[source.product]
            weights[row.weights] = loss_weights.eq5(e) if row.weights == "eq5" else loss_weights.eq9(e, lay, alpha)
        return weights[row.weights]

    for s in ALGORITHM1_STAGES:
        row = STAGES[s]
        if s == "equal_budget" and not equal_budget:
            continue
        u = weights_of(row)
        start = base if row.start is None else products[row.start]
        if row.init_build == "heads":
            # Steps 4..3+m: the feature extractor fixed (eval mode): its features are computed once per training
            # row, and the heads train jointly on the same batches, each on its own Eq. 9 loss (joint = separate:
            # no parameter is shared).
            heads = MultiCenterHeads(start.get_submodule(name), lay).to(device)
            feats = features_of(start, name, tr.images)
            losses = {c: LandmarkLoss(u[c]).to(device) for c in lay.cluster_names}

            def heads_loss(x, rows, heads=heads, losses=losses):
                out = heads(x)
                return sum(losses[c](out[c], tr.targets[rows], tr.d[rows]) for c in lay.cluster_names)

            stages[s] = _train(heads, heads_loss, tr, feats, st[s], schedule, order, s, log)
            product = heads
        else:
            product = start if row.start is None else copy.deepcopy(start)
            stages[s] = _train_model(product, tr, u, st[s], schedule, order, s, log, fixed if row.frozen else ())
            product.requires_grad_(True)
        product.eval()
        products[s] = product
    # Step 3+m+1: AM, the heads' start with its shape prediction layer replaced by the assembled one (Eq. 2-3).
    heads_row = STAGES["heads"]
    am = copy.deepcopy(products[heads_row.start])
    _replace(am, name, assemble_heads(products["heads"]))
    am.eval()
    by_product = {STAGES[s].product: m for s, m in products.items()}
    return Algorithm1Result(by_product["bm"], by_product["wm"], am, by_product["heads"],
                            by_product.get("equal_budget"), weights, errors, stages, name, fixed)
