#!/usr/bin/env python3
"""The paper's experiment on real faces beside the paper's table (`make paper`).

  tools/paper_report.py --run runs/paper-mtfl --splits test net_rest net_rest_80 \
      --sweep runs/sweep-mtfl/sweep.json --out runs/paper-mtfl/paper

Scores BM, WM, AM and the equal-budget control of a trained run, and the peers' predictions
(tools/peers.py), on the test split and on extra test splits (data_prep/extra_test.py); gives the
paired per-face verdicts of the paper's claims, what the reduced pictures cost, the claims across
seeds from a sweep, the learning curve, the schedule, wall times and data checksums. Writes
OUT/report.md, report.json, eval_<split>.json (per-face errors), ced_<split>.png and curves.png.
The logic lives in mcl/evaluation/paper_report.py; the paper's figures in mcl/method/paper.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from mcl.data.readers import DataError
from mcl.data.splits import SplitError
from mcl.evaluation.evaluate import EvalError
from mcl.evaluation.paper_report import PaperReportError, write
from mcl.port import peers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="trained run folder (models/bm, wm, am, equal_budget)")
    ap.add_argument("--splits", nargs="+", default=["test"], help="splits scored (default test)")
    ap.add_argument("--sweep", help="a sweep.json of the same dataset (make sweep): the claims across seeds")
    ap.add_argument("--speed-repeats", type=int, default=0, help="forward passes timed per model on the test split "
                                                                  "(default 0: no timing)")
    ap.add_argument("--out", help="output folder (default RUN/paper)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "paper"
    try:
        doc = write(run, args.splits, out, Path(args.sweep) if args.sweep else None, args.speed_repeats,
                    getattr(peers, "MAPPINGS", None))
    except (PaperReportError, EvalError, SplitError, DataError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in doc["conclusions"]:
        print(f"- {line}")
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
