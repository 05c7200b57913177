"""The demo's closing summary: one table of what the run produced and where it is.

Reads the evaluation (eval/test.json), the audit (audit/audit.json), the port
(its ONNX model, timed here on one core beside Caffe's single-core figure) and
the run's manifest (wall time of every stage).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from mcl.evaluation.report import DIVERGED, diverged
from mcl.fileio import atomic_write
from mcl.method.stages import ASSEMBLED_MODEL, STAGES
from mcl.records import provenance

# The pipeline's products in Algorithm 1's order, with the data before and the evaluation after.
PIPELINE = (("data", "data/manifest.json"), ("stage 1 (BM)", STAGES["stage1"].model),
            ("weights Eq. 5", STAGES["stage2"].loss_weights_file), ("stage 2", STAGES["stage2"].model),
            ("stage 3 (WM)", STAGES["stage3"].model), ("weights Eq. 9", STAGES["heads"].loss_weights_file),
            ("heads", STAGES["heads"].model), ("assemble (AM)", ASSEMBLED_MODEL),
            ("evaluation", "eval/test.json"), ("equal-budget control", STAGES["equal_budget"].model))


def onnx_ms(onnx_path: Path, repeats: int = 200, warmup: int = 20) -> dict:
    """ONNX Runtime, batch 1, one intra-op thread, pinned to one core: median ms per face."""
    import onnxruntime as ort
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.zeros((1, 1, 50, 50), np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "repeats": repeats, "threads": 1}


def _wall_times(run: Path) -> dict[str, float]:
    doc = json.loads((run / "manifest.json").read_text())["artifacts"] if (run / "manifest.json").exists() else {}
    out = {}
    for label, key in PIPELINE:
        if key in doc:
            out[label] = doc[key].get("wall_time_s")
    return out


def photo_record(path: Path) -> dict:
    """The real photo the demo ends on, as tools/predict.py wrote it."""
    doc = json.loads(Path(path).read_text())
    return {"picture": doc["image"], "model": doc["model"], "layout": doc["layout"], "faces": len(doc["faces"]),
            "points": len(doc["faces"][0]["landmarks"]) if doc["faces"] else 0,
            "detector": doc["faces"][0]["detector"] if doc["faces"] else None,
            "drawn": str(Path(path).with_name(Path(path).stem + "_landmarks.png"))}


def build(run: Path, onnx_path: Path | None, photo: Path | None = None) -> dict:
    run = Path(run)
    ev = json.loads((run / "eval" / "test.json").read_text())
    models = {}
    for name in ("BM", "WM", "AM"):
        r = ev["results"][name]
        models[name] = {"mean_error": r["inter_ocular"]["mean_error"],
                        "failure_rate": r["inter_ocular"]["failure_rate"]["0.10"],
                        "auc_0.10": r["inter_ocular"]["auc"]["0.10"], "bn_stats": r.get("bn_stats"),
                        "caffe_ms": (r.get("speed") or {}).get("median_ms", r.get("speed_ms"))}
    audit_path = run / "audit" / "audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.exists() else {}
    ab = audit.get("ablations", {})
    first = ev["results"]["AM"]
    doc = {
        "run": str(run.resolve()), "layout": ev["layout"], "split": ev["split"],
        "schedule_scale": first.get("schedule_scale"), "seed": first.get("seed"), "engine": first.get("engine"),
        "precision": first.get("precision"),
        "schedule": (audit.get("settings") or {}).get("schedule"),
        "models": models,
        "onnx": onnx_ms(onnx_path) if onnx_path and Path(onnx_path).exists() else None,
        "ordering": (ab.get("equal_budget") or {}).get("ordering"),
        "equal_budget_mean_error": ((ab.get("equal_budget") or {}).get("numbers", {})
                                    .get("BM + equal budget", {}).get("inter_ocular", {}).get("mean_error")),
        "occlusion_held": (ab.get("occlusion") or {}).get("direction_held"),
        "wall_time_s": _wall_times(run),
        "photo": photo_record(photo) if photo else None,
        "files": {k: str(v) for k, v in {
            "evaluation report": run / "eval" / "test.md", "CED plot": run / "eval" / "test_ced.png",
            "overlays (AM)": run / "eval" / "test_overlays_AM.png", "audit report": run / "audit" / "audit.md",
            "models": run / "models", "ONNX model": onnx_path, "manifest": run / "manifest.json"}.items()
            if v is not None},
    }
    return doc


def markdown(doc: dict) -> str:
    lines = [f"# Summary of {doc['run']}", "",
             f"Layout {doc['layout']}, split {doc['split']}, engine {provenance.engine_label(doc)}, schedule scale "
             f"{doc['schedule_scale']:.6g}, seed {doc['seed']}.", "",
             "| model | mean error (% of d) | failure > 10% (%) | AUC@0.10 | BatchNorm statistics | Caffe ms/face |",
             "|---|---|---|---|---|---|"]
    for name, m in doc["models"].items():
        ms = "-" if m["caffe_ms"] is None else f"{m['caffe_ms']:.2f}"
        if diverged(m["mean_error"]):
            lines.append(f"| {name} | {DIVERGED} | | | {m['bn_stats']} | {ms} |")
            continue
        lines.append(f"| {name} | {100 * m['mean_error']:.2f} | {100 * m['failure_rate']:.1f} | {m['auc_0.10']:.4f} | "
                     f"{m['bn_stats']} | {ms} |")
    eb = doc["equal_budget_mean_error"]
    if eb is not None:
        shown = DIVERGED if diverged(eb) else f"{100 * eb:.2f}"
        lines.append(f"| BM + equal budget (control) | {shown} | - | - | - | - |")
    lines.append("")
    if doc["onnx"]:
        am = doc["models"]["AM"]["caffe_ms"]
        lines.append(f"AM per face on one core: Caffe {am:.2f} ms, ONNX Runtime {doc['onnx']['median_ms']:.2f} ms "
                     f"(medians, batch 1, one thread).")
    if doc["ordering"]:
        lines.append(f"Ordering: {doc['ordering']}.")
    if doc["occlusion_held"] is not None:
        lines.append(f"Occlusion test: the paper's direction {'held' if doc['occlusion_held'] else 'did not hold'}.")
    if doc.get("photo"):
        ph = doc["photo"]
        lines += ["", f"Real photo: {Path(ph['picture']).name} aligned by the in-box model {Path(ph['model']).name} "
                  f"(trained on real faces; its card: {Path(ph['model']).parent / 'MODEL_CARD.md'}): {ph['faces']} "
                  f"face(s), {ph['points']} points each, detector {ph['detector']}; drawn in {ph['drawn']}."]
    lines += ["", "| step | wall time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in doc["wall_time_s"].items() if v is not None]
    lines += ["", "Files:", ""] + [f"- {k}: {v}" for k, v in doc["files"].items()]
    return "\n".join(lines) + "\n"


def write(run: Path, onnx_path: Path | None, photo: Path | None = None) -> dict:
    doc = build(run, onnx_path, photo)
    atomic_write(Path(run) / "summary.json", json.dumps(doc, indent=2) + "\n")
    atomic_write(Path(run) / "summary.md", markdown(doc))
    return doc
