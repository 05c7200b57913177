"""The method on a second architecture (Section IV-E): Algorithm 1 in PyTorch on a run's data, scored as the
audit scores the Caffe net.

`audit` trains a named architecture (mcl.method.backbones) through mcl.method.pytorch.algorithm1 on the
run's training split, takes Eq. 5 and Eq. 9 from its validation errors exactly as the pipeline does (each
landmark's mean error in image coordinates over d, mcl.evaluation.evaluate.score), and scores BM, WM, AM and
the equal-budget control on the test split with the evaluation's metrics. Paired per-face comparisons are the
audit's (mcl.evaluation.audit.paired, two standard errors). Where the run's own Caffe net has been trained
(models/bm, wm, am, equal_budget), it is scored on the same faces beside it. The paper's DAN figures
(mcl.method.paper, Section IV-E) stand beside the numbers; on data that is not IBUG only directions compare.

`write_report` writes RUN/audit_model/<name>/report.json and report.md; am.pt (AM's state_dict) lies beside.
Nothing is written in the run's manifest: the run folder is read, and the report records the checksums of
the splits it read.
"""

from __future__ import annotations

import io
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from mcl.caffe.netgen import SHAPE_LAYER
from mcl.data.splits import SplitError, load_split, split_files
from mcl.evaluation import audit
from mcl.evaluation.evaluate import FAILURE_THRESHOLDS, score, to_image
from mcl.fileio import atomic_write
from mcl.method import backbones, paper
from mcl.method.layouts import Layout
from mcl.method.pytorch import Algorithm1Result, LandmarkData, Schedule, algorithm1, features_of, predict
from mcl.method.stages import BATCH_SIZE, check_schedule
from mcl.records import manifest, provenance, settings

OUT_DIR = "audit_model"  # RUN/audit_model/<architecture>/
MODELS = ("BM", "WM", "AM", "BM + equal budget")
CAFFE_MODELS = (("BM", "models/bm.caffemodel", "nets/deploy.prototxt"),
                ("WM", "models/wm.caffemodel", "nets/deploy.prototxt"),
                ("AM", "models/am.caffemodel", "models/am_deploy.prototxt"),
                ("BM + equal budget", "models/equal_budget.caffemodel", "nets/deploy.prototxt"))
# The audit's comparisons (its equal_budget ablation), then the two networks' products face by face.
PAIRS = (("WM", "BM"), ("AM", "WM"), ("WM", "BM + equal budget"), ("AM", "BM + equal budget"))
CROSS = ("BM", "WM", "AM")


class AuditModelError(ValueError):
    """A run folder, schedule or device the audit of a second architecture cannot use."""


@dataclass
class AuditModelResult:
    doc: dict  # report.json
    result: Algorithm1Result
    layout: Layout
    out: Path


def load_rows(run: Path, split: str) -> dict[str, np.ndarray]:
    """A split for training and scoring: the evaluation's arrays plus `landmarks` (N, 2n, crop pixels) and
    `inv_iod` (N,), the targets and 1/d of Eq. 4 as the Caffe nets read them."""
    data = load_split(run, split)
    extra: dict[str, list] = {"landmarks": [], "inv_iod": []}
    for f in split_files(run, split):
        with h5py.File(f, "r") as h:
            for k, parts in extra.items():
                if k not in h:
                    raise SplitError(f"{f}: lacks dataset {k!r}, which training reads")
                parts.append(h[k][...])
    data.update({k: np.concatenate(v) for k, v in extra.items()})
    if len(data["landmarks"]) != len(data["data"]):
        raise SplitError(f"split {split!r} of {run}: {len(data['landmarks'])} targets for {len(data['data'])} crops")
    return data


def rows_data(rows: dict, device: str) -> LandmarkData:
    return LandmarkData(torch.from_numpy(np.ascontiguousarray(rows["data"], np.float32)).to(device),
                        torch.from_numpy(np.ascontiguousarray(rows["landmarks"], np.float32)).to(device),
                        torch.from_numpy((1.0 / rows["inv_iod"]).astype(np.float32)).to(device))


def scored(model: torch.nn.Module, rows: dict, images: torch.Tensor, layout: Layout) -> dict:
    """The evaluation's metrics of a PyTorch model's predictions, mapped back to the picture."""
    return score(to_image(predict(model, images), rows["crop_to_image"]), rows, layout)


def run_schedule(run: Path, scale: float | None, schedule: str | None, batch: int | None) -> tuple[Schedule, dict]:
    """The run's own schedule (RUN/run.json) unless one is given."""
    recorded = settings.read(run) or {}
    name = schedule if schedule is not None else recorded.get("schedule", "paper")
    scale = scale if scale is not None else recorded.get("schedule_scale")
    try:
        named = check_schedule(name)
    except ValueError as exc:
        raise AuditModelError(str(exc)) from None
    if scale is None and named is None:
        raise AuditModelError(f"{run}: no run.json to take the schedule scale from; give --scale")
    if scale is not None and scale <= 0:
        raise AuditModelError(f"schedule scale must be positive, got {scale}")
    batch = batch or recorded.get("batch_size") or BATCH_SIZE
    sch = Schedule.from_stages(scale if scale is not None else 1.0, named, batch)
    return sch, {"name": named or "paper", "scale": scale, "from": "arguments" if schedule or scale else "run.json"}


def _metric_row(r: dict) -> dict:
    m = r["inter_ocular"]
    return {"mean_error": m["mean_error"], "failure_rate": m["failure_rate"], "auc": m["auc"],
            "per_cluster": m["per_cluster"]}


def caffe_net(run: Path, test: dict, layout: Layout) -> dict:
    """The run's own Caffe products scored on the same faces, where they exist (else why not)."""
    present = [(n, m, d) for n, m, d in CAFFE_MODELS if (run / m).exists() and (run / d).exists()]
    if not present:
        return {"available": False, "why": "the run has no Caffe products yet (make assemble, make equal_budget)"}
    try:
        numbers = {n: audit.score(run, audit.ModelSpec(n, m, d), test, layout) for n, m, d in present}
    except ImportError as exc:
        return {"available": False, "why": f"pycaffe does not load ({exc})"}
    bm = manifest.entry(run, run / "models/bm.caffemodel") or {}
    recorded = settings.read(run) or {}
    return {"available": True, "numbers": numbers, "stage1_wall_time_s": bm.get("wall_time_s"),
            "engine": bm.get("engine", "caffe"), "device": bm.get("device", "cpu"),
            "schedule": recorded.get("schedule"), "schedule_scale": recorded.get("schedule_scale")}


def audit_model(run, name: str, device: str = "cpu", scale: float | None = None, schedule: str | None = None,
                seed: int = 0, batch: int | None = None, threads: int | None = None, out=None,
                log=None) -> AuditModelResult:
    """Algorithm 1 on architecture `name` over the run's data, scored; nothing written (see write_report)."""
    t0 = time.time()
    run = Path(run)
    if not run.is_dir():
        raise AuditModelError(f"{run}: not a run folder")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AuditModelError(f"device {device!r}: torch sees no GPU (torch {torch.__version__})")
    if device != "cpu" and not device.startswith("cuda"):
        raise AuditModelError(f"device {device!r}: cpu or cuda")
    try:
        layout = provenance.layout_of(run)
    except ValueError as exc:
        raise AuditModelError(str(exc)) from None
    if threads:
        torch.set_num_threads(threads)
    sch, sch_doc = run_schedule(run, scale, schedule, batch)
    train, val, test = (load_rows(run, s) for s in ("train", "val", "test"))
    model = backbones.build(name, layout, seed)
    val_images = rows_data(val, device).images

    def val_errors(m):
        # b_j / w_j exactly as mcl.evaluation.evaluate.validation_errors computes them for the Caffe net.
        return np.asarray(scored(m, val, val_images, layout)["inter_ocular"]["per_landmark"])

    res = algorithm1(model, layout, rows_data(train, device), rows_data(val, device), sch,
                     fixed_in_stage2=backbones.FIXED_IN_STAGE2, shape_layer=SHAPE_LAYER, seed=seed, device=device,
                     val_errors=val_errors, log=log)
    test_images = rows_data(test, device).images
    products = dict(zip(MODELS, (res.bm, res.wm, res.am, res.equal_budget)))
    numbers = {k: scored(m, test, test_images, layout) for k, m in products.items()}
    faces = {k: np.asarray(v["face_errors"]) for k, v in numbers.items()}
    pairs = {f"{a} vs {b}": audit.paired(faces[a], faces[b]) for a, b in PAIRS}
    caffe = caffe_net(run, test, layout)
    if caffe["available"]:
        for k in CROSS:
            if k in caffe["numbers"]:
                pairs[f"{name} {k} vs the paper's net {k}"] = audit.paired(faces[k], np.asarray(
                    caffe["numbers"][k]["face_errors"]))
    # Eq. 2-3 copies rows: on its own clusters AM computes what each head computes (recorded, 0 expected).
    feats = features_of(res.wm, res.shape_layer, test_images)
    am_out = torch.from_numpy(predict(res.am, test_images))
    with torch.no_grad():
        heads_out = res.heads(feats)
    owner = layout.cluster_of()
    gap = max(float((am_out[:, 2 * j:2 * j + 2] - heads_out[layout.cluster_names[owner[j]]][:, 2 * j:2 * j + 2]
                     .double().cpu()).abs().max()) for j in range(layout.n_points))
    protocol = provenance.data_protocol(run)
    inputs = {str(f.relative_to(run)): manifest.sha256(f)
              for s in ("train", "val", "test") for f in split_files(run, s)}
    st1 = res.stages["stage1"]
    out = Path(out) if out else run / OUT_DIR / name
    doc = {
        "architecture": backbones.describe(name),
        "engine": "pytorch (mcl.method.pytorch.algorithm1)", "torch_version": torch.__version__, "device": device,
        "threads": torch.get_num_threads(), "host": platform.node(), "python": platform.python_version(),
        "layout": layout.name, "seed": seed,
        "schedule": {**sch_doc, **sch.describe()},
        "numbers": numbers,
        "paired": pairs,
        "ordering": audit.ordering_verdict({k: pairs[k] for k in (f"{a} vs {b}" for a, b in PAIRS)}),
        "caffe_net": caffe,
        "paper": audit.paper_entry("dan", {"dataset": protocol.get("dataset"), "layout": layout.name,
                                           "test_split": protocol.get("test_split")}),
        "loss_weights": {"eq5": [float(x) for x in res.weights["eq5"]],
                         "eq9": {c: [float(x) for x in v] for c, v in res.weights["eq9"].items()}},
        "validation_errors": {k: [float(x) for x in v] for k, v in res.errors.items()},
        "stages": res.stages, "fixed_in_stage2": list(res.fixed_in_stage2), "shape_layer": res.shape_layer,
        "am_vs_heads_max_abs_diff": gap,
        "time_per_iteration_s": st1["seconds_per_iteration"],
        "data_protocol": protocol,
        "paths": {"run": str(run.resolve()), "out": str(out.resolve()), "report": str((out / "report.json").resolve()),
                  "am_state_dict": str((out / "am.pt").resolve()), "splits": sorted(inputs)},
        "inputs": inputs,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    doc["wall_time_s"] = time.time() - t0
    return AuditModelResult(doc, res, layout, out)


def _pct(x) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.2f}"


def markdown(doc: dict) -> str:
    arch, sch = doc["architecture"], doc["schedule"]
    t = f"{FAILURE_THRESHOLDS[0]:.2f}"
    lines = [f"# Algorithm 1 on {arch['name']} (PyTorch), run `{doc['paths']['run']}`", "",
             (f"{arch['family']} after {arch['source']}; width multiplier {arch['width_mult']:g}. Engine "
              f"{doc['engine']}, torch {doc['torch_version']}, device {doc['device']}, {doc['threads']} thread(s); "
              f"layout {doc['layout']}; schedule {sch['name']} (scale {sch['scale']}), batch {sch['batch_size']}; "
              f"seed {doc['seed']}. Stage 2 fixes {', '.join(doc['fixed_in_stage2'])}."), "",
             "## Test split (mean error, % of the inter-ocular distance)", "",
             "| model | mean error (%) | failure >10% (%) | failure >8% (%) | AUC@0.08 | AUC@0.10 |",
             "|---|---|---|---|---|---|"]

    def row(label, r):
        m = r["inter_ocular"]
        return (f"| {label} | {_pct(m['mean_error'])} | {_pct(m['failure_rate'][t])} | "
                f"{_pct(m['failure_rate']['0.08'])} | {m['auc']['0.08']:.4f} | {m['auc']['0.10']:.4f} |")

    lines += [row(f"{arch['name']} {k}", r) for k, r in doc["numbers"].items()]
    caffe = doc["caffe_net"]
    if caffe["available"]:
        lines += [row(f"the paper's net {k} (this run, {caffe['engine']} engine)", r)
                  for k, r in caffe["numbers"].items()]
    else:
        lines += ["", f"The paper's net of this run is not beside it: {caffe['why']}."]
    lines += ["", "## Paired per-face comparisons", "",
              (f"Mean of (first - second) per face, points of % of d; beyond noise at {audit.PAIRED_Z:g} standard "
               "errors."), "", "| comparison | mean difference | standard error | faces | verdict |",
              "|---|---|---|---|---|"]
    for k, p in doc["paired"].items():
        verdict = "better" if p["better"] else "worse" if p["worse"] else "within noise"
        lines.append(f"| {k} | {100 * p['mean_difference']:+.3f} | {100 * p['standard_error']:.3f} | {p['faces']} | "
                     f"{verdict} |")
    lines += ["", f"Ordering: {doc['ordering']}.", "", "## Beside the paper (Section IV-E: DAN on IBUG)", "",
              "| | mean error (%) | where |", "|---|---|---|"]
    for key in ("dan.reported", "dan.retrained", "dan.weighting"):
        f = paper.figure(key)
        lines.append(f"| {f.what} | {f.value:.2f} | {f.where} |")
    bm, wm = (doc["numbers"][k]["inter_ocular"]["mean_error"] for k in ("BM", "WM"))
    lines += [f"| {arch['name']} BM -> WM here | {_pct(bm)} -> {_pct(wm)} | this run |", ""]
    lines.append("The paper's numbers are comparable: this is IBUG." if doc["paper"]["numbers_comparable"] else
                 "This run is not the paper's IBUG benchmark: only the direction (weighting fine-tuning lowers the "
                 "error, 7.97 -> 7.81 for DAN) compares.")
    lines += ["", "## Training", "",
              "| stage | iterations | base lr | stepsize | seconds | s / iteration | loss, first -> last |",
              "|---|---|---|---|---|---|---|"]
    for k, s in doc["stages"].items():
        lines.append(f"| {k} | {s['iterations']} | {s['base_lr']:g} | {s['stepsize']} | {s['seconds']:.1f} | "
                     f"{s['seconds_per_iteration']:.4f} | {s['loss_first']:.4f} -> {s['loss_last']:.4f} |")
    if caffe.get("available") and caffe.get("stage1_wall_time_s"):
        lines += ["", (f"The paper's net's stage 1 took {caffe['stage1_wall_time_s']:.0f} s in the run's manifest "
                       f"(engine {caffe['engine']}, statistics step included).")]
    u5 = np.asarray(doc["loss_weights"]["eq5"])
    lines += ["", (f"Eq. 5 weights from BM's validation errors: {u5.min():.3f} .. {u5.max():.3f} (mean "
                   f"{u5.mean():.3f}); Eq. 9 for {len(doc['loss_weights']['eq9'])} clusters (alpha 125). AM against "
                   f"the heads on their own clusters: largest difference {doc['am_vs_heads_max_abs_diff']:.3g}."), ""]
    if "port" in doc:
        lines += ["## Port", "", (f"AM as ONNX: `{doc['port']['onnx']}` (card `{doc['port']['card']}`), ONNX "
                                 f"Runtime against PyTorch: largest difference {doc['port']['max_abs_diff']:.3g}."), ""]
    lines += [f"Wall time: {doc['wall_time_s']:.0f} s. Report: `{doc['paths']['report']}`.", ""]
    return "\n".join(lines)


def write_report(res: AuditModelResult) -> list[Path]:
    """report.json, report.md and am.pt (AM's state_dict with its architecture and layout)."""
    out = res.out
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"architecture": res.doc["architecture"]["name"], "layout": res.layout.name,
                "state_dict": {k: v.cpu() for k, v in res.result.am.state_dict().items()}}, buf)
    atomic_write(out / "am.pt", buf.getvalue())
    atomic_write(out / "report.json", json.dumps(res.doc, indent=2) + "\n")
    atomic_write(out / "report.md", markdown(res.doc))
    return [out / "report.json", out / "report.md", out / "am.pt"]
