"""The paper's schedule projected from measured rates: the one projection of `make bench-engine` and
`make gpu-check` (benchmarks/bench_engine.py, benchmarks/gpu_check.py).

Every stage of Algorithm 1 (mcl.method.stages, at the paper's schedule) is counted at the rate
of the measured stage type that trains like it: stage 3 trains every layer, as stage 1 does.
Where the leading layers are fixed (stage 2, the heads) the torch engine computes them once per
training row (mcl/engine/fixed.py): that pass is counted for the size of 300-W's training split.
Imports neither torch nor mcl.data, so that the benchmark's parent (no torch) and the GPU check
(no OpenCV) share it.
"""

from __future__ import annotations

from mcl.method import paper
from mcl.method.stages import STAGES, stage_iterations

BENCHED = ("stage1", "stage2", "heads")
LABELS = {"stage1": "stage 1 (all layers)", "stage2": "stage 2 (6 convs fixed)", "heads": "heads (joint)"}
RATES = {"stage1": "stage 1's", "stage2": "stage 2's", "heads": "the joint heads'"}
# Algorithm 1's trained steps (pre_bm, warmup and equal_budget are the ablation, an option, a control),
# each counted at the rate of the measured stage that trains like it.
PAPER_STAGES = ("stage1", "stage2", "stage3", "heads")
RATE_OF = {"stage3": "stage1"}  # stage 3 trains every layer, as stage 1 does
# 300-W's training rows as `make data` writes them: the paper's training faces less mcl.data's
# validation share (PrepareSettings.val_fraction), times its augmented copies per face
# (AugmentSettings.copies); named here because mcl.data needs OpenCV, which the GPU check must not
# (tests/test_gpu_check.py holds the two to each other).
VAL_FRACTION, COPIES = 0.1, 10
TRAINING_ROWS_300W = round(paper.value("split.ibug.train") * (1 - VAL_FRACTION)) * COPIES


def paper_schedule() -> dict[str, dict[str, int]]:
    """Measured stage -> {stage of Algorithm 1: its iterations at the paper's schedule} counted at its rate."""
    out: dict[str, dict[str, int]] = {b: {} for b in BENCHED}
    for name in PAPER_STAGES:
        out[RATE_OF.get(name, name)][name] = stage_iterations(STAGES[name], 1.0)
    return out


def project(ms_per_iter: dict[str, float], fixed_ms_per_row: dict[str, float | None],
            rows: int = TRAINING_ROWS_300W) -> dict:
    """The paper's schedule at these rates: hours per checked stage (its fixed layers' pass over
    `rows` training rows counted), the total, and a line that says how it was counted."""
    schedule = paper_schedule()
    hours = {}
    for stage in BENCHED:
        ms = ms_per_iter[stage] * sum(schedule[stage].values()) + (fixed_ms_per_row.get(stage) or 0.0) * rows
        hours[stage] = ms / 3.6e6
    total = sum(hours.values())
    parts = ", ".join(f"{sum(n.values()) / 1000:g}k at {RATES[s]} rate"
                      + (f" ({' + '.join(f'{v / 1000:g}k {k}' for k, v in n.items())})" if len(n) > 1 else "")
                      for s, n in schedule.items())
    iterations = sum(sum(n.values()) for n in schedule.values())
    line = (f"projected paper schedule ({parts} = {iterations / 1000:g}k iterations, the fixed layers' pass over "
            f"{rows:,} training rows counted): {total:.2f} h ({total * 60:.0f} min)")
    return {"hours": hours, "total_hours": total, "iterations": iterations, "training_rows": rows, "line": line}
