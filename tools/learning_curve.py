#!/usr/bin/env python3
"""A measured learning curve of one stage: test error every K iterations, with the BatchNorm
statistics recomputed at each point (as the stage's product would have them).

  tools/learning_curve.py --run runs/demo --stage stage1 --max-iter 1500 --stepsize 400 --every 100

Trains in Caffe on a private copy of the stage's solver (the run's own files and models are
not touched), writes <out>.json and <out>.png (default RUN/curves/<stage>). Used to choose
the demo's schedule (mcl/method/stages.py SCHEDULES).

With --snapshots it trains nothing: it scores the models a finished stage kept along the way
(KEEP_SNAPSHOTS=on, tools/run_stage.py --keep-snapshots) on the validation split, in either
engine's run, and reads the training loss from the stage's log:

  tools/learning_curve.py --run runs/mtfl-5 --stage stage1 --snapshots
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from mcl.evaluation import curves
from mcl.evaluation.evaluate import EvalError
from mcl.fileio import atomic_write


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (data/, nets/, solvers/)")
    ap.add_argument("--stage", default="stage1", help="stage whose net and solver are used (default stage1)")
    ap.add_argument("--init", help="caffemodel to start from (default: Caffe's fillers)")
    ap.add_argument("--snapshots", action="store_true",
                    help="score the stage's kept snapshots (snapshots/<stage>_curve/) on --split; train nothing")
    ap.add_argument("--split", default="val", help="--snapshots: the split scored (default val)")
    ap.add_argument("--max-iter", type=int, help="iterations to train (required without --snapshots)")
    ap.add_argument("--stepsize", type=int, help="learning-rate step (x gamma every N iterations; required without "
                                                  "--snapshots)")
    ap.add_argument("--base-lr", type=float, help="initial learning rate (default the stage's)")
    ap.add_argument("--every", type=int, default=100, help="score the model every N iterations (default 100)")
    ap.add_argument("--bn-batches", type=int, default=60, help="batches of the statistics step (default 60)")
    ap.add_argument("--out", help="output stem (default RUN/curves/<stage>)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    out = Path(args.out) if args.out else run / "curves" / args.stage
    if not args.snapshots and (args.max_iter is None or args.stepsize is None):
        ap.error("--max-iter and --stepsize are required unless --snapshots is given")
    try:
        if args.snapshots:
            doc = curves.snapshot_curve(run, args.stage, args.split, args.bn_batches)
            atomic_write(out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
            curves.plot_snapshot_curves({args.stage: doc}, out.with_suffix(".png"), f"{run.name}: {args.stage}")
            print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
            return 0
        with tempfile.TemporaryDirectory(prefix="mcl-curve-") as tmp:
            doc = curves.learning_curve(run, args.stage, Path(tmp), args.max_iter, args.stepsize, args.every,
                                        base_lr=args.base_lr, init=Path(args.init) if args.init else None,
                                        bn_batches=args.bn_batches, log=print)
    except (EvalError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_write(out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    curves.plot(doc, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
