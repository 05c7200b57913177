#!/usr/bin/env python3
"""Benchmark: Caffe and the torch engine side by side, ms per training iteration.

Stage 1 (all layers trainable), stage 2 (the first six convolutions fixed) and the
joint heads stage, generated for a scratch run as `make nets` writes them, on the same
random HDF5 batches; each engine in its own process with the same number of CPU
threads, the two taking turns of a few iterations each, never at once. Figures are
medians over the timed iterations. Also printed: the projected time of the paper's
whole schedule (SPEC 5, Algorithm 1's stages as mcl/method/stages.py sets them), with
the torch engine's one pass of the fixed layers over 300-W's training split counted.
Target: the torch engine at least 2.5x faster than Caffe on the CPU. With --device cuda
(or cuda:N) the torch engine is timed alone, with no Caffe process: throughput (a block
with one synchronisation) and latency, and the projected paper schedule.
The harness and how it times: mcl/engine/bench.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.engine import bench  # noqa: E402
from mcl.method.stages import BATCH_SIZE  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="68", help="layout (default 68)")
    ap.add_argument("--batch", type=int, default=BATCH_SIZE, help=f"batch size (default {BATCH_SIZE}, the paper's)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each engine (default 2)")
    ap.add_argument("--device", default="cpu", help="torch engine's device: cpu (default; beside Caffe) or cuda, cuda:N (alone)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed iterations at the start of each engine's turn (default 2)")
    ap.add_argument("--iters", type=int, default=12, help="timed iterations per engine and stage (default 12)")
    ap.add_argument("--block", type=int, default=4, help="timed iterations per turn (default 4)")
    ap.add_argument("--settle", type=float, default=0.5, help="pause before each turn, seconds (default 0.5)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    bench.compare_engines(args.layout, args.batch, args.threads, args.device, args.warmup, args.iters, args.block,
                          args.settle, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
