"""Caffe's SGD solver as the torch engine runs it: a solver prototxt's fields read as Caffe reads them.

The update itself (SGDSolver::ApplyUpdate, its float32 roundings, the fused foreach calls), the "step"
learning-rate policy and the blobs with their lr_mult / decay_mult are mcl.method.sgd's, the one
implementation that the method on any PyTorch model (mcl.method.pytorch) runs too; they are re-exported
here (`from mcl.engine.sgd import Blob, CaffeSGD, Settings`). This module adds `Settings.from_proto`:
what a SolverParameter asks for, refused by name where the engine would not do it the way Caffe does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcl.method.sgd import POLICIES, Blob, CaffeSGD, SGDSettings

__all__ = ["POLICIES", "Blob", "CaffeSGD", "Settings", "SolverError"]


class SolverError(ValueError):
    """A solver file asking for something the engine does not do the way Caffe does."""


@dataclass(frozen=True)
class Settings(SGDSettings):
    """The fields of a SolverParameter the engine uses, as Caffe holds them (float32): the update's
    (base_lr, lr_policy, gamma, stepsize, momentum, weight_decay; `rate`, `current_step`) and the solver's."""
    train_net: str
    max_iter: int
    display: int
    snapshot: int
    snapshot_prefix: str
    random_seed: int

    @classmethod
    def from_proto(cls, sp, where: str = "solver") -> Settings:
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
