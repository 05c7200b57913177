#!/usr/bin/env python3
"""A peer on the same faces (`make peers`): dlib's 68-point shape predictor on a run's test split,
in the split's own boxes and in dlib's detector's, written as predictions files that
tools/evaluate.py scores beside our models:

  tools/peers.py --run runs/demo
  tools/evaluate.py --run runs/demo --predictions dlib=runs/demo/peers/dlib_box.txt --model AM=...

Needs dlib and its model (`make setup-peers`: the dlib-bin wheel and Debian's libdlib-data).
The model is trained on 300-W, whose licence excludes commercial use (docs/PORT.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.port.peers import DLIB_MODEL, PeerError, run_dlib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder with prepared data (RUN/data)")
    p.add_argument("--model", default=DLIB_MODEL, help=f"dlib shape predictor (default {DLIB_MODEL})")
    p.add_argument("--out", help="folder for dlib_box.txt, dlib_detector.txt, peers.json (default RUN/peers)")
    p.add_argument("--upsample", type=int, default=1, help="dlib detector: pyramid levels up (default 1)")
    args = p.parse_args(argv)
    try:
        run_dlib(args.run, args.model, args.out, args.upsample)
    except PeerError as exc:
        print(f"peers: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
