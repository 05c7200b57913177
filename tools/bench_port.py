#!/usr/bin/env python3
"""Forward speed of the ported model beside Caffe (`make bench-port`): single-core batch-1
latency for Caffe, OpenCV dnn, PyTorch and ONNX Runtime (fp32, fp32 folded, int8) in one
run, batch-64 throughput on 2 threads, the fp32 floor from the net's FLOP count and the
core's measured fp32 peak, and int8's accuracy cost on test faces; beside them dlib's 68-point ERT per face (where
`make setup-peers` installed it), our whole per-face cost (crop + forward + points back),
and the face detectors' cost per picture size.

Model: --prototxt/--caffemodel, else RUN/models/am.caffemodel, else the 68-point AM
net with random blobs (timings do not depend on training; int8's accuracy cost is
then measured on an untrained net and says little). Faces: RUN's val/test splits,
else a synthetic set prepared on the fly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.fileio import atomic_write
from mcl.port.bench import ENGINES, benchmark, markdown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prototxt", help="deploy net to time (with --caffemodel)")
    p.add_argument("--caffemodel", help="its blobs")
    p.add_argument("--run", help="run folder: models/am.caffemodel and data/{val,test} if present")
    p.add_argument("--rounds", type=int, default=5, help="turns every engine takes (default 5)")
    p.add_argument("--block", type=int, default=40, help="batch-1 forwards per turn (default 40)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--json", help="also write the full report here")
    args = p.parse_args(argv)
    if bool(args.prototxt) != bool(args.caffemodel):
        p.error("--prototxt and --caffemodel go together")
    engines = tuple(e for e in args.engines.split(",") if e)
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        p.error(f"unknown engine(s) {', '.join(bad)}")

    rep = benchmark(args.prototxt, args.caffemodel, args.run, args.rounds, args.block, engines=engines,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    print(markdown(rep))
    if args.json:
        atomic_write(args.json, json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
