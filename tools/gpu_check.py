#!/usr/bin/env python3
"""`make gpu-check`: the torch engine on a device, checked against the CPU step by step, and timed.

Stage 1, stage 2 and the joint heads (68 points, batch 64) train --steps iterations on the CPU
and on --device from the same iteration-0 model (the engine's own seeded fillers); it checks
the per-step losses (1e-4 relative) and every blob against the CPU, that two runs on the device
give the same bits, that a run killed and resumed from a snapshot equals the uninterrupted run,
that snapshots restore across devices, and that every tensor is on the device; then it times
the three stage types (ms per iteration: throughput and latency) and projects the paper's
68-point schedule (180k stage-1 + 3 x 60k iterations).

  python3 tools/gpu_check.py --device cuda --json gpu-check.json
  python3 tools/gpu_check.py --device cpu --steps 5        (the same checks on the CPU against itself)

Needs Python, NumPy, h5py, protobuf and PyTorch only (no Caffe, no .venv): the project's tree
can be carried to a GPU machine. Exit status: 0 every check passed, 1 one failed, 2 bad input
(a device that is not there). The checks and their tolerances: mcl/engine/gpu_check.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.engine.gpu_check import gpu_check  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="device under test: cuda (default), cuda:N or cpu")
    ap.add_argument("--steps", type=int, default=20, help="iterations per stage and run (default 20)")
    ap.add_argument("--time-steps", type=int, help="iterations per timed block (default: --steps)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    args = ap.parse_args(argv)
    return gpu_check(args.device, args.steps, args.json, threads=args.threads, time_steps=args.time_steps)


if __name__ == "__main__":
    sys.exit(main())
