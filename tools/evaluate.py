#!/usr/bin/env python3
"""Evaluate models on a split: mean error, failure rate, AUC, CED, per-cluster errors, speed.

  tools/evaluate.py --run RUN --model bm=models/bm.caffemodel --model am=models/am.caffemodel

Errors are in original-image coordinates, normalised by the inter-ocular
distance of SPEC 7 (and, labelled as such, by the outer eye corners where the
layout has them). Speed is the forward pass at batch 1 on one thread, as the
paper measures it. Writes <out>.json, <out>.md (a readable report) and
<out>_ced.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the paper's single-core speed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mcl import bnstats, manifest, netgen  # noqa: E402
from mcl.caffemodel import ModelError  # noqa: E402
from mcl.evaluate import EvalError, ced, evaluate_model, load_net, load_split  # noqa: E402
from mcl.fileio import atomic_write  # noqa: E402
from mcl.runfiles import run_layout  # noqa: E402


def forward_ms(net, repeats: int) -> float:
    net.blobs["data"].reshape(1, 1, 50, 50)
    net.blobs["data"].data[...] = 0
    net.forward()
    t0 = time.perf_counter()
    for _ in range(repeats):
        net.forward()
    return (time.perf_counter() - t0) / repeats * 1000


def report(results: dict, layout, split: str) -> str:
    lines = [f"# Evaluation: layout {layout.name}, split {split}", "",
             "Errors in % of the inter-ocular distance (SPEC 7); failure: face mean error > 10% (and > 8%).", "",
             "BatchNorm statistics: `recomputed` for the final weights by the statistics step, `running` as "
             "Caffe's running averages left them (mcl/bnstats.py).", "",
             "| model | BatchNorm statistics | faces | mean error | failure 10% | failure 8% | AUC@0.08 | AUC@0.10 | ms/face | FPS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["inter_ocular"]
        lines.append(f"| {name} | {r.get('bn_stats') or 'unknown'} | {m['faces']} | {100 * m['mean_error']:.2f} | {100 * m['failure_rate']['0.10']:.2f} | "
                     f"{100 * m['failure_rate']['0.08']:.2f} | {m['auc']['0.08']:.4f} | {m['auc']['0.10']:.4f} | "
                     f"{r['speed_ms']:.2f} | {1000 / r['speed_ms']:.0f} |")
    lines += ["", "Per-cluster mean error (%):", "",
              "| model | " + " | ".join(layout.cluster_names) + " |", "|---" * (layout.m + 1) + "|"]
    for name, r in results.items():
        pc = r["inter_ocular"]["per_cluster"]
        lines.append(f"| {name} | " + " | ".join(f"{100 * pc[c]:.2f}" for c in layout.cluster_names) + " |")
    if layout.outer_corners is not None:
        lines += ["", "Normalised by the outer eye corners instead (as later papers report):", ""]
        for name, r in results.items():
            m = r["outer_corners"]
            lines.append(f"- {name}: mean error {100 * m['mean_error']:.2f}%, failure {100 * m['failure_rate']['0.10']:.2f}%")
    return "\n".join(lines) + "\n"


def plot_ced(results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    worst = max(float(np.percentile(r["face_errors"], 98)) for r in results.values())
    limit = max(0.15, float(np.ceil(worst * 20) / 20))  # at least 15%, else up to the 98th percentile
    for name, r in results.items():
        x, y = ced(np.asarray(r["face_errors"]), limit)
        ax.plot(100 * x, 100 * y, label=f"{name} ({100 * r['inter_ocular']['mean_error']:.2f}%)")
    ax.axvline(10, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="mean error (% of inter-ocular distance)", ylabel="faces (%)", title=title, xlim=(0, 100 * limit), ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=CAFFEMODEL[:DEPLOY]",
                    help="a model to evaluate (deploy default: nets/deploy.prototxt); repeatable")
    ap.add_argument("--split", default="test", help="split to evaluate (default test)")
    ap.add_argument("--speed-repeats", type=int, default=50, help="forward passes timed per model (default 50)")
    ap.add_argument("--out", help="output stem (default <run>/eval/<split>)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    out = Path(args.out) if args.out else run / "eval" / args.split
    t0 = time.time()
    try:
        layout = run_layout(run)
        data = load_split(run, args.split)
        results, inputs = {}, []
        for spec in args.model:
            if "=" not in spec:
                raise ValueError(f"--model {spec!r}: expected NAME=CAFFEMODEL[:DEPLOY]")
            name, rest = spec.split("=", 1)
            model, _, deploy = rest.partition(":")
            model_path = run / model  # an absolute path stays as it is
            deploy_path = run / (deploy or "nets/deploy.prototxt")
            net = load_net(deploy_path, model_path)
            output = "fc6" if "pre_bm" in deploy_path.name else netgen.SHAPE_LAYER
            r = evaluate_model(net, data, layout, output)
            r["speed_ms"] = forward_ms(net, args.speed_repeats)
            r["model"], r["deploy"] = str(model_path), str(deploy_path)
            r["bn_stats"] = bnstats.model_setting(run, model_path)
            results[name] = r
            inputs.append(model_path)
            print(f"{name:>8}: mean error {100 * r['inter_ocular']['mean_error']:.2f}%  "
                  f"failure {100 * r['inter_ocular']['failure_rate']['0.10']:.2f}%  {r['speed_ms']:.2f} ms/face")
    except (EvalError, ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"layout": layout.name, "split": args.split, "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "results": results}
    atomic_write(out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    atomic_write(out.with_suffix(".md"), report(results, layout, args.split))
    plot_ced(results, out.with_name(out.name + "_ced.png"), f"CED, layout {layout.name}, {args.split}")
    manifest.record(run, out.with_suffix(".json"), "evaluate", {"split": args.split}, inputs, time.time() - t0)
    print(report(results, layout, args.split))
    print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.md')}, {out.name}_ced.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
