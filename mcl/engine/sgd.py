"""Caffe's SGD solver (src/caffe/solvers/sgd_solver.cpp), as the torch engine runs it.

One iteration of Caffe, for every learnable blob in the net's parameter order:

    diff     = gradient                               (Net::ClearParamDiffs, Backward)
    diff    += local_decay * w                        Regularize, L2 (caffe_axpy)
    history  = local_rate * diff + momentum * history ComputeUpdateValue (caffe_cpu_axpby)
    w       -= history                                Net::Update
    iter    += 1

with local_rate = rate * lr_mult, local_decay = weight_decay * decay_mult, and the
"step" policy rate = base_lr * gamma ^ floor(iter / stepsize) taken at the iteration
before the increment. Every solver field is a float in caffe.proto, so the scalars
are rounded to float32 exactly where Caffe rounds them. PyTorch's own SGD differs:
it scales the history, not the gradient, by the learning rate, so a change of rate
acts at once in Caffe and with a lag in PyTorch.

A blob with lr_mult 0 never changes in Caffe (its history stays 0: 0 * diff + 0.9 * 0),
so it is left out of the update here and of the backward pass altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

POLICIES = ("fixed", "step")


class SolverError(ValueError):
    """A solver file asking for something the engine does not do the way Caffe does."""


@dataclass(frozen=True)
class Settings:
    """The fields of a SolverParameter the engine uses, as Caffe holds them (float32)."""
    train_net: str
    base_lr: np.float32
    lr_policy: str
    gamma: np.float32
    stepsize: int
    max_iter: int
    momentum: np.float32
    weight_decay: np.float32
    display: int
    snapshot: int
    snapshot_prefix: str
    random_seed: int

    @classmethod
    def from_proto(cls, sp, where: str = "solver") -> "Settings":
        solver_type = sp.type if sp.HasField("type") or not sp.HasField("solver_type") else "SGD"
        if sp.HasField("solver_type") and sp.solver_type != sp.SGD:
            solver_type = "non-SGD solver_type"
        problems = []
        if solver_type != "SGD":
            problems.append(f"type {solver_type!r} (only SGD)")
        if sp.lr_policy not in POLICIES:
            problems.append(f"lr_policy {sp.lr_policy!r} (only {', '.join(POLICIES)})")
        if sp.lr_policy == "step" and sp.stepsize <= 0:
            problems.append("lr_policy step needs stepsize > 0")
        if sp.iter_size != 1:
            problems.append(f"iter_size {sp.iter_size} (only 1)")
        if sp.clip_gradients >= 0:
            problems.append("clip_gradients")
        if sp.regularization_type != "L2":
            problems.append(f"regularization_type {sp.regularization_type!r} (only L2)")
        if not sp.train_net:
            problems.append("no train_net file")
        if problems:
            raise SolverError(f"{where}: the torch engine cannot run {'; '.join(problems)}")
        return cls(train_net=sp.train_net, base_lr=np.float32(sp.base_lr), lr_policy=sp.lr_policy,
                   gamma=np.float32(sp.gamma), stepsize=int(sp.stepsize), max_iter=int(sp.max_iter),
                   momentum=np.float32(sp.momentum), weight_decay=np.float32(sp.weight_decay),
                   display=int(sp.display), snapshot=int(sp.snapshot), snapshot_prefix=sp.snapshot_prefix,
                   random_seed=int(sp.random_seed))

    def current_step(self, it: int) -> int:
        return it // self.stepsize if self.lr_policy == "step" else 0

    def rate(self, it: int) -> np.float32:
        """SGDSolver::GetLearningRate at iteration `it`: pow() in double, stored as float."""
        if self.lr_policy == "fixed":
            return self.base_lr
        return np.float32(float(self.base_lr) * float(self.gamma) ** self.current_step(it))


@dataclass
class Blob:
    """One learnable blob as Caffe's solver sees it."""
    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: np.float32
    decay_mult: np.float32


class CaffeSGD:
    """The update of SGDSolver::ApplyUpdate over a net's learnable blobs, with its history."""

    def __init__(self, settings: Settings, blobs: list[Blob]):
        self.settings = settings
        self.blobs = blobs
        self.history = [torch.zeros_like(b.tensor) for b in blobs]
        self.trained = [i for i, b in enumerate(blobs) if b.lr_mult != 0]
        # Blobs sharing (lr_mult, decay_mult) are updated with one fused (foreach) call each.
        groups: dict[tuple, list[int]] = {}
        for i in self.trained:
            groups.setdefault((float(blobs[i].lr_mult), float(blobs[i].decay_mult)), []).append(i)
        self.groups = [(np.float32(lr), np.float32(decay), idx) for (lr, decay), idx in groups.items()]

    @torch.no_grad()
    def apply_update(self, it: int) -> np.float32:
        """Update every trained blob from its .grad for iteration `it`; returns the rate used."""
        s = self.settings
        rate = s.rate(it)
        for lr_mult, decay_mult, idx in self.groups:
            local_rate = np.float32(rate * lr_mult)
            local_decay = np.float32(s.weight_decay * decay_mult)
            params = [self.blobs[i].tensor for i in idx]
            diffs = []
            for i, p in zip(idx, params):
                if p.grad is None:  # no path from this blob to a loss: Caffe's diff stays 0
                    p.grad = torch.zeros_like(p)
                diffs.append(p.grad)
            hist = [self.history[i] for i in idx]
            if local_decay != 0:
                torch._foreach_add_(diffs, params, alpha=float(local_decay))
            torch._foreach_mul_(hist, float(s.momentum))
            torch._foreach_add_(hist, diffs, alpha=float(local_rate))
            torch._foreach_sub_(params, hist)
            for p in params:
                p.grad = None
        return rate
