"""Reports and plots of evaluations: markdown tables, CED curves, overlays of the best and worst faces.

Every number of a report is tied to what produced it: for a model, the schedule
scale, seed, engine and BatchNorm-statistics setting its run's manifest records
(`mcl.records.provenance.trained_with`); for every number, the test-crop protocol of the split's
crops (`mcl.records.provenance.data_protocol`). An evaluation document (the JSON tools/evaluate.py writes)
holds all of it, and the markdown is rebuilt from that document alone.

Overlays are drawn on the split's own 50 x 50 network inputs (the HDF5 `data`
crops): ground truth and prediction, both held in original-image coordinates,
are mapped into the crop through the inverse of its `crop_to_image` matrix, so
the sheet needs no original pictures and shows exactly what the net saw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mcl.caffe.forward import load_net
from mcl.caffe.runfiles import run_layout
from mcl.data.augment import apply_affine, invert_affine
from mcl.data.sheet import contact_sheet
from mcl.data.splits import load_split
from mcl.evaluation.evaluate import ced, predict_image, score
from mcl.fileio import atomic_write, durable_replace
from mcl.method.layouts import PIXEL_MEAN, PIXEL_SCALE, Layout
from mcl.method.stages import deploy_output
from mcl.records import provenance

GT_COLOUR = (60, 220, 60)  # BGR green: ground truth
PRED_COLOUR = (40, 40, 255)  # BGR red: prediction
OVERLAY_SCALE = 3  # 50 x 50 crops drawn at 150 x 150


# ---- where each number comes from ------------------------------------------------------

def protocol_text(protocol: dict) -> str:
    """One sentence naming the test-crop protocol."""
    tc = protocol.get("test_crop")
    if tc == "authors":
        return ("test-crop protocol `authors` (the authors' release: square of side 1.1 x the larger box side, "
                "centred on the box, gray outside the picture, scale 49/side)")
    if tc == "ours":
        return (f"test-crop protocol `ours` (square of side {protocol.get('crop_scale')} x the larger box side, "
                "centred on the box, edge pixels repeated outside the picture)")
    return f"test-crop protocol unknown ({protocol.get('source')})"


# ---- markdown ----------------------------------------------------------------------------

def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, str):
        return x
    return format(x, spec)


def diverged(mean_error) -> bool:
    """A model whose mean error is not finite: its training diverged, and its row holds no result."""
    return mean_error is None or not math.isfinite(float(mean_error))


DIVERGED = "diverged: errors not finite (see its stage log); no result"


def evaluation_markdown(doc: dict, layout: Layout) -> str:
    """The readable report of an evaluation document (as tools/evaluate.py writes it)."""
    results = doc["results"]
    protocol = doc.get("protocol", {})
    lines = [f"# Evaluation: layout {layout.name}, split {doc['split']}", "",
             "Errors in % of the inter-ocular distance (METHOD §7), measured in original-image coordinates; "
             "failure: face mean error > 10% (and > 8%).", "",
             f"Crops of every model's numbers below: {protocol_text(protocol)}"
             + (", as the run's data/manifest.json records it." if protocol.get("test_crop") else "."), "",
             "BatchNorm statistics: `recomputed` for the final weights by the statistics step, `running` as "
             "Caffe's running averages left them (mcl/caffe/bnstats.py).", "",
             "| model | BatchNorm statistics | faces | mean error | failure 10% | failure 8% | AUC@0.08 | AUC@0.10 "
             "| ms/face | FPS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["inter_ocular"]
        ms = r.get("speed_ms")
        bn = r.get("bn_stats") or ("-" if r.get("source") == "predictions" else "unknown")
        if diverged(m["mean_error"]):
            lines.append(f"| {name} | {bn} | {m['faces']} | {DIVERGED} | | | | | | |")
            continue
        lines.append(f"| {name} | {bn} | {m['faces']} | {100 * m['mean_error']:.2f} | "
                     f"{100 * m['failure_rate']['0.10']:.2f} | {100 * m['failure_rate']['0.08']:.2f} | "
                     f"{m['auc']['0.08']:.4f} | {m['auc']['0.10']:.4f} | {_fmt(ms)} | "
                     f"{_fmt(1000 / ms if ms else None, '.0f')} |")
    lines += ["", "Where each result comes from:", "",
              "| model | source | schedule scale | seed | engine | BatchNorm statistics | test crop |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        src = r.get("predictions_file") if r.get("source") == "predictions" else r.get("model")
        what = (f"predictions `{Path(src).name}` ({r.get('coords_base')}-based)" if r.get("source") == "predictions"
                else f"model `{Path(src).name}`" if src else "-")
        lines.append(f"| {name} | {what} | {_fmt(r.get('schedule_scale'), 'g')} | {_fmt(r.get('seed'), 'd')} | "
                     f"{provenance.engine_label(r) if r.get('engine') else '-'} | {_fmt(r.get('bn_stats'))} | "
                     f"{_fmt(r.get('test_crop'))} |")
    lines += ["", "Per-cluster mean error (%):", "",
              "| model | " + " | ".join(layout.cluster_names) + " |", "|---" * (layout.m + 1) + "|"]
    for name, r in results.items():
        pc = r["inter_ocular"]["per_cluster"]
        if diverged(r["inter_ocular"]["mean_error"]):
            lines.append(f"| {name} | {DIVERGED} |" + " |" * (layout.m - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(f"{100 * pc[c]:.2f}" for c in layout.cluster_names) + " |")
    if layout.outer_corners is not None:
        lines += ["", "Normalised by the outer eye corners instead (as later papers report):", ""]
        for name, r in results.items():
            m = r["outer_corners"]
            if diverged(m["mean_error"]):
                lines.append(f"- {name}: {DIVERGED}")
                continue
            lines.append(f"- {name}: mean error {100 * m['mean_error']:.2f}%, "
                         f"failure {100 * m['failure_rate']['0.10']:.2f}%")
    speed = doc.get("speed")
    if speed:
        lines += ["", f"Speed: {speed.get('how', '')}"]
    return "\n".join(lines) + "\n"


def speed_markdown(table: dict) -> str:
    """The table of mcl.caffe.speed.measure_layouts: our nets beside the paper's row."""
    lines = ["| net | layout | median ms/face | IQR ms | min ms | FPS | `caffe time` forward ms |",
             "|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        ct = r.get("caffe_time") or {}
        lines.append(f"| {r['name']} | {r['layout']} | {r['median_ms']:.2f} | {r['iqr_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['fps']:.0f} | {_fmt(ct.get('forward_ms'))} |")
    p = table["paper"]
    lines.append(f"| {p['name']} | {p['layout']} | {p['median_ms']:g} | - | - | {p['fps']:g} | - |")
    s = table.get("settings", {})
    lines += ["", f"Batch 1, forward only, {s.get('threads', 1)} BLAS thread, pinned to one core "
              f"({s.get('repeats')} timed runs after {s.get('warmup')} warm-up; {s.get('cpu', 'this machine')}). "
              f"Paper: {p['where']}."]
    return "\n".join(lines) + "\n"


# ---- plots ---------------------------------------------------------------------------------

def ced_limit(face_errors: list[np.ndarray]) -> float:
    """At least 15%, else up to the 98th percentile of the worst model, in steps of 5%."""
    worst = max(float(np.percentile(e, 98)) for e in face_errors)
    return max(0.15, float(np.ceil(worst * 20) / 20))


def provenance_label(r: dict) -> str:
    """A result's provenance in a few words, for plots: scale, seed, engine, statistics, test crop."""
    if r.get("source") == "predictions":
        return f"predictions file, {r.get('coords_base')}-based"
    return (f"scale {_fmt(r.get('schedule_scale'), 'g', '?')}, seed {_fmt(r.get('seed'), 'd', '?')}, "
            f"{provenance.engine_label(r)}, BN {r.get('bn_stats') or '?'}, "
            f"crop {r.get('test_crop') or '?'}")


def plot_ced(curves: dict, path: Path, title: str, limit: float | None = None,
             xlabel: str = "mean error (% of inter-ocular distance)") -> None:
    """CED curves of any number of models on one plot. Each value: the faces' errors (fractions
    of d), or a result dict holding them as "face_errors" (its provenance is then written
    under the plot: once when every model shares it, else per model)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {k: provenance_label(v) for k, v in curves.items() if isinstance(v, dict)}
    curves = {k: np.asarray(v["face_errors"] if isinstance(v, dict) else v, dtype=np.float64)
              for k, v in curves.items()}
    if not curves:
        raise ValueError(f"{path}: no curves to plot")
    notes = sorted(set(labels.values()))
    notes = notes if len(notes) <= 1 else [f"{k}: {v}" for k, v in labels.items()]
    limit = limit or ced_limit(list(curves.values()))
    fig, ax = plt.subplots(figsize=(5.5, 4.2 + 0.14 * len(notes)), dpi=120)
    styles = ["-", "--", "-.", ":"]
    for i, (name, errs) in enumerate(curves.items()):
        x, y = ced(errs, limit)
        ax.plot(100 * x, 100 * y, ls=styles[(i // 10) % len(styles)], label=f"{name} ({100 * errs.mean():.2f}%)")
    ax.axvline(10, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=xlabel, ylabel="faces (%)", title=title, xlim=(0, 100 * limit), ylim=(0, 100))
    ax.grid(alpha=0.3)
    # Lower right: the curves have reached their top there, so the legend hides none of their rise.
    ax.legend(loc="lower right", fontsize="small" if len(curves) > 4 else "medium")
    fig.tight_layout(rect=(0, 0.035 * len(notes) / (1 + 0.033 * len(notes)), 1, 1))
    for i, note in enumerate(notes):
        fig.text(0.01, 0.005 + i * 0.03 / (1 + 0.033 * len(notes)), note, fontsize=6, color="dimgray")
    save_figure(fig, Path(path))
    plt.close(fig)


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    durable_replace(tmp, path)


def crop_pixels(data: np.ndarray) -> np.ndarray:
    """Network inputs (N, 1, 50, 50) float back to uint8 gray pixels."""
    return np.clip(np.rint(np.asarray(data)[:, 0] / PIXEL_SCALE + PIXEL_MEAN), 0, 255).astype(np.uint8)


def image_to_crop(points_img: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """(N, n, 2) original-image points into each face's crop (the inverse of crop_to_image)."""
    return apply_affine(invert_affine(np.asarray(crop_to_image, dtype=np.float64)), points_img)


def overlay_tile(crop: np.ndarray, gt: np.ndarray, pred: np.ndarray, label: str,
                 scale: int = OVERLAY_SCALE) -> np.ndarray:
    """One face: its crop enlarged, ground truth (green) and prediction (red) joined by a line."""
    import cv2
    side = crop.shape[0] * scale
    tile = cv2.cvtColor(cv2.resize(crop, (side, side), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)

    lim = crop.shape[0]

    def at(p):  # crop pixel centre p -> tile, in 1/16 px (cv2 shift 4); far-off points drawn at the margin
        q = np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=-1.0), -1.0, lim)
        return (int(round(((q[0] + 0.5) * scale - 0.5) * 16)), int(round(((q[1] + 0.5) * scale - 0.5) * 16)))

    for g, p in zip(gt, pred):
        cv2.line(tile, at(g), at(p), (200, 200, 200), 1, cv2.LINE_AA, 4)
    for g in gt:
        cv2.circle(tile, at(g), 2 * 16, GT_COLOUR, -1, cv2.LINE_AA, 4)
    for p in pred:
        cv2.circle(tile, at(p), 2 * 16, PRED_COLOUR, -1, cv2.LINE_AA, 4)
    cv2.rectangle(tile, (0, side - 16), (side, side), (32, 32, 32), -1)
    cv2.putText(tile, label, (3, side - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (235, 235, 235), 1, cv2.LINE_AA)
    return tile


def overlay_order(face_errors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k best faces (lowest error first) and the k worst (highest first); ties by index."""
    e = np.asarray(face_errors, dtype=np.float64)
    order = np.argsort(e, kind="stable")
    k = min(k, len(e))
    return order[:k], order[::-1][:k] if k else order[:0]


def overlay_sheet(data: dict, pred_img: np.ndarray, face_errors: np.ndarray, name: str, k: int = 8) -> np.ndarray:
    """Contact sheet (BGR) of the k best and k worst faces of one model."""
    crops = crop_pixels(data["data"])
    gt = image_to_crop(np.asarray(data["landmarks_image"]).reshape(pred_img.shape), data["crop_to_image"])
    pred = image_to_crop(pred_img, data["crop_to_image"])
    best, worst = overlay_order(face_errors, k)
    side = crops.shape[1] * OVERLAY_SCALE

    def tiles(idx):
        return [overlay_tile(crops[i], gt[i], pred[i], f"#{i}  {100 * face_errors[i]:.2f}%") for i in idx]

    return contact_sheet([(f"{name}: best {len(best)} faces (green: ground truth, red: prediction; "
                           f"face mean error, % of d)", tiles(best)),
                          (f"{name}: worst {len(worst)} faces", tiles(worst))], cols=max(1, min(k, 8)), tile=side)


def write_overlays(path: Path, data: dict, pred_img: np.ndarray, face_errors: np.ndarray, name: str,
                   k: int = 8) -> Path:
    import cv2
    sheet = overlay_sheet(data, pred_img, np.asarray(face_errors), name, k)
    ok, buf = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write(Path(path), buf.tobytes())
    return Path(path)


def plot_overlays(run: Path, model: Path, deploy: Path, path: Path, name: str, split: str = "test",
                  output: str | None = None, k: int = 8) -> Path:
    """Run a model over a run's split and draw its best and worst faces (write_overlays)."""
    layout = run_layout(run)
    data = load_split(run, split)
    deploy = Path(deploy)
    output = output or deploy_output(deploy.stem)
    pred = predict_image(load_net(deploy, Path(model)), data, layout, output)
    return write_overlays(path, data, pred, np.asarray(score(pred, data, layout)["face_errors"]), name, k)


def overlay_path(out: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(out).with_name(f"{Path(out).name}_overlays_{safe}.png")


# ---- one evaluation's files ------------------------------------------------------------------

def write_evaluation(out: Path, doc: dict, layout: Layout, data: dict | None = None,
                     predictions: dict[str, np.ndarray] | None = None, overlays: int = 8) -> list[Path]:
    """<out>.json, <out>.md, <out>_ced.png and, given the split and each model's image-coordinate
    predictions, <out>_overlays_<model>.png. Returns the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_name(out.name + "_ced.png")]
    atomic_write(written[0], json.dumps(doc, indent=2) + "\n")
    atomic_write(written[1], evaluation_markdown(doc, layout))
    plot_ced(doc["results"], written[2], f"CED, layout {layout.name}, {doc['split']}")
    if data is not None and predictions and overlays > 0:
        for name, pred in predictions.items():
            r = doc["results"][name]
            written.append(write_overlays(overlay_path(out, name), data, pred, np.asarray(r["face_errors"]),
                                          f"{name} ({provenance_label(r)})", overlays))
    return written
