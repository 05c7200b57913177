#!/usr/bin/env python3
"""Evaluate models and predictions files on a split: mean error, failure rate, AUC, CED, per-cluster errors, speed.

  tools/evaluate.py --run RUN --model bm=models/bm.caffemodel --model am=models/am.caffemodel
  tools/evaluate.py --run RUN --predictions authors=ibug_results.txt --model AM=models/am.caffemodel:models/am_deploy.prototxt

Errors are in original-image coordinates, normalised by the inter-ocular
distance of METHOD §7 (and, labelled as such, by the outer eye corners where the
layout has them). A predictions file holds one face per line, in the order of
the split's faces, 2n numbers x1 y1 x2 y2 ... in original-image pixels,
1-based like .pts files (--coords-base 0 for 0-based files). Speed is the
forward pass at batch 1, one BLAS thread, one pinned core, as the paper
measures it (mcl/caffe/speed.py). Writes <out>.json, <out>.md (a readable report),
<out>_ced.png and <out>_overlays_<name>.png (best and worst faces). Bad input
exits 2 naming the file (and line); nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from mcl.caffe.caffemodel import ModelError
from mcl.evaluation import report
from mcl.evaluation.evaluate import EvalError
from mcl.evaluation.job import parse_model, parse_named_file, run_evaluation
from mcl.evaluation.predictions import write_predictions
from mcl.method.layouts import get_layout
from mcl.records import manifest
from mcl.records.verify import check_creatable


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CAFFEMODEL[:DEPLOY[:OUTPUT]]",
                    help="a model to evaluate (deploy default nets/deploy.prototxt, output default shape_pred); "
                         "paths relative to the run; repeatable")
    ap.add_argument("--predictions", action="append", default=[], metavar="NAME=FILE",
                    help="a predictions file to score like a model; repeatable, mixable with --model")
    ap.add_argument("--coords-base", type=int, choices=(0, 1), default=1,
                    help="coordinate base of predictions files read and written (default 1, like .pts)")
    ap.add_argument("--write-predictions", metavar="DIR",
                    help="also write each model's predictions as DIR/<name>.txt in the predictions-file format")
    ap.add_argument("--split", default="test", help="split to evaluate (default test)")
    ap.add_argument("--speed-repeats", type=int, default=30,
                    help="forward passes timed per model (default 30; 0: no timing)")
    ap.add_argument("--overlays", type=int, default=8,
                    help="best and worst faces drawn per result (default 8; 0: no overlays)")
    ap.add_argument("--out", help="output stem (default <run>/eval/<split>)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    out = Path(args.out) if args.out else run / "eval" / args.split
    t0 = time.time()
    try:
        if args.speed_repeats < 0 or args.overlays < 0:
            raise EvalError("--speed-repeats and --overlays must not be negative")
        check_creatable(out.parent)  # an output that cannot be written stops us before any work
        models = [parse_model(spec, run) for spec in args.model]
        files = [parse_named_file(spec) for spec in args.predictions]
        ev = run_evaluation(run, args.split, models, files, args.coords_base, args.speed_repeats)
        layout = get_layout(ev.doc["layout"])
    except (EvalError, ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = report.write_evaluation(out, ev.doc, layout, ev.data, ev.predictions, args.overlays)
    if args.write_predictions:
        for m in models:
            written.append(write_predictions(Path(args.write_predictions) / f"{m.name}.txt", ev.predictions[m.name],
                                             args.coords_base))
    settings = {"split": args.split, "test_crop": ev.doc["protocol"]["test_crop"], "coords_base": args.coords_base,
                "speed_repeats": args.speed_repeats}
    manifest.record(run, out.with_suffix(".json"), "evaluate", settings, ev.inputs, time.time() - t0)
    print(report.evaluation_markdown(ev.doc, layout))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
