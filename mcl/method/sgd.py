"""Caffe's SGD solver (src/caffe/solvers/sgd_solver.cpp) on torch tensors, METHOD §5.2: the one update both
PyTorch trainers run, the torch engine (mcl.engine.solver, a run's Caffe nets) and the method on any PyTorch
model (mcl.method.pytorch), with the learning-rate policy and the order of the batches.

One iteration of Caffe, for every learnable blob in the net's parameter order:

    diff     = gradient                               (Net::ClearParamDiffs, Backward)
    diff    += local_decay * w                        Regularize, L2 (caffe_axpy)
    history  = local_rate * diff + momentum * history ComputeUpdateValue (caffe_cpu_axpby)
    w       -= history                                Net::Update
    iter    += 1

with local_rate = rate * lr_mult, local_decay = weight_decay * decay_mult, and the
"step" policy rate = base_lr * gamma ^ floor(iter / stepsize) (mcl.method.stages.learning_rate)
taken at the iteration before the increment. Every solver field is a float in caffe.proto, so the
scalars are rounded to float32 exactly where Caffe rounds them. PyTorch's own SGD differs:
it scales the history, not the gradient, by the learning rate, so a change of rate
acts at once in Caffe and with a lag in PyTorch.

A blob with lr_mult 0 never changes in Caffe (its history stays 0: 0 * diff + 0.9 * 0),
so it is left out of the update here and of the backward pass altogether.

The batches are Caffe's data layers' (hdf5_data_layer.cpp, data_layer.cpp, with shuffling off as in our
nets): batch k is rows k*B .. k*B+B-1 of the rows' fixed order, modulo their number, a pure function of
the iteration (`batch_start`, `batch_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcl.method.stages import learning_rate

__all__ = ["POLICIES", "Blob", "CaffeSGD", "SGDSettings", "batch_rows", "batch_start"]

POLICIES = ("fixed", "step")


@dataclass(frozen=True)
class SGDSettings:
    """The fields of a SolverParameter the update uses, as Caffe holds them (float32)."""
    base_lr: np.float32
    lr_policy: str
    gamma: np.float32
    stepsize: int
    momentum: np.float32
    weight_decay: np.float32

    def current_step(self, it: int) -> int:
        return it // self.stepsize if self.lr_policy == "step" else 0

    def rate(self, it: int) -> np.float32:
        """SGDSolver::GetLearningRate at iteration `it`: pow() in double, stored as float."""
        if self.lr_policy == "fixed":
            return self.base_lr
        return np.float32(learning_rate(it, self.base_lr, self.stepsize, self.gamma, self.lr_policy))


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

    def __init__(self, settings: SGDSettings, blobs: list[Blob]):
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


def batch_start(index: int, batch_size: int, rows: int) -> int:
    """The first row of batch `index` (0-based) of a data layer over `rows` rows: (index * B) mod rows."""
    return (index * batch_size) % rows


def batch_rows(index: int, batch_size: int, rows: int, device=None) -> torch.Tensor:
    """The rows of batch `index`: batch_start .. batch_start + B - 1, wrapping around to row 0."""
    return (batch_start(index, batch_size, rows) + torch.arange(batch_size, device=device)) % rows
