"""The reproducibility audit: every ablation of the paper (METHOD §10) scored on a run, beside the paper.

Each ablation is its own Make target writing `<run>/audit/<ablation>.json`
(its models are trained by tools/run_stage.py like any stage); `report` gathers
them into `audit.json` and `audit.md`. The paper's numbers come from
mcl/method/paper.py alone. On data that is not the paper's benchmark (the built-in
synthetic faces, or a different schedule) the paper's numbers are not expected:
the report then compares the *direction* of each effect and says whether it held.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mcl.caffe import bnstats, netgen
from mcl.caffe.forward import load_net
from mcl.caffe.runfiles import run_layout, stage_file_paths
from mcl.data.splits import load_split, split_files
from mcl.data.writers import network_input
from mcl.evaluation.evaluate import EvalError, evaluate_model
from mcl.fileio import atomic_write
from mcl.method import loss_weights, paper
from mcl.method.layouts import Layout
from mcl.method.stages import ASSEMBLIES, DERIVED, PERTURBATION_DELTAS, STAGES, Assembly, Stage
from mcl.records import manifest, provenance

ABLATIONS = ("pre_bm", "perturbation", "single_head", "simplified_am", "weighting_simplified_am", "occlusion",
             "equal_budget")
DELTAS = PERTURBATION_DELTAS  # the table's (mcl/method/stages.py), as its audit rows train them
OCCLUDED_FRACTION = paper.value("occlusion.share")  # Sec. IV-D: "Randomly 30% testing faces ... left eyes"
OCCLUSION_CLUSTER = "left_eye"
OCCLUSION_FILL = 128  # gray, in pixel values; in the net's input units network_input(128) = 0
# [interp] "held" for the weighting's robustness: the mean error of every perturbed WM within
# this relative distance of WM's.
PERTURBATION_TOLERANCE = 0.10
# [interp] perturbed weights are clipped at this floor (a loss weight must stay positive) and
# rescaled to the Eq. 5 mean of 1, which for odd n the +-delta split alone does not keep.
PERTURBATION_FLOOR = 0.01


class AuditError(ValueError):
    """An ablation whose inputs are missing or do not fit the run."""


@dataclass(frozen=True)
class ModelSpec:
    """A model of the run as the audit evaluates it."""
    name: str
    model: str  # relative to the run
    deploy: str = "nets/deploy.prototxt"
    output: str = netgen.SHAPE_LAYER


def of_stage(stage: Stage, label: str | None = None, model: str | None = None) -> ModelSpec:
    """A stage's product as the table describes it: its model, deploy net and output layer."""
    return ModelSpec(label or stage.label, model or stage.model, f"nets/{stage.deploy}.prototxt", stage.output)


def of_assembly(a: Assembly, label: str | None = None, model: str | None = None) -> ModelSpec:
    return ModelSpec(label or a.label, model or a.model, a.deploy)


def of_derived(name: str, label: str | None = None) -> ModelSpec:
    """The product of an audit row of the table (it evaluates like the stage it trains as)."""
    d = DERIVED[name]
    return of_stage(STAGES[d.base], label or d.label, d.product)


BM, WM, AM = of_stage(STAGES["stage1"]), of_stage(STAGES["stage3"]), of_assembly(ASSEMBLIES["am"])
AM_RUNNING = "audit/models/am_running.caffemodel"  # AM assembled from the heads as Caffe left them


def main_models(run: Path) -> list[ModelSpec]:
    """BM, WM and AM under the run's statistics setting and as Caffe left them (running)."""
    run = Path(run)
    raw = [of_stage(STAGES["stage1"], "BM (running)", bnstats.raw_path(Path(BM.model)).as_posix()),
           of_stage(STAGES["stage3"], "WM (running)", bnstats.raw_path(Path(WM.model)).as_posix()),
           of_assembly(ASSEMBLIES["am"], "AM (running)", AM_RUNNING)]
    return [BM, WM, AM] + [s for s in raw if (run / s.model).exists()]


def _require(run: Path, *paths: str) -> None:
    for p in paths:
        if not (Path(run) / p).exists():
            raise AuditError(f"{Path(run) / p}: missing (its Make target has not run)")


def score(run: Path, spec: ModelSpec, data: dict, layout: Layout) -> dict:
    """Metrics of one model on `data` (a loaded split), with what made the model."""
    run = Path(run)
    _require(run, spec.model, spec.deploy)
    net = load_net(run / spec.deploy, run / spec.model)
    r = evaluate_model(net, data, layout, spec.output)
    r["model"], r["deploy"], r["output"] = spec.model, spec.deploy, spec.output
    r["bn_stats"] = provenance.bn_stats_of(run, run / spec.model)
    return r


def _mean(r: dict) -> float:
    return r["inter_ocular"]["mean_error"]


def _cluster(r: dict, cluster: str) -> float:
    return r["inter_ocular"]["per_cluster"][cluster]


# ---- the weights of the perturbation ablation --------------------------------------------

def perturb_weights(u, delta: float, seed: int) -> tuple[np.ndarray, list[int]]:
    """Section IV-C-2: +delta on a random floor(n/2) landmarks, -delta on the rest.

    Returns the weights (clipped at PERTURBATION_FLOOR, rescaled to the mean of `u`)
    and the 0-based landmarks that got +delta.
    """
    u = np.asarray(u, dtype=np.float64)
    n = len(u)
    plus = np.sort(np.random.default_rng(seed).permutation(n)[: n // 2])
    sign = -np.ones(n)
    sign[plus] = 1.0
    w = np.maximum(u + sign * delta, PERTURBATION_FLOOR)
    return w * (u.mean() / w.mean()), [int(i) for i in plus]


# ---- the occlusion ablation ----------------------------------------------------------------

def occlude(data: dict, layout: Layout, seed: int, fraction: float = OCCLUDED_FRACTION,
            cluster: str = OCCLUSION_CLUSTER) -> tuple[dict, np.ndarray, np.ndarray]:
    """A copy of a loaded split with the tight box of `cluster`'s landmarks filled gray in a
    seeded `fraction` of the faces (Section IV-D). Returns (data, face indices, boxes).

    The box is the smallest pixel rectangle covering the cluster's landmarks in the crop
    (`landmarks`, crop pixels): columns floor(min x)..ceil(max x), clipped to the crop.
    """
    if "landmarks" not in data:
        raise AuditError("the split lacks crop-coordinate landmarks ('landmarks') needed to place the occlusion")
    n = len(data["data"])
    k = int(round(fraction * n))
    faces = np.sort(np.random.default_rng(seed).permutation(n)[:k])
    idx = list(layout.cluster(cluster))
    pts = np.asarray(data["landmarks"], dtype=np.float64).reshape(n, layout.n_points, 2)[:, idx]
    size = data["data"].shape[-1]
    images = data["data"].copy()
    fill = network_input(np.full((1, 1, 1), OCCLUSION_FILL, np.uint8)).item()
    boxes = []
    for i in faces:
        x1, y1 = np.clip(np.floor(pts[i].min(axis=0)).astype(int), 0, size - 1)
        x2, y2 = np.clip(np.ceil(pts[i].max(axis=0)).astype(int), 0, size - 1)
        images[i, :, y1:y2 + 1, x1:x2 + 1] = fill
        boxes.append((x1, y1, x2, y2))
    out = dict(data)
    out["data"] = images
    return out, faces, np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def load_test(run: Path, split: str = "test") -> dict:
    import h5py

    data = load_split(run, split)
    parts = []
    for f in split_files(run, split):
        with h5py.File(f, "r") as h:
            if "landmarks" in h:
                parts.append(h["landmarks"][...])
    if parts and sum(len(p) for p in parts) == len(data["data"]):
        data["landmarks"] = np.concatenate(parts)
    return data


# ---- the ablations -----------------------------------------------------------------------

def paper_entry(experiment: str, run_settings: dict | None = None) -> dict:
    """What the paper says of `experiment`: its findings and figures (mcl/method/paper.py), and
    whether this run is on the paper's benchmark (else only directions are comparable)."""
    rs = run_settings or {}
    bench = paper.benchmark(rs.get("dataset") or "", rs.get("layout") or "", rs.get("test_split"))
    figures = {f.key: {"value": f.value, "unit": f.unit, "what": f.what, "where": f.where}
               for f in paper.FIGURES if f.key.startswith(experiment + ".")}
    findings = [{"claim": f.claim, "where": f.where, "dataset": f.dataset} for f in paper.findings(experiment)
                if f.dataset in ("any", bench) or bench is None]
    return {"benchmark": bench, "figures": figures, "findings": findings,
            "numbers_comparable": bench is not None}


def ablation(run: Path, name: str, layout: Layout, seed: int = 0, split: str = "test") -> dict:
    """The numbers of one ablation on the run's test split."""
    run = Path(run)
    if name not in ABLATIONS:
        raise AuditError(f"unknown ablation {name!r}: one of {', '.join(ABLATIONS)}")
    data = load_test(run, split)
    S = lambda spec: score(run, spec, data, layout)  # noqa: E731
    bm, wm, am = BM, WM, AM
    if name == "pre_bm":
        pre = of_stage(STAGES["pre_bm"])
        r = {"BM": S(bm), "pre-BM": S(pre)}
        # Section IV-C-1: BM better with 29 and 68 points, pre-BM better with 5.
        expect = "pre-BM better" if layout.n_points == 5 else "BM better"
        held = (_mean(r["pre-BM"]) < _mean(r["BM"])) == (layout.n_points == 5)
        return _result(r, expect, held, "pre_bm", layout, run)
    if name == "perturbation":
        r = {"WM": S(wm)}
        for d in DELTAS:
            r[f"delta {d:g}"] = S(of_derived(f"pert_{d:g}_stage3"))
            pert = json.loads((run / DERIVED[f"pert_{d:g}_stage3"].loss_weights).read_text())
            r[f"delta {d:g}"]["weights"] = pert["perturbation"]
        worst = max(abs(_mean(r[k]) / _mean(r["WM"]) - 1) for k in r if k != "WM")
        out = _result(r, f"every perturbed WM within {100 * PERTURBATION_TOLERANCE:g}% of WM's mean error",
                      worst <= PERTURBATION_TOLERANCE, "perturbation", layout, run)
        out["largest_relative_change"] = worst
        return out
    if name == "single_head":
        heads = {}
        for c in layout.cluster_names:
            heads[c] = S(replace(of_stage(STAGES["heads"], f"head {c}"), output=netgen.head_layer_name(c)))
        r = {"WM": S(wm), "AM": S(am), "heads": heads}
        own = {c: {"head": _cluster(heads[c], c), "WM": _cluster(r["WM"], c), "AM": _cluster(r["AM"], c)}
               for c in layout.cluster_names}
        better = {c: own[c]["head"] < own[c]["WM"] for c in own}
        out = _result(r, "each head more accurate than WM on its own cluster (paper: left and right eye)",
                      all(better[c] for c in ("left_eye", "right_eye")), "single_head", layout, run)
        out["own_cluster"], out["head_beats_wm"] = own, better
        return out
    if name == "simplified_am":
        r = {"Simplified AM": S(of_assembly(ASSEMBLIES["sam"])), "AM": S(am)}
        return _result(r, "AM better than Simplified AM", _mean(r["AM"]) < _mean(r["Simplified AM"]),
                       "simplified_am", layout, run)
    if name == "weighting_simplified_am":
        r = {"Simplified AM": S(of_assembly(ASSEMBLIES["sam"])),
             "Weighting Simplified AM": S(of_derived("wsam_stage3")), "AM": S(am)}
        # Section IV-C-4: slightly better on COFW, worse on IBUG; AM is the paper's choice either way.
        return _result(r, "AM better than Weighting Simplified AM",
                       _mean(r["AM"]) < _mean(r["Weighting Simplified AM"]), "weighting_simplified_am", layout, run)
    if name == "occlusion":
        occ, faces, boxes = occlude(data, layout, seed)
        r = {}
        for spec in (wm, am):
            clean, occl = S(spec), score(run, spec, occ, layout)
            sub = {k: v[faces] for k, v in data.items()}
            sub_occ = {k: v[faces] for k, v in occ.items()}
            r[spec.name] = {"without_occlusion": clean, "with_occlusion": occl,
                            "occluded_faces_without": score(run, spec, sub, layout),
                            "occluded_faces_with": score(run, spec, sub_occ, layout)}
        le = OCCLUSION_CLUSTER
        grew = all(_cluster(r[m]["occluded_faces_with"], le) > _cluster(r[m]["occluded_faces_without"], le)
                   for m in ("WM", "AM"))
        am_better = _cluster(r["AM"]["with_occlusion"], le) <= _cluster(r["WM"]["with_occlusion"], le)
        out = _result(r, "occlusion raises the left-eye error of WM and AM; AM stays at or below WM on it",
                      grew and am_better, "occlusion", layout, run)
        out.update(faces=[int(i) for i in faces], boxes=boxes.tolist(), fraction=OCCLUDED_FRACTION, seed=seed,
                   cluster=le, fill=OCCLUSION_FILL)
        return out
    # equal_budget
    eb = of_stage(STAGES["equal_budget"])
    r = {"BM": S(bm), "BM + equal budget": S(eb), "WM": S(wm), "AM": S(am)}
    faces = {k: np.asarray(v["face_errors"]) for k, v in r.items()}
    pairs = {f"{a} vs {b}": paired(faces[a], faces[b]) for a, b in
             (("WM", "BM"), ("AM", "WM"), ("WM", "BM + equal budget"), ("AM", "BM + equal budget"))}
    out = _result(r, "WM and AM better than BM trained for as many more iterations (paired, beyond noise)",
                  pairs["WM vs BM + equal budget"]["better"] and pairs["AM vs BM + equal budget"]["better"],
                  "equal_budget", layout, run)
    out["paired"] = pairs
    out["ordering"] = ordering_verdict(pairs)
    return out


# A difference of mean errors counts only beyond this many standard errors of the paired
# per-face differences (about a 95% two-sided interval).
PAIRED_Z = 2.0


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Model a against model b on the same faces: mean of (a - b) and its standard error."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    mean = float(d.mean())
    return {"mean_difference": mean, "standard_error": se, "faces": int(len(d)),
            "better": bool(mean < -PAIRED_Z * se), "worse": bool(mean > PAIRED_Z * se)}


def ordering_verdict(pairs: dict) -> str:
    """Whether BM > WM > AM means anything, given the equal-budget control, on paired per-face errors."""
    def beyond(key):
        return pairs[key]["better"]
    steps = beyond("WM vs BM") and beyond("AM vs WM")
    control = beyond("WM vs BM + equal budget") and beyond("AM vs BM + equal budget")
    if steps and control:
        return ("BM > WM > AM holds beyond noise and WM and AM beat BM trained for as many more iterations: the "
                "ordering is supported")
    if control:
        return ("WM and AM beat BM trained for as many more iterations beyond noise, but not every step of BM > WM "
                "> AM is beyond noise")
    beat = [m for m in ("WM", "AM") if beyond(f"{m} vs BM + equal budget")]
    if steps and not beat:
        return ("BM > WM > AM holds beyond noise, but BM trained for as many more iterations does as well: the "
                "ordering reflects more training, not weighting or multi-center learning")
    versus = "BM trained for as many more iterations"
    if len(beat) == 1:
        other = "AM" if beat == ["WM"] else "WM"
        control_text = f"{beat[0]} beats {versus}, {other} does not"
    else:
        control_text = f"neither WM nor AM beats {versus}"
    if steps:
        return f"BM > WM > AM holds beyond noise, but {control_text}: the ordering is not supported as a whole"
    clear = [k for k, p in pairs.items() if p["better"]]
    return (f"no BM > WM > AM ordering is supported (paired per-face errors, {PAIRED_Z:g} standard errors): beyond "
            f"noise only {', '.join(clear) if clear else 'nothing'}; {control_text}")


def scored_models(numbers: dict, prefix: str = "") -> dict[str, dict]:
    """Every scored model inside an ablation's numbers, by a readable name ("WM / with_occlusion")."""
    out = {}
    for k, v in numbers.items():
        if isinstance(v, dict) and "inter_ocular" in v:
            out[prefix + k] = v
        elif isinstance(v, dict):
            out.update(scored_models(v, f"{prefix}{k} / "))
    return out


def _not_finite(numbers: dict, prefix: str = "") -> list[str]:
    """Models among `numbers` whose mean error is not finite (a training run that diverged)."""
    out = []
    for k, v in numbers.items():
        if isinstance(v, dict) and "inter_ocular" in v:
            if not np.isfinite(v["inter_ocular"]["mean_error"]):
                out.append(prefix + k)
        elif isinstance(v, dict):
            out += _not_finite(v, f"{prefix}{k} / ")
    return out


def _result(numbers: dict, expectation: str, held: bool, key: str, layout: Layout, run: Path | None = None) -> dict:
    # A comparison with NaN is False either way round: a diverged model never counts as evidence.
    diverged = _not_finite(numbers)
    return {"numbers": numbers, "paper": paper_entry(key, run_settings(run) if run else None),
            "expected_direction": expectation, "direction_held": bool(held) and not diverged,
            "not_finite": diverged}


# ---- settings of a run -----------------------------------------------------------------------

def run_settings(run: Path) -> dict:
    """Dataset, layout, schedule scale, seed, engine, and every [interp] reading in force."""
    run = Path(run)
    doc = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {"artifacts": {}}
    bm = doc["artifacts"].get(STAGES["stage1"].model, {})
    s = bm.get("settings", {})
    data = json.loads((run / "data" / "manifest.json").read_text()) if (run / "data/manifest.json").exists() else {}
    heads = doc["artifacts"].get(STAGES["heads"].model, {}).get("settings", {})
    stage2 = doc["artifacts"].get(STAGES["stage2"].model, {}).get("settings", {})
    return {
        "run": str(run.resolve()),
        "dataset": (data.get("source") or {}).get("dataset") or (data.get("settings") or {}).get("dataset"),
        "test_split": (data.get("settings") or {}).get("test_split"),
        "layout": s.get("layout"), "schedule_scale": s.get("schedule_scale"), "schedule": s.get("schedule", "paper"),
        "seed": s.get("seed"),
        "batch_size": s.get("batch_size"), "engine": bm.get("engine", "caffe"), "device": bm.get("device", "cpu"),
        "caffe_version": bm.get("caffe_version"),
        "interpretations": {
            "bn_stats (BatchNorm statistics of each stage's product)": bm.get("bn_stats"),
            "bn_batches (training batches they are recomputed over)": bm.get("bn_batches"),
            "frozen BatchNorm in stage 2 (METHOD §5.3)": stage2.get("frozen_bn"),
            "frozen BatchNorm in the heads (METHOD §5.3)": heads.get("frozen_bn"),
            "Eq. 5 normalisation": "u_j = n b_j / sum_k b_k (mean weight 1)",
            "Eq. 9 within groups": "proportional to WM's error inside P_i and Q_i, group totals from Eq. 8",
            "alpha (Eq. 6)": 125,
            "clusters": "mcl/method/layouts.py (29 points: brows by mirror pairs; 68: eyes with brows, contour 1-6/7-11/12-17)",
            "learning-rate multipliers": "weights 1 / decay 1, biases 2 / decay 0",
            "warm-up before step 1 (METHOD §5.5)": (f"on: lr 0.002 fixed for 5% of step 1, which resumes from "
                                                    f"{bm['warmup']}" if bm.get("warmup") else "off"),
            "perturbation weights": f"clipped at {PERTURBATION_FLOOR}, rescaled to mean 1",
            "occlusion": f"{OCCLUDED_FRACTION:.0%} of test faces, tight box of {OCCLUSION_CLUSTER} filled gray",
            "augmentation": (data.get("settings") or {}).get("augment"),
            "test crop": (data.get("settings") or {}).get("test_crop", "ours") + f", crop_scale "
                         f"{(data.get('settings') or {}).get('crop_scale')}",
            "validation fraction": (data.get("settings") or {}).get("val_fraction"),
        },
    }


# ---- the audit's steps as the Makefile runs them (tools/audit.py) ------------------------------

def perturb_file(run: Path, src: Path, delta: float, seed: int, out: Path) -> list[int]:
    """Perturbed Eq. 5 weights of Section IV-C-2 written to `out`; the 1-based landmarks given +delta."""
    layout = run_layout(run)
    doc = loss_weights.load(src)
    if doc["layout"] != layout.name or "weights" not in doc:
        raise ValueError(f"{src}: not Eq. 5 weights of layout {layout.name} (the run's layout)")
    w, plus = perturb_weights(doc["weights"], delta, seed)
    plus = [j + 1 for j in plus]
    new = loss_weights.document(layout, "eq5", weights=w, source=str(src), errors=doc.get("errors"),
                                perturbation={"delta": delta, "seed": seed, "plus": plus, "floor": PERTURBATION_FLOOR})
    atomic_write(out, json.dumps(new, indent=2) + "\n")
    manifest.record(run, Path(out).resolve(), "audit-perturb", {"delta": delta, "seed": seed}, [src], 0.0)
    return plus


def score_models(run: Path, split: str, out: Path) -> dict:
    """BM, WM and AM under both BatchNorm-statistics settings, written to `out` (models.json)."""
    layout = run_layout(run)
    data = load_test(run, split)
    scored = {s.name: score(run, s, data, layout) for s in main_models(run)}
    _record(run, Path(out), {"split": split, "models": scored}, "audit-models", [run / s.model for s in main_models(run)])
    return scored


def run_ablation(run: Path, name: str, seed: int, split: str, out: Path) -> dict:
    """One ablation's numbers written to `out` (<name>.json), with the models it read as inputs."""
    res = ablation(run, name, run_layout(run), seed, split)
    res["split"] = split
    _record(run, Path(out), res, f"audit-{name}", [run / m for m in sorted(set(_model_paths(res)))])
    return res


def _model_paths(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("model"), str) and obj["model"].endswith(".caffemodel"):
            yield obj["model"]
        for v in obj.values():
            yield from _model_paths(v)


def _record(run: Path, out: Path, doc: dict, stage: str, inputs: list[Path]) -> None:
    t0 = time.time()
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    manifest.record(run, out.resolve(), stage, {}, [p for p in inputs if p.exists()], time.time() - t0)


def compare_bn_statistics(run: Path, stage: str, model: Path, batches: int, split: str) -> dict:
    """Caffe's raw model beside the stage's product: the Eq. 4 loss in the TRAIN and TEST phases on the
    first training batches, and the mean error on `split` (tools/bn_stats.py --compare)."""
    layout = run_layout(run)
    # the net the stage trained with: the generated one, or its copy with the table's loss weights
    weights = STAGES[stage].loss_weights_file
    net = stage_file_paths(run, stage, weights=run / weights if weights else None)[0]
    net = net if net.exists() else run / "nets" / f"{stage}_train.prototxt"
    deploy = run / "nets" / f"{STAGES[stage].deploy}.prototxt"
    output = ("fc6" if stage == "pre_bm" else netgen.head_layer_name(layout.cluster_names[0]) if stage == "heads"
              else netgen.SHAPE_LAYER)
    data = load_split(run, split)
    rows = {}
    for label, path in (("running (raw)", bnstats.raw_path(model)), ("product", model)):
        if not path.exists():
            raise EvalError(f"{path}: missing")
        r = bnstats.phase_losses(run, net, path, batches)
        ev = evaluate_model(load_net(deploy, path), data, layout, output)
        r["mean_error"] = ev["inter_ocular"]["mean_error"]
        r["failure_rate"] = ev["inter_ocular"]["failure_rate"]["0.10"]
        r["model"], r["bn_stats"] = str(path), provenance.bn_stats_of(run, path)
        rows[label] = r
    return {"stage": stage, "split": split, "batches": batches, "output": output, "rows": rows}
