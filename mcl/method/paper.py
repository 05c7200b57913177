"""The paper's own numbers and findings: the one table every report compares against.

Every figure carries the place in the paper it comes from (Shao et al., "Deep
Multi-Center Learning for Face Alignment", Neurocomputing; arXiv 1808.01558;
METHOD §10 restates them). Sections are the paper's: IV-A datasets and settings,
IV-B comparison with the state of the art, IV-C ablation study, IV-D partially
occluded faces, IV-E weighting fine-tuning for other frameworks. The figures of each benchmark
(MCL's mean error on it, its faces) are held with their dataset in mcl/method/datasets.py and
listed here among the rest.

The paper reports its ablations (pre-BM vs BM, BM/WM/AM, single heads,
Simplified AM, weighting perturbation) in tables and figures whose cells are
not in the text we hold (paper/mcl_paper.txt lost them in extraction). For
those experiments this module records the paper's stated *findings* (which model
is better than which, in the paper's own sentences) rather than numbers, and
`TABLE_CELLS_NOT_IN_TEXT` lists what is missing, so a report can say so instead
of inventing a number.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcl.method.datasets import BENCHMARKS, FACES_WHERE, MEAN_ERROR_WHERE, get_dataset


@dataclass(frozen=True)
class PaperFigure:
    key: str
    value: float
    unit: str  # "%" (mean error, % of inter-ocular distance), "ms", "FPS", "faces", "", ...
    what: str
    where: str  # section / table of the paper


@dataclass(frozen=True)
class PaperFinding:
    """A comparison the paper states in words. `lower` is expected to have a lower
    `metric` than `higher` on `dataset` ("any" where the paper says it in general)."""

    key: str
    experiment: str
    claim: str
    where: str
    metric: str | None = None
    lower: str | None = None
    higher: str | None = None
    dataset: str = "any"


_IMPL = "Sec. IV-A-2 (Implementation details)"

FIGURES: tuple[PaperFigure, ...] = (
    # Headline accuracy (METHOD §10): MCL's mean error, inter-ocular normalisation, per benchmark
    # (mcl/method/datasets.py holds them with their datasets).
    *(PaperFigure(f"mean_error.{b.name}", b.mean_error, "%", f"MCL mean error, {b.test_set}", MEAN_ERROR_WHERE)
      for b in BENCHMARKS),
    PaperFigure("relative_reduction.aflw_vs_recnet", 3.93, "%",
                "relative error reduction of MCL against RecNet on AFLW", "Sec. IV-B, text"),
    # Not printed in the text we hold: implied by the two figures above, 5.38 / (1 - 0.0393) = 5.600.
    PaperFigure("mean_error.aflw.recnet", 5.60, "%", "RecNet's mean error on AFLW, implied by MCL's 5.38 and the "
                "stated relative reduction of 3.93% (5.38 / (1 - 0.0393))", "Sec. IV-B, text (implied)"),
    # Speed (METHOD §7.2, §10).
    PaperFigure("speed.ms_per_face", 17.5, "ms", "forward time per face, 68 points, batch 1, one core of an "
                "i5-6200U 2.3 GHz", "Sec. IV-B, text and speed table; metric in Sec. IV-A-3"),
    PaperFigure("speed.fps", 57, "FPS", "frames per second, same setting (1000 / 17.5)",
                "Sec. IV-B, speed table"),
    # Splits (METHOD §10), per benchmark (mcl/method/datasets.py).
    *(PaperFigure(f"split.{b.name}.{split}", faces, "faces", what, FACES_WHERE)
      for b in BENCHMARKS for split, faces, what in b.faces),
    # Solver and method constants (METHOD §4, §5).
    PaperFigure("solver.batch", 64, "", "mini-batch size", _IMPL),
    PaperFigure("solver.momentum", 0.9, "", "momentum", _IMPL),
    PaperFigure("solver.weight_decay", 0.0005, "", "weight decay", _IMPL),
    PaperFigure("solver.pretrain_iters", 180000, "iterations", "pre-training (step 1) iterations", _IMPL),
    PaperFigure("solver.finetune_iters", 60000, "iterations", "iterations of each fine-tuning step", _IMPL),
    PaperFigure("solver.pretrain_lr", 0.02, "", "initial learning rate of pre-training", _IMPL),
    PaperFigure("solver.finetune_lr", 0.001, "", "initial learning rate of each fine-tuning step", _IMPL),
    PaperFigure("solver.gamma", 0.3, "", "learning-rate factor", _IMPL),
    PaperFigure("solver.stepsize", 30000, "iterations", "iterations between learning-rate steps", _IMPL),
    PaperFigure("alpha", 125, "", "alpha of Eq. 6 (emphasis of a head's own cluster)", _IMPL),
    PaperFigure("feature_dim.5", 512, "", "D for 5 points", _IMPL),
    PaperFigure("feature_dim.29", 512, "", "D for 29 points", _IMPL),
    PaperFigure("feature_dim.68", 1024, "", "D for 68 points", _IMPL),
    # Ablations (METHOD §10).
    PaperFigure("pre_bm.feature_params_per_d", 2049, "x D", "parameters of pre-BM's feature part, (4*4*128+1) D",
                "Sec. IV-C-1"),
    PaperFigure("bm.feature_params_per_d", 1157, "x D", "parameters of BM's feature part, (3*3*128+1) D + 2D + 2D",
                "Sec. IV-C-1"),
    PaperFigure("perturbation.delta_max", 0.4, "", "largest weight perturbation delta (+delta on floor(n/2) random "
                "landmarks, -delta on the rest) at which WM still performs well", "Sec. IV-C-2"),
    PaperFigure("occlusion.share", 0.30, "", "share of COFW test faces whose left eye is occluded (tight box of the "
                "left-eye landmarks filled gray)", "Sec. IV-D"),
    PaperFigure("occlusion.wm_left_eye", 6.60, "%", "WM mean error on the occluded left-eye cluster, COFW",
                "Sec. IV-D, text and occlusion table"),
    PaperFigure("occlusion.am_left_eye", 6.50, "%", "AM mean error on the occluded left-eye cluster, COFW",
                "Sec. IV-D, text and occlusion table"),
    PaperFigure("dan.reported", 7.57, "%", "DAN mean error on IBUG as DAN's paper reports it",
                "Sec. IV-E, DAN table"),
    PaperFigure("dan.retrained", 7.97, "%", "DAN re-trained with the published code (re-DAN), IBUG",
                "Sec. IV-E, text and DAN table"),
    PaperFigure("dan.weighting", 7.81, "%", "re-DAN with weighting fine-tuning (DAN-WM), IBUG",
                "Sec. IV-E, text and DAN table"),
)

FINDINGS: tuple[PaperFinding, ...] = (
    PaperFinding("bm_wm_am.am_vs_wm", "bm_wm_am", "AM has higher accuracy and stronger robustness than BM and WM",
                 "Sec. IV-C-4, BM/WM/AM table", "mean_error", "AM", "WM"),
    PaperFinding("bm_wm_am.wm_vs_bm", "bm_wm_am", "WM improves on BM (weighting fine-tuning)",
                 "Sec. IV-C-4, BM/WM/AM table", "mean_error", "WM", "BM"),
    PaperFinding("bm_wm_am.am_failure", "bm_wm_am", "AM has a lower failure rate than BM and WM",
                 "Sec. IV-C-4, BM/WM/AM table", "failure_rate", "AM", "BM"),
    PaperFinding("pre_bm.ibug", "pre_bm", "BM performs better than pre-BM on IBUG", "Sec. IV-C-1, pre-BM table",
                 "mean_error", "BM", "pre-BM", "ibug"),
    PaperFinding("pre_bm.cofw", "pre_bm", "BM performs better than pre-BM on COFW", "Sec. IV-C-1, pre-BM table",
                 "mean_error", "BM", "pre-BM", "cofw"),
    PaperFinding("pre_bm.aflw", "pre_bm", "BM performs worse than pre-BM on AFLW (5 points)",
                 "Sec. IV-C-1, pre-BM table", "mean_error", "pre-BM", "BM", "aflw"),
    PaperFinding("perturbation.robust", "perturbation", "WM still performs well when delta is 0.4: weighting is robust "
                 "to random perturbations of the weights", "Sec. IV-C-2, perturbation figure"),
    PaperFinding("single_head.left_eye", "single_head", "the left-eye head reduces the error of the left-eye cluster "
                 "against WM", "Sec. IV-C-3, single-head table (IBUG)", "left_eye", "left_eye head", "WM", "ibug"),
    PaperFinding("single_head.right_eye", "single_head", "the right-eye head reduces the error of the right-eye "
                 "cluster against WM", "Sec. IV-C-3, single-head table (IBUG)", "right_eye", "right_eye head", "WM",
                 "ibug"),
    PaperFinding("single_head.right_eye_vs_left_head", "single_head", "on the right-eye cluster the right-eye head "
                 "improves more than the left-eye head", "Sec. IV-C-3, single-head table (IBUG)", "right_eye",
                 "right_eye head", "left_eye head", "ibug"),
    PaperFinding("simplified_am.am_better", "simplified_am", "AM is more accurate than Simplified AM (heads fine-tuned "
                 "from BM, weighting fine-tuning skipped), especially on IBUG", "Sec. IV-C-4, Simplified AM table",
                 "mean_error", "AM", "Simplified AM"),
    PaperFinding("weighting_simplified_am.cofw", "weighting_simplified_am", "Weighting Simplified AM improves slightly "
                 "on Simplified AM on COFW", "Sec. IV-C-4, Simplified AM table", "mean_error", "Weighting Simplified AM",
                 "Simplified AM", "cofw"),
    PaperFinding("weighting_simplified_am.ibug", "weighting_simplified_am", "Weighting Simplified AM fails to improve "
                 "on Simplified AM on IBUG", "Sec. IV-C-4, Simplified AM table", "mean_error", "Simplified AM",
                 "Weighting Simplified AM", "ibug"),
    PaperFinding("occlusion.worse", "occlusion", "with the left eye occluded the errors of WM and AM increase, on the "
                 "left-eye cluster and slightly on the other clusters", "Sec. IV-D, occlusion table", "mean_error",
                 "without occlusion", "with occlusion", "cofw"),
    PaperFinding("occlusion.am_vs_wm", "occlusion", "AM is better than WM on the occluded left eye (6.50 vs 6.60)",
                 "Sec. IV-D, text", "left_eye", "AM", "WM", "cofw"),
    PaperFinding("dan.weighting", "dan", "weighting fine-tuning reduces re-DAN's error from 7.97 to 7.81",
                 "Sec. IV-E", "mean_error", "DAN-WM", "re-DAN", "ibug"),
)

# What the paper gives only in tables/figures whose cells are not in the text we hold.
TABLE_CELLS_NOT_IN_TEXT = (
    "pre-BM vs BM mean errors per dataset (Sec. IV-C-1)",
    "mean error of WM per perturbation delta (Sec. IV-C-2, figure)",
    "per-cluster errors of WM and of the left-eye and right-eye heads on IBUG (Sec. IV-C-3)",
    "Simplified AM, Weighting Simplified AM and AM mean errors on COFW and IBUG (Sec. IV-C-4)",
    "mean error and failure rate of BM, WM and AM per dataset (Sec. IV-C-4)",
    "per-cluster errors with and without occlusion beyond the left eye (Sec. IV-D)",
    "the other methods' mean errors on AFLW, COFW and IBUG (Sec. IV-B, state-of-the-art table), but for RecNet's "
    "on AFLW, which the text implies",
)

_BY_KEY = {f.key: f for f in FIGURES}


def figure(key: str) -> PaperFigure:
    if key not in _BY_KEY:
        raise KeyError(f"the paper table has no figure {key!r}")
    return _BY_KEY[key]


def value(key: str) -> float:
    return figure(key).value


def findings(experiment: str | None = None) -> list[PaperFinding]:
    return [f for f in FINDINGS if experiment is None or f.experiment == experiment]


def benchmark(dataset: str, layout: str, test_split: str | None = None) -> str | None:
    """The paper's benchmark a run's test split corresponds to ("aflw", "cofw", "ibug"), or None
    (the synthetic set, another layout than the dataset's own, or 300-W's common/full test sets)."""
    try:
        data = get_dataset(dataset)
    except ValueError:
        return None
    bench = data.benchmark
    if bench is None or data.layout != str(layout):
        return None
    if bench.test_split is not None and test_split not in (None, bench.test_split):
        return None
    return bench.name


def mean_error(dataset: str, layout: str, test_split: str | None = None) -> PaperFigure | None:
    """The paper's MCL mean error for the benchmark of this run, or None where it reports none."""
    bench = benchmark(dataset, layout, test_split)
    return figure(f"mean_error.{bench}") if bench else None


def speed_reference() -> dict:
    """The paper's speed row (68 points, batch 1, one core of an i5-6200U 2.3 GHz)."""
    ms, fps = figure("speed.ms_per_face"), figure("speed.fps")
    return {"name": "paper (i5-6200U 2.3 GHz, one core)", "layout": "68", "median_ms": ms.value, "fps": fps.value,
            "where": ms.where}


def markdown() -> str:
    """The whole table, for a report's appendix."""
    lines = ["| key | value | what | where |", "|---|---|---|---|"]
    lines += [f"| `{f.key}` | {f.value:g} {f.unit} | {f.what} | {f.where} |" for f in FIGURES]
    lines += ["", "| finding | paper's claim | where |", "|---|---|---|"]
    lines += [f"| `{f.key}` | {f.claim} | {f.where} |" for f in FINDINGS]
    return "\n".join(lines) + "\n"
