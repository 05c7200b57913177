#!/usr/bin/env python3
"""BatchNorm statistics of a stage's model: recompute them, or measure what they change.

Every stage already ends with this step (tools/run_stage.py --bn-stats); the tool
lets a user apply it to any model of a run, or compare Caffe's raw model with the
stage's product:

  tools/bn_stats.py --run RUN --stage stage1 --compare
      the Eq. 4 loss on the first training batches in Caffe's TRAIN phase (batch
      statistics) and TEST phase (stored statistics), and the test-split mean
      error, for models/bm.raw.caffemodel (Caffe's running averages) and
      models/bm.caffemodel (the product);
  tools/bn_stats.py --run RUN --stage stage1 --model M --out OUT
      M with its statistics recomputed over the stage's training batches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mcl.caffe import bnstats
from mcl.caffe.caffemodel import ModelError
from mcl.evaluation import audit
from mcl.evaluation.evaluate import EvalError
from mcl.fileio import atomic_write
from mcl.method.stages import STAGES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--stage", required=True, choices=sorted(STAGES), help="the stage whose train net is used")
    ap.add_argument("--model", help="caffemodel (default models/<product of the stage>.caffemodel)")
    ap.add_argument("--compare", action="store_true", help="compare the raw model with the product")
    ap.add_argument("--out", help="write the model with recomputed statistics here")
    ap.add_argument("--batches", type=int,
                    help=f"training batches to recompute over (default {bnstats.DEFAULT_BATCHES}); with --compare, "
                         "batches the losses are averaged over (default 4)")
    ap.add_argument("--split", default="test", help="split of the mean error with --compare (default test)")
    ap.add_argument("--json", help="with --compare: also write the figures as JSON here")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    model = Path(args.model).resolve() if args.model else run / STAGES[args.stage].model
    if not args.compare and not args.out:
        ap.error("give --compare or --out")
    try:
        if args.out:
            r = bnstats.recompute(run, run / "nets" / f"{args.stage}_train.prototxt", model, Path(args.out),
                                  args.batches or bnstats.DEFAULT_BATCHES)
            print(f"wrote {args.out}: {r['bn_layers']} BatchNorm layers recomputed over {r['bn_batches']} batches")
        if args.compare:
            batches = args.batches or 4
            doc = audit.compare_bn_statistics(run, args.stage, model, batches, args.split)
            print(f"{args.stage}: Eq. 4 loss on the first {batches} training batches, {args.split} mean error")
            print(f"{'model':<16}{'TRAIN phase':>13}{'TEST phase':>12}{'ratio':>8}{'mean error %':>14}{'failure %':>11}")
            for label, r in doc["rows"].items():
                print(f"{label:<16}{r['train_phase']:>13.4f}{r['test_phase']:>12.4f}"
                      f"{r['test_phase'] / r['train_phase']:>8.2f}{100 * r['mean_error']:>14.2f}"
                      f"{100 * r['failure_rate']:>11.1f}")
            if args.json:
                atomic_write(Path(args.json), json.dumps(doc, indent=2) + "\n")
    except (bnstats.StatsError, EvalError, ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
