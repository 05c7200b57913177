"""Algorithm 1 of the paper as a table: the stages, what each trains, its solver.

METHOD §5. Every solver: SGD, batch 64, momentum 0.9, weight decay 0.0005,
lr_policy "step", gamma 0.3, stepsize 30000. A schedule scale multiplies
max_iter and stepsize and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH_SIZE = 64
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005
GAMMA = 0.3
STEPSIZE = 30000
ALPHA = 125.0  # Eq. 6: u_P = alpha * u_Q

# The trunk's convolutions in order, with their widths; "D" is the layout's feature_dim.
CONVS = (("conv11", 32), ("conv12", 32), ("conv21", 64), ("conv22", 64),
         ("conv31", 96), ("conv32", 96), ("conv41", 128), ("conv42", 128), ("conv43", "D"))
POOL_AFTER = {"conv12": "pool1", "conv22": "pool2", "conv32": "pool3"}
# Step 2 fixes "the first six convolutional layers" (conv11..conv32).
FIRST_SIX = tuple(name for name, _ in CONVS[:6])
ALL_CONVS = tuple(name for name, _ in CONVS)


@dataclass(frozen=True)
class Stage:
    """One row of Algorithm 1: what a stage trains, from what, with which loss weights, into which product."""

    name: str
    step: str  # the paper's step number(s) in Algorithm 1
    base_lr: float
    max_iter: int
    frozen: tuple[str, ...]  # conv layers whose conv, BatchNorm and Scale are fixed
    weights: str  # which loss weights the stage trains with: uniform, eq5 or eq9
    budget_of: tuple[str, ...] = ()  # if set, max_iter is the sum of these stages' (scaled) max_iter
    fixed_lr: bool = False  # lr_policy "fixed" instead of "step"
    product: str = ""  # models/<product>.caffemodel
    start: str | None = None  # the stage whose product this one starts from (None: Caffe's fillers)
    weights_from: str | None = None  # the stage whose product's validation errors give Eq. 5 / Eq. 9
    deploy: str = "deploy"  # nets/<deploy>.prototxt evaluates the product
    label: str = ""  # the paper's name of the product, for reports

    @property
    def model(self) -> str:
        """The product's path in a run folder."""
        return f"models/{self.product}.caffemodel"

    @property
    def loss_weights_file(self) -> str | None:
        """The Eq. 5 / Eq. 9 file the stage trains with, in a run folder (None: u_j = 1)."""
        if self.weights_from is None:
            return None
        return f"{LOSS_WEIGHTS_DIR}/{STAGES[self.weights_from].product}_{self.weights}.json"


LOSS_WEIGHTS_DIR = "loss_weights"  # RUN/loss_weights/: the u_j of Eq. 5 and Eq. 9 (loss weights, not model weights)

STAGES = {
    "stage1": Stage("stage1", "1", 0.02, 180000, (), "uniform", product="bm", label="BM"),
    "stage2": Stage("stage2", "2", 0.001, 60000, FIRST_SIX, "eq5", product="stage2", start="stage1",
                    weights_from="stage1"),
    "stage3": Stage("stage3", "3", 0.001, 60000, (), "eq5", product="wm", start="stage2", weights_from="stage1",
                    label="WM"),
    "heads": Stage("heads", "4..3+m", 0.001, 60000, ALL_CONVS, "eq9", product="heads", start="stage3",
                   weights_from="stage3", deploy="heads_deploy"),
    # pre-BM (the ablation) is pre-trained like BM.
    "pre_bm": Stage("pre_bm", "1 (pre-BM)", 0.02, 180000, (), "uniform", product="pre_bm", deploy="pre_bm_deploy",
                    label="pre-BM"),
    # [interp] METHOD §5.5's optional warm-up (WARMUP=on; default off): "a low initial learning rate
    # ... increase the learning rate when the loss is reduced significantly". Start lr 0.002 (a
    # tenth of step 1's), fixed; switch rule: after 5% of step 1's iterations, where step 1
    # resumes from the warm-up's solverstate (its iterations count towards step 1's).
    "warmup": Stage("warmup", "1 (warm-up)", 0.002, 9000, (), "uniform", fixed_lr=True, product="warmup"),
    # The audit's control (beyond the paper): BM continued with uniform weights, all layers
    # trainable, at the fine-tuning learning rate, for exactly the iterations stages 2, 3
    # and the heads had, so more training can be told from weighting and multi-center learning.
    "equal_budget": Stage("equal_budget", "control", 0.001, 180000, (), "uniform",
                          budget_of=("stage2", "stage3", "heads"), product="equal_budget", start="stage1",
                          label="BM + equal budget"),
}
# Algorithm 1's last step (3+m+1) trains nothing: the heads are assembled into AM (Eq. 2-3).
ASSEMBLED_MODEL = "models/am.caffemodel"
ASSEMBLED_DEPLOY = "models/am_deploy.prototxt"


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}: choose one of {', '.join(STAGES)}")
    return STAGES[name]


# Named schedules beside the paper's (scaled uniformly): (max_iter, stepsize) of each stage,
# every other solver setting the paper's. `demo`: the built-in faces in minutes on two cores,
# chosen from measured training curves (docs/DEMO.md): stage 1 gets most of the budget,
# because BM's accuracy bounds everything after it, and most of that at lr 0.02 and 0.006,
# where its loss still falls (at 0.0018 it had levelled off by iteration 840 of a 1,200 run).
SCHEDULES = {
    "demo": {"stage1": (1500, 600), "stage2": (60, 30), "stage3": (150, 75), "heads": (150, 75),
             "pre_bm": (1500, 600), "warmup": (75, 75)},
    # Real data on two CPU cores (docs/REAL_DATA.md, "Choosing the schedule"): the 5-point chain on
    # MTFL, BM -> Eq. 5 -> WM -> Eq. 9 -> heads -> AM plus the equal-budget control, within 75 minutes
    # in the torch engine. Stage 1 gets most of the time, at lr 0.02 and 0.006 for 40% of it each: the
    # scaled paper schedule (SCALE=0.02) decays the rate every 600 iterations, and its loss stopped
    # falling once the rate reached 0.0018 at iteration 1,200.
    "real": {"stage1": (3000, 1200), "stage2": (150, 75), "stage3": (300, 150), "heads": (300, 150),
             "pre_bm": (3000, 1200), "warmup": (150, 150)},
    # The audit across seeds (make sweep) on real data: the same shape at a fifth of stage 1.
    "real-short": {"stage1": (600, 240), "stage2": (40, 20), "stage3": (80, 40), "heads": (80, 40),
                   "pre_bm": (600, 240), "warmup": (30, 30)},
}


def check_schedule(schedule: str | None) -> str | None:
    if schedule not in (None, "", "paper") and schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: paper (scaled by the schedule scale) or "
                         f"{', '.join(SCHEDULES)}")
    return schedule if schedule in SCHEDULES else None


def stage_iterations(stage: Stage, scale: float, schedule: str | None = None) -> int:
    """max_iter of `stage` under the schedule scale, or under a named schedule."""
    if stage.budget_of:
        return sum(stage_iterations(STAGES[name], scale, schedule) for name in stage.budget_of)
    if check_schedule(schedule):
        return SCHEDULES[schedule][stage.name][0]
    return scaled(stage.max_iter, scale)


def stage_stepsize(stage: Stage, scale: float, schedule: str | None = None) -> int:
    """The step policy's stepsize of `stage`. A control stage (budget_of) steps like the last stage of
    its budget that trains every layer, as the control does (stage 3 for the equal-budget control)."""
    if check_schedule(schedule):
        like = stage.name
        if stage.budget_of:
            like = next(name for name in reversed(stage.budget_of) if not STAGES[name].frozen)
        return SCHEDULES[schedule][like][1]
    return scaled(STEPSIZE, scale)


def learning_rate(it: int, base_lr: float, stepsize: int, gamma: float = GAMMA, policy: str = "step") -> float:
    """The learning rate of iteration `it` (METHOD §5.2), Caffe's SGDSolver::GetLearningRate in double:
    "step": base_lr * gamma ^ floor(it / stepsize); "fixed": base_lr."""
    if policy == "fixed":
        return float(base_lr)
    if policy != "step":
        raise ValueError(f"learning-rate policy {policy!r}: step or fixed")
    return float(base_lr) * float(gamma) ** (it // stepsize)


def scaled(iterations: int, scale: float) -> int:
    """A schedule length under the schedule scale (at least one iteration)."""
    if scale <= 0:
        raise ValueError(f"schedule scale must be positive, got {scale}")
    return max(1, int(round(iterations * scale)))


def stage_of_product(product: str) -> Stage:
    """The stage whose product is models/<product>.caffemodel."""
    for stage in STAGES.values():
        if stage.product == product:
            return stage
    raise ValueError(f"no stage makes models/{product}.caffemodel")


def table() -> str:
    """Algorithm 1 as the stage table says it (`make help`, `python -m mcl.method.stages`)."""
    rows = [f"{'stage':<13} {'step':<12} {'starts from':<24} {'loss weights':<26} {'fixed layers':<16} product"]
    for s in STAGES.values():
        start = STAGES[s.start].model if s.start else "fillers"
        fixed = "none" if not s.frozen else f"{s.frozen[0]}..{s.frozen[-1]}"
        rows.append(f"{s.name:<13} {s.step:<12} {start:<24} {s.loss_weights_file or 'u_j = 1':<26} {fixed:<16} "
                    f"{s.model}")
    rows.append(f"{'assemble':<13} {'3+m+1':<12} {STAGES['heads'].model:<24} {'-':<26} {'-':<16} {ASSEMBLED_MODEL}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
