#!/usr/bin/env python3
"""What a reduced precision costs on real faces: one model trained twice, the same seed, schedule and data,
once per precision (PRECISION=fp32 and PRECISION=bf16, each in its own run folder), scored on the same
test faces and compared face by face.

  make stage1 DATASET=mtfl DATA_ROOT=../shared/data/mtfl SCHEDULE=real-short RUN=runs/prec-fp32
  cp -r runs/prec-fp32/data runs/prec-bf16/     (the same crops: the data's checksums are compared)
  make stage1 DATASET=mtfl DATA_ROOT=../shared/data/mtfl SCHEDULE=real-short RUN=runs/prec-bf16 PRECISION=bf16
  benchmarks/precision_cost.py --reference runs/prec-fp32 --candidate runs/prec-bf16 --model models/bm.caffemodel \\
      --out runs/prec-bf16/precision_cost

For every split (--splits, default test: AFLW's 2,995 faces for MTFL) each model is evaluated as
tools/evaluate.py evaluates it (mcl.evaluation.evaluate: inter-ocular mean error in original-image
coordinates, METHOD §7), and the candidate's per-face errors are paired with the reference's on the same
faces (mcl.evaluation.audit.paired): the mean difference, its standard error over the faces, and whether
it is beyond PAIRED_Z (2) standard errors (the test faces' noise). The seed's noise is not in it: two
precisions from one seed. Also the relative cost, the difference over the reference's mean error, beside
the targets of the issue it answers (training: within 0.1 points; inference: at most 1% relative).

The precision each model was trained at is read from its run's manifest.json (the stage entry of the
model, `precision`; fp32 where a manifest predates the field). Writes <out>.json and <out>.md, atomically.
Bad input (a missing run, model or split; two runs whose data differ) exits 2 naming the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TRAIN_TARGET_POINTS = 0.1  # bf16 training: AFLW mean error within 0.1 points of fp32 (same seed and schedule)
INFER_TARGET_RELATIVE = 0.01  # reduced-precision inference: at most 1% relative accuracy cost


class CostError(ValueError):
    pass


def data_checksums(run: Path) -> dict:
    path = run / "data" / "manifest.json"
    if not path.is_file():
        raise CostError(f"{path}: missing (the run's data manifest)")
    doc = json.loads(path.read_text())
    return doc.get("outputs") or doc.get("files") or doc.get("checksums") or doc


def precision_of(run: Path, model: str) -> str:
    path = run / "manifest.json"
    if not path.is_file():
        return "unknown (no manifest.json)"
    doc = json.loads(path.read_text())
    entries = doc.get("artifacts", doc)
    for key in (model, model.replace(".caffemodel", ".raw.caffemodel")):
        entry = entries.get(key) if isinstance(entries, dict) else None
        if isinstance(entry, dict):
            return str(entry.get("precision") or entry.get("settings", {}).get("precision") or "fp32")
    return "unknown (model not in manifest.json)"


def compare(reference: Path, candidate: Path, model: str, splits: list[str]) -> dict:
    from mcl.caffe.forward import load_net
    from mcl.caffe.runfiles import run_layout
    from mcl.data.splits import load_split
    from mcl.evaluation.audit import PAIRED_Z, paired
    from mcl.evaluation.evaluate import evaluate_model

    for run in (reference, candidate):
        for rel in (model, "nets/deploy.prototxt"):
            if not (run / rel).is_file():
                raise CostError(f"{run / rel}: missing")
    if data_checksums(reference) != data_checksums(candidate):
        raise CostError(f"{candidate / 'data/manifest.json'}: the candidate's data differ from the reference's "
                        f"({reference / 'data/manifest.json'}); copy the reference's data folder")
    layout = run_layout(reference)
    out = {"reference": {"run": str(reference), "model": model, "precision": precision_of(reference, model)},
           "candidate": {"run": str(candidate), "model": model, "precision": precision_of(candidate, model)},
           "layout": layout.name, "paired_z": PAIRED_Z, "splits": {}}
    nets = {name: load_net(run / "nets/deploy.prototxt", run / model)
            for name, run in (("reference", reference), ("candidate", candidate))}
    for split in splits:
        try:
            data = load_split(reference, split)
        except (OSError, ValueError) as exc:
            raise CostError(f"{reference}: split {split!r}: {exc}") from None
        res = {name: evaluate_model(net, data, layout) for name, net in nets.items()}
        a = np.asarray(res["reference"]["face_errors"])
        b = np.asarray(res["candidate"]["face_errors"])
        p = paired(b, a)
        ref_mean = float(a.mean())
        out["splits"][split] = {
            "faces": int(len(a)), "reference_mean_error": ref_mean, "candidate_mean_error": float(b.mean()),
            "difference_points": 100 * p["mean_difference"], "standard_error_points": 100 * p["standard_error"],
            "beyond_noise": bool(p["better"] or p["worse"]),
            "relative": p["mean_difference"] / ref_mean if ref_mean else float("nan"),
            "within_train_target": bool(abs(100 * p["mean_difference"]) <= TRAIN_TARGET_POINTS),
            "within_inference_target": bool(p["mean_difference"] <= INFER_TARGET_RELATIVE * ref_mean),
            "failure_rate_0.10": {k: v["inter_ocular"]["failure_rate"]["0.10"] for k, v in res.items()},
        }
    return out


def report(doc: dict) -> str:
    r, c = doc["reference"], doc["candidate"]
    lines = [f"# Precision cost: {c['precision']} against {r['precision']}", "",
             f"Reference: {r['run']}/{r['model']} ({r['precision']}); candidate: {c['run']}/{c['model']} "
             f"({c['precision']}); layout {doc['layout']}. Mean error in % of the inter-ocular distance; the "
             f"difference is the candidate's minus the reference's, paired per face, with 2 standard errors of "
             f"the faces (the test faces' noise; one seed, so the seed's noise is not in it).", "",
             "| split | faces | reference | candidate | difference (2 SE) | relative | beyond noise | "
             f"within {TRAIN_TARGET_POINTS:g} points | failure >10% ref / cand |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split, s in doc["splits"].items():
        f = s["failure_rate_0.10"]
        lines.append(f"| {split} | {s['faces']} | {100 * s['reference_mean_error']:.2f} | "
                     f"{100 * s['candidate_mean_error']:.2f} | {s['difference_points']:+.3f} "
                     f"({2 * s['standard_error_points']:.3f}) | {100 * s['relative']:+.2f}% | "
                     f"{'yes' if s['beyond_noise'] else 'no'} | {'yes' if s['within_train_target'] else 'no'} | "
                     f"{100 * f['reference']:.1f}% / {100 * f['candidate']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--reference", required=True, help="run folder of the reference model (fp32)")
    ap.add_argument("--candidate", required=True, help="run folder of the model at the reduced precision")
    ap.add_argument("--model", default="models/bm.caffemodel", help="model path in each run (default BM)")
    ap.add_argument("--splits", default="test", help="splits, comma-separated (default test)")
    ap.add_argument("--out", help="output stem: <out>.json and <out>.md (default <candidate>/precision_cost)")
    args = ap.parse_args(argv)
    ref, cand = Path(args.reference), Path(args.candidate)
    try:
        for run in (ref, cand):
            if not run.is_dir():
                raise CostError(f"{run}: no such run folder")
        doc = compare(ref, cand, args.model, [s for s in args.splits.split(",") if s])
    except CostError as exc:
        print(f"precision_cost: {exc}", file=sys.stderr)
        return 2
    from mcl.fileio import atomic_write

    stem = Path(args.out) if args.out else cand / "precision_cost"
    text = report(doc)
    atomic_write(stem.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    atomic_write(stem.with_suffix(".md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
