"""Algorithm 1 of the paper as a table: the stages, what each trains, its solver.

METHOD §5. Every solver: SGD, batch 64, momentum 0.9, weight decay 0.0005,
lr_policy "step", gamma 0.3, stepsize 30000. A schedule scale multiplies
max_iter and stepsize and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcl.method import paper

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


# The shape prediction layer (InnerProduct D -> 2n) of every net that predicts a shape (METHOD §2.1); pre-BM
# (the conference version's net, METHOD §2.2) names it fc6.
SHAPE_LAYER = "shape_pred"
PRE_BM_SHAPE_LAYER = "fc6"
# How a stage's initial model is made from the product it starts from: "copy" takes its blobs by layer
# name; "heads" copies its shape layer to every head (METHOD §5.1: the heads start from WM's layer).
INIT_BUILDS = ("copy", "heads")


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
    init_build: str = "copy"  # how the start's product becomes this stage's initial model (INIT_BUILDS)
    output: str = SHAPE_LAYER  # the deploy net's output layer ("heads": one shape layer per cluster)

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
                   weights_from="stage3", deploy="heads_deploy", init_build="heads", output="heads"),
    # pre-BM (the ablation) is pre-trained like BM.
    "pre_bm": Stage("pre_bm", "1 (pre-BM)", 0.02, 180000, (), "uniform", product="pre_bm", deploy="pre_bm_deploy",
                    label="pre-BM", output=PRE_BM_SHAPE_LAYER),
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


def algorithm1_chain(first: str = "stage1") -> tuple[str, ...]:
    """The rows that train after step 1, in table order, each after the rows it starts from and takes its
    weights' errors from: stage1, stage2, stage3, heads and the control. Pre-BM and the warm-up are
    alternatives to step 1's start, not rows after it. mcl.method.pytorch.algorithm1 trains this chain."""
    chain: list[str] = [first]
    grown = True
    while grown:
        grown = False
        for row in STAGES.values():
            needs = {x for x in (row.start, row.weights_from) if x}
            if row.name not in chain and row.start in chain and needs <= set(chain):
                chain.append(row.name)
                grown = True
                break  # the next row again from the table's top: table order among the rows that can train
    return tuple(chain)


# Algorithm 1's last step (3+m+1) trains nothing: the heads are assembled into AM (Eq. 2-3).
ASSEMBLED_MODEL = "models/am.caffemodel"
ASSEMBLED_DEPLOY = "models/am_deploy.prototxt"
AUDIT_MODELS = "audit/models"  # RUN/audit/models/: the products of the ablations' training rows


@dataclass(frozen=True)
class Assembly:
    """Step 3+m+1 (Eq. 2-3): trained heads assembled into one shape layer."""
    name: str
    heads: str  # the heads' caffemodel, relative to the run
    model: str  # the assembled model
    deploy: str  # its deploy net (written beside it)
    label: str


ASSEMBLIES = {
    "am": Assembly("am", STAGES["heads"].model, ASSEMBLED_MODEL, ASSEMBLED_DEPLOY, "AM"),
    # Simplified AM (Section IV-C-4): heads trained from BM, the weighting fine-tuning skipped.
    "sam": Assembly("sam", f"{AUDIT_MODELS}/sam_heads.caffemodel", f"{AUDIT_MODELS}/sam.caffemodel",
                    f"{AUDIT_MODELS}/sam_deploy.prototxt", "Simplified AM"),
}

# The loss-weight files (RUN/loss_weights/<name>.json): Eq. 5 or Eq. 9 from one model's validation errors.
# Algorithm 1 computes bm_eq5 and wm_eq9; the audit's Simplified AM bm_eq9, its Weighting Simplified AM sam_eq5.
LOSS_WEIGHTS = {
    "bm_eq5": (STAGES["stage1"].model, 5),
    "wm_eq9": (STAGES["stage3"].model, 9),
    "bm_eq9": (STAGES["stage1"].model, 9),
    "sam_eq5": (ASSEMBLIES["sam"].model, 5),
}
# The weight-perturbation ablation (Section IV-C-2, METHOD §12.15): Eq. 5's weights moved by +-delta.
# Sec. IV-C-2: "When delta is 0.4, WM can still ..."; [interp] four equal steps up to it.
PERTURBATION_DELTAS = tuple(round(paper.value("perturbation.delta_max") * k / 4, 6) for k in range(1, 5))


@dataclass(frozen=True)
class Derived:
    """A training row of the audit: a stage of Algorithm 1 trained again on a named copy of its net and
    solver (`run_stage.py --stage <base> --name <name>`), from another start, with other loss weights."""
    name: str
    base: str  # the stage of STAGES it trains as (its net, solver, fixed layers, learning rate)
    start: str  # the model it starts from, relative to the run
    loss_weights: str  # the loss-weight file it trains with, relative to the run
    product: str  # its model, relative to the run
    label: str = ""


def _derived() -> dict[str, Derived]:
    rows = [Derived("sam_heads", "heads", STAGES["stage1"].model, f"{LOSS_WEIGHTS_DIR}/bm_eq9.json",
                    ASSEMBLIES["sam"].heads, "Simplified AM's heads"),
            Derived("wsam_stage2", "stage2", ASSEMBLIES["sam"].model, f"{LOSS_WEIGHTS_DIR}/sam_eq5.json",
                    f"{AUDIT_MODELS}/wsam_stage2.caffemodel"),
            Derived("wsam_stage3", "stage3", f"{AUDIT_MODELS}/wsam_stage2.caffemodel",
                    f"{LOSS_WEIGHTS_DIR}/sam_eq5.json", f"{AUDIT_MODELS}/wsam.caffemodel", "Weighting Simplified AM")]
    for d in PERTURBATION_DELTAS:
        weights = f"{LOSS_WEIGHTS_DIR}/pert_{d:g}_eq5.json"
        rows += [Derived(f"pert_{d:g}_stage2", "stage2", STAGES["stage1"].model, weights,
                         f"{AUDIT_MODELS}/pert_{d:g}_stage2.caffemodel"),
                 Derived(f"pert_{d:g}_stage3", "stage3", f"{AUDIT_MODELS}/pert_{d:g}_stage2.caffemodel", weights,
                         f"{AUDIT_MODELS}/pert_{d:g}_wm.caffemodel", f"delta {d:g}")]
    return {r.name: r for r in rows}


DERIVED = _derived()


@dataclass(frozen=True)
class Resolved:
    """What one training row starts from, trains with and makes, relative to the run folder."""
    stage: str  # the row of STAGES whose net, solver and fixed layers it trains
    name: str  # its net and solver (nets/<name>_train.prototxt): the stage, or a derived row's copy
    init: str | None  # None: Caffe's fillers (or the warm-up's solverstate, for step 1)
    init_build: str
    loss_weights: str | None  # None: u_j = 1
    out: str


def resolve(stage: str, name: str | None = None, separate: bool = False) -> Resolved:
    """The table's row for `--stage stage [--name name]`: a stage of Algorithm 1, or a derived row of the
    audit. A name that is not a derived row trains the stage's own start and weights on a copy of its net."""
    row = get_stage(stage)
    if name and name in DERIVED:
        d = DERIVED[name]
        if d.base != stage:
            raise ValueError(f"--name {name}: the table trains it as {d.base}, not {stage}")
        return Resolved(stage, name, d.start, row.init_build, d.loss_weights, d.product)
    out = row.model if not (separate and stage == "heads") else "models/heads_separate.json"
    return Resolved(stage, name or stage, STAGES[row.start].model if row.start else None, row.init_build,
                    row.loss_weights_file, out)


def deploy_output(deploy_stem: str) -> str:
    """The output layer of the deploy net nets/<deploy_stem>.prototxt, as its stage's row says (the
    shape layer where no row names that deploy net, or where it has one layer per head)."""
    outputs = {s.output for s in STAGES.values() if s.deploy == deploy_stem and s.output != "heads"}
    return outputs.pop() if len(outputs) == 1 else SHAPE_LAYER


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


def _start_text(start: str | None, init_build: str) -> str:
    if start is None:
        return "fillers"
    return f"{start} (heads)" if init_build == "heads" else start


def table() -> str:
    """Algorithm 1 as the stage table says it, with the audit's derived rows and the loss-weight files
    (`make help`, `python -m mcl.method.stages`). "(heads)": the start's shape layer copied to every head."""
    rows = [f"{'stage':<13} {'step':<12} {'starts from':<34} {'loss weights':<26} {'fixed layers':<16} "
            f"{'product':<32} output"]
    for s in STAGES.values():
        fixed = "none" if not s.frozen else f"{s.frozen[0]}..{s.frozen[-1]}"
        rows.append(f"{s.name:<13} {s.step:<12} {_start_text(STAGES[s.start].model if s.start else None, s.init_build):<34} "
                    f"{s.loss_weights_file or 'u_j = 1':<26} {fixed:<16} {s.model:<32} {s.output}")
    for a in ASSEMBLIES.values():
        rows.append(f"{'assemble':<13} {'3+m+1':<12} {a.heads:<34} {'-':<26} {'-':<16} {a.model:<32} {SHAPE_LAYER}")
    rows += ["", f"{'audit row':<18} {'trains as':<10} {'starts from':<42} {'loss weights':<32} product"]
    for d in DERIVED.values():
        rows.append(f"{d.name:<18} {d.base:<10} {_start_text(d.start, STAGES[d.base].init_build):<42} "
                    f"{d.loss_weights:<32} {d.product}")
    rows += ["", "loss weights: " + "; ".join(f"{LOSS_WEIGHTS_DIR}/{k}.json = Eq. {eq} of {m}"
                                             for k, (m, eq) in LOSS_WEIGHTS.items())]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
