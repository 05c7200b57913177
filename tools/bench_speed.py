#!/usr/bin/env python3
"""Speed as the paper measures it: the 5-, 29- and 68-point nets side by side with the paper's row.

  tools/bench_speed.py                       # deploy nets with random weights
  tools/bench_speed.py --weights 68=runs/ibug-68/models/am.caffemodel --deploy 68=runs/ibug-68/models/am_deploy.prototxt

Batch 1, forward only, every BLAS thread count forced to 1 and the timing pinned
to one core, in a child process (mcl/caffe/speed.py); the median of --repeats passes
with its spread, and `caffe time -phase TEST` beside it. Prints a markdown
table; --out writes it with the JSON of every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mcl.caffe import speed
from mcl.evaluation import report
from mcl.fileio import atomic_write


def pairs(values: list[str], what: str) -> dict:
    out = {}
    for v in values:
        key, eq, path = v.partition("=")
        if not eq or key not in ("5", "29", "68"):
            raise ValueError(f"{what} {v!r}: expected LAYOUT=FILE with LAYOUT 5, 29 or 68")
        if not Path(path).exists():
            raise ValueError(f"{path}: missing")
        out[key] = Path(path)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="5,29,68", help="layouts to time (default 5,29,68)")
    ap.add_argument("--weights", action="append", default=[], metavar="LAYOUT=CAFFEMODEL",
                    help="weights for a layout's net (default random fillers); repeatable")
    ap.add_argument("--deploy", action="append", default=[], metavar="LAYOUT=PROTOTXT",
                    help="deploy net for a layout (default the generated BM deploy net); repeatable")
    ap.add_argument("--repeats", type=int, default=speed.DEFAULT_REPEATS, help="timed forward passes per net")
    ap.add_argument("--warmup", type=int, default=speed.DEFAULT_WARMUP, help="untimed passes first")
    ap.add_argument("--caffe-iterations", type=int, default=speed.DEFAULT_CAFFE_ITERATIONS,
                    help="iterations of `caffe time` (0: skip it)")
    ap.add_argument("--core", type=int, help="core to pin to (default the first this process may use)")
    ap.add_argument("--out", help="output stem: writes <out>.md and <out>.json")
    args = ap.parse_args(argv)
    try:
        if args.repeats < 1 or args.warmup < 0 or args.caffe_iterations < 0:
            raise ValueError("--repeats must be at least 1, --warmup and --caffe-iterations not negative")
        layouts = tuple(x.strip() for x in args.layouts.split(",") if x.strip())
        table = speed.measure_layouts(layouts, pairs(args.weights, "--weights"), args.repeats, args.warmup,
                                      args.caffe_iterations, args.core, pairs(args.deploy, "--deploy"))
    except (ValueError, speed.SpeedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = report.speed_markdown(table)
    print(md)
    if args.out:
        out = Path(args.out)
        atomic_write(out.with_suffix(".md"), md)
        atomic_write(out.with_suffix(".json"), json.dumps(table, indent=2) + "\n")
        print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
