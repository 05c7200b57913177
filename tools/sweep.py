#!/usr/bin/env python3
"""The audit across seeds (`make sweep`, docs/CLUSTER.md): gathers the audits of run folders,
one per dataset and seed, into SWEEP/sweep.json, sweep.md and one plot per dataset.

  tools/sweep.py --out runs/sweep runs/sweep/synth-68-s0 runs/sweep/synth-68-s1 runs/sweep/synth-68-s2

Per model and metric: mean, sd and a 95% t interval across seeds; per claim of the audit: the
per-seed paired differences, their interval and a verdict (mcl/evaluation/sweep.py states the
tests). A seed whose errors are not finite is named and left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.evaluation import sweep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders, each with audit/audit.json")
    ap.add_argument("--out", required=True, help="the sweep's folder (sweep.json, sweep.md, sweep_<dataset>.png)")
    args = ap.parse_args(argv)
    try:
        written = sweep.write([Path(r) for r in args.runs], Path(args.out))
    except (OSError, sweep.SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
