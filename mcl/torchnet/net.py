"""A Caffe net for one phase as one torch.nn.Module: its layers (layers.py) in Caffe's order,
every top's shape inferred as Net::Init does, Caffe's blobs in and out by layer name.

One module serves the port (deploy nets -> PyTorch / ONNX) and training in
PyTorch (train nets, with Caffe's phase rules, loss weights, lr/decay
multipliers and BatchNorm's running statistics).

Data layers (Input, HDF5Data, Data, the V1 net-level `input`) become external
inputs fed by top name. Data's transform_param is not applied: feed tensors
already transformed ((p - mean) * scale), as the HDF5 files already are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mcl.torchnet.layers import LAYERS, BatchNorm, Layer
from mcl.torchnet.spec import INPUT_TYPES, LayerSpec, NetError, layer_specs, net_input_shapes


def _module_key(name: str) -> str:
    return name.replace(".", "_") or "_"


class CaffeNet(nn.Module):
    """A Caffe net for one phase; forward(dict of input tops) -> dict of every top."""

    def __init__(self, specs: list[LayerSpec], phase: str, input_shapes: dict[str, tuple[int, ...]],
                 seed: int = 0):
        super().__init__()
        self.phase = phase
        self.specs = specs
        self.layer_names = [s.name for s in specs]
        if len(set(self.layer_names)) != len(self.layer_names):
            dup = sorted({n for n in self.layer_names if self.layer_names.count(n) > 1})
            raise NetError(f"layer names repeat: {', '.join(dup)}")
        self.input_names = [t for s in specs if s.type in INPUT_TYPES for t in s.tops]
        self.input_layer_names = {s.name for s in specs if s.type in INPUT_TYPES}
        self.layers = nn.ModuleDict()
        self._keys = {}
        for s in specs:
            if s.type not in LAYERS:
                raise NetError(f"layer {s.name!r}: type {s.type!r} is not supported "
                               f"(supported: {', '.join(sorted(LAYERS))})")
            key = _module_key(s.name)
            while key in self.layers:
                key += "_"
            self._keys[s.name] = key
            self.layers[key] = LAYERS[s.type](s, phase)
        self.loss_weights = {}
        for s in specs:
            weights = list(s.loss_weights)
            if not weights and s.type.endswith("Loss"):
                weights = [1.0]
            for top, w in zip(s.tops, weights):
                self.loss_weights[top] = float(w)
        self.input_shapes = dict(input_shapes)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.is_setup = False
        self._seed = seed
        if all(n in self.input_shapes for n in self.input_names):
            self.setup(self.input_shapes)

    def layer(self, name: str) -> Layer:
        if name not in self._keys:
            raise NetError(f"no layer named {name!r}")
        return self.layers[self._keys[name]]

    def setup(self, input_shapes: dict[str, tuple[int, ...]]) -> None:
        """Create every blob with Caffe's fillers and infer every top's shape (Net::Init)."""
        missing = [n for n in self.input_names if n not in input_shapes]
        if missing:
            raise NetError(f"input shapes missing for {', '.join(missing)}")
        gen = torch.Generator().manual_seed(self._seed)
        shapes = {n: tuple(int(d) for d in input_shapes[n]) for n in self.input_names}
        for s in self.specs:
            if s.type in INPUT_TYPES:
                continue
            for b in s.bottoms:
                if b not in shapes:
                    raise NetError(f"layer {s.name!r} ({s.type}): unknown bottom blob {b!r}")
            mod = self.layer(s.name)
            tops = mod.setup([shapes[b] for b in s.bottoms], gen)
            if len(tops) != len(s.tops):
                raise NetError(f"layer {s.name!r} ({s.type}): makes {len(tops)} tops, the net names {len(s.tops)}")
            for t, shp in zip(s.tops, tops):
                shapes[t] = tuple(shp)
            for i, pname in enumerate(mod.blob_names if s.type != "BatchNorm" else ()):
                lr = s.lr_mults[i] if i < len(s.lr_mults) else 1.0
                # Caffe computes no gradient for a blob with lr_mult 0 (Net::AppendParam).
                getattr(mod, pname).requires_grad_(lr != 0)
        self.shapes = shapes
        self.input_shapes = {n: shapes[n] for n in self.input_names}
        self.is_setup = True

    def require_setup(self, what: str) -> None:
        """NetError unless the net knows its blob shapes (`what`: the caller, for the message)."""
        if not self.is_setup:
            raise NetError(f"{what}: the net's blob shapes are unknown until it knows its input shapes "
                           f"({', '.join(self.input_names)}): pass input_shapes or call setup()")

    def forward(self, inputs: dict[str, torch.Tensor], upto: str | None = None,
                record: list | None = None) -> dict[str, torch.Tensor]:
        """Every blob by top name (an in-place top: its last value), up to and including layer `upto`.

        `record`, if given, receives (layer, top, value) after every layer: the values of
        in-place tops as each layer leaves them, as Caffe's net.forward(end=layer) shows them.
        """
        if not self.is_setup:
            self.setup({n: tuple(inputs[n].shape) for n in self.input_names if n in inputs})
        if upto is not None and upto not in self._keys:
            raise NetError(f"no layer named {upto!r}")
        blobs = self.input_blobs(inputs)
        for s in self.specs:
            if s.type not in INPUT_TYPES:
                out = self.run_layer(s, blobs)
                if record is not None:
                    record.extend((s.name, t, v) for t, v in zip(s.tops, out))
            if s.name == upto:
                break
        return blobs

    def input_blobs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The net's input tops taken from `inputs` (a new dict); NetError names one not given."""
        blobs = {}
        for n in self.input_names:
            if n not in inputs:
                raise NetError(f"input {n!r} not given (inputs: {', '.join(self.input_names)})")
            blobs[n] = inputs[n]
        return blobs

    def run_layer(self, spec: LayerSpec, blobs: dict[str, torch.Tensor]) -> tuple:
        """Layer `spec` on its bottoms in `blobs`: its tops are written into `blobs` and returned."""
        out = self.layers[self._keys[spec.name]](*[blobs[b] for b in spec.bottoms])
        if isinstance(out, torch.Tensor):
            out = (out,)
        for t, v in zip(spec.tops, out):
            blobs[t] = v
        return out

    def freeze_batchnorm(self) -> CaffeNet:
        """Inference form: every BatchNorm with stored statistics keeps mean and var precomputed.

        Blobs loaded afterwards are not seen by the frozen layers: call it after loading.
        """
        for s in self.specs:
            mod = self.layer(s.name)
            if isinstance(mod, BatchNorm) and mod.use_global_stats:
                mod.freeze()
        return self

    # ---- Caffe blobs in and out ----------------------------------------------------

    def _blob_layers(self):
        for s in self.specs:
            mod = self.layer(s.name)
            if mod.blob_names:
                yield s, mod

    def load_caffe_blobs(self, blobs: dict[str, list[np.ndarray]], strict: bool = True) -> None:
        """Copy blobs by layer name, as Caffe's copy_from does.

        Caffe accepts a blob whose count matches when its shape differs only in
        the legacy 4-axis form (e.g. an InnerProduct weight stored (1, 1, N, K));
        any other mismatch is a NetError naming the layer. With `strict`, every
        layer with blobs must be given, and every given layer must exist.
        """
        self.require_setup("load_caffe_blobs")
        known = {s.name for s, _ in self._blob_layers()}
        if strict:
            missing = sorted(known - set(blobs))
            if missing:
                raise NetError(f"no blobs given for layer(s) {', '.join(missing)}")
            extra = sorted(n for n, b in blobs.items() if n not in known and len(b))
            if extra:
                raise NetError(f"blobs given for layer(s) not in the net (or without blobs): {', '.join(extra)}")
        with torch.no_grad():
            for s, mod in self._blob_layers():
                if s.name not in blobs:
                    continue
                given = blobs[s.name]
                want = [tuple(t.shape) for t in mod.blobs()]
                got = [tuple(np.shape(a)) for a in given]
                if len(got) != len(want) or any(not shape_fits(g, w) for g, w in zip(got, want)):
                    raise NetError(f"layer {s.name!r} ({s.type}): blobs of shapes {got} do not fit the net's {want}")
                for t, a in zip(mod.blobs(), given):
                    t.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(t.shape)))

    def caffe_blobs(self) -> dict[str, list[np.ndarray]]:
        self.require_setup("caffe_blobs")
        return {s.name: [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in mod.blobs()]
                for s, mod in self._blob_layers()}

    def blob_params(self) -> list[tuple[str, int, torch.Tensor, float, float]]:
        """(layer, blob index, tensor, lr_mult, decay_mult) of every learnable blob, in net.params order."""
        self.require_setup("blob_params")
        out = []
        for s, mod in self._blob_layers():
            if s.type == "BatchNorm":
                continue
            for i, t in enumerate(mod.blobs()):
                lr = s.lr_mults[i] if i < len(s.lr_mults) else 1.0
                decay = s.decay_mults[i] if i < len(s.decay_mults) else 1.0
                out.append((s.name, i, t, float(lr), float(decay)))
        return out


def shape_fits(got: tuple, want: tuple) -> bool:
    """Whether a stored blob of shape `got` fits a blob of shape `want`, as Caffe's copy_from sees it."""
    if got == want:
        return True
    # Blob::ShapeEquals: a legacy (num, channels, height, width) blob matches up to 4 axes padded with 1s.
    if len(got) == 4 and len(want) <= 4:
        return tuple([1] * (4 - len(want)) + list(want)) == got
    return False


def from_netparameter(net_param, phase: str = "TEST", input_shapes: dict | None = None,
                      seed: int = 0) -> CaffeNet:
    """Build the module for `phase` (Caffe's include/exclude rules applied).

    Input shapes come from Input layers and the net-level `input` fields;
    `input_shapes` gives or overrides them (HDF5Data and Data need it, or the
    first forward sets them). Blobs start from the layers' Caffe fillers drawn
    from torch's generator seeded with `seed`.
    """
    specs = layer_specs(net_param, phase)
    shapes = net_input_shapes(net_param, specs)
    shapes.update(input_shapes or {})
    return CaffeNet(specs, phase, shapes, seed)


def random_blobs(net: CaffeNet, seed: int, bn_factor: tuple[float, float] = (0.5, 3.0),
                 bn_mean_std: float = 0.2) -> dict[str, list[np.ndarray]]:
    """Non-trivial float32 blobs of the net's shapes, seeded, for comparing engines without training:
    BatchNorm factors s ~ U(bn_factor) (mean sums N(0, bn_mean_std) s, variance sums U(0.5, 2) s),
    scales U(0.5, 1.5), weights N(0, 2 / fan-in), biases N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, blobs in net.caffe_blobs().items():
        kind = net.layer(name).spec.type
        if kind == "BatchNorm":
            s = rng.uniform(*bn_factor)
            c = blobs[0].shape
            out[name] = [rng.normal(0, bn_mean_std, c) * s, rng.uniform(0.5, 2.0, c) * s, np.array([s])]
        elif kind == "Scale":
            out[name] = [rng.uniform(0.5, 1.5, blobs[0].shape)] + [rng.normal(0, 0.1, b.shape) for b in blobs[1:]]
        else:
            w = blobs[0]
            fan_in = int(np.prod(w.shape[1:])) if w.ndim > 1 else 1
            out[name] = [rng.normal(0, np.sqrt(2.0 / fan_in), w.shape)] + [rng.normal(0, 0.1, b.shape)
                                                                           for b in blobs[1:]]
    return {k: [np.asarray(a, np.float32) for a in v] for k, v in out.items()}
