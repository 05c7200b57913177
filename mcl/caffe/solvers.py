"""SGD solvers of each stage with the paper's hyperparameters (METHOD §5.2).

A schedule scale multiplies max_iter and stepsize (and the snapshot/display
intervals that follow from them); every other setting is the paper's.
"""

from __future__ import annotations

from mcl.caffe.proto import caffe_pb2
from mcl.method.stages import GAMMA, MOMENTUM, WEIGHT_DECAY, Stage, stage_iterations, stage_stepsize

SNAPSHOTS_PER_STAGE = 10  # a resumable point every tenth of a stage
DISPLAYS_PER_STAGE = 100


def solver(stage: Stage, train_net: str, snapshot_prefix: str, scale: float = 1.0, seed: int = 0,
           gpu: bool = False, snapshot: int | None = None, schedule: str | None = None):
    """The SolverParameter of `stage` reading `train_net` (paths relative to the run folder)."""
    max_iter = stage_iterations(stage, scale, schedule)
    s = caffe_pb2.SolverParameter()
    s.train_net = train_net
    s.type = "SGD"
    s.base_lr = stage.base_lr
    if stage.fixed_lr:
        s.lr_policy = "fixed"
    else:
        s.lr_policy = "step"
        s.gamma = GAMMA
        s.stepsize = stage_stepsize(stage, scale, schedule)
    s.max_iter = max_iter
    s.momentum = MOMENTUM
    s.weight_decay = WEIGHT_DECAY
    s.display = max(1, max_iter // DISPLAYS_PER_STAGE)
    # A warm-up always snapshots its last iteration: step 1 resumes from that solverstate.
    s.snapshot = snapshot if snapshot is not None else max_iter if stage.fixed_lr else \
        max(1, max_iter // SNAPSHOTS_PER_STAGE)
    s.snapshot_prefix = snapshot_prefix
    s.solver_mode = caffe_pb2.SolverParameter.GPU if gpu else caffe_pb2.SolverParameter.CPU
    s.random_seed = seed
    return s
