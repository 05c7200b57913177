#!/usr/bin/env python3
"""Per-landmark loss weights from a model's validation errors.

  --eq 5  after BM: u_j = n b_j / sum_k b_k (Eq. 5), b_j = landmark j's mean
          normalised validation error under BM;
  --eq 9  after WM: for each cluster P_i, u_P = alpha u_Q with group totals of
          Eq. 7-8, spread inside each group in proportion to WM's errors (Eq. 9).
Writes the weights JSON read by tools/set_loss_weights.py and tools/run_stage.py,
and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.evaluation.weighting import write_weights
from mcl.method.stages import ALPHA
from mcl.records.lock import writer
from mcl.records.verify import check_creatable


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (data/val.txt, nets/deploy.prototxt)")
    ap.add_argument("--model", required=True, help="caffemodel to measure (BM for Eq. 5, WM for Eq. 9)")
    ap.add_argument("--eq", type=int, choices=(5, 9), required=True, help="which equation")
    ap.add_argument("--alpha", type=float, default=ALPHA, help=f"Eq. 6 alpha (default {ALPHA:g})")
    ap.add_argument("--split", default="val", help="split the errors come from (default val: Omega_v)")
    ap.add_argument("--out", required=True, help="weights JSON to write")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        check_creatable(out.parent)  # an output that cannot be written stops us first
        with writer(Path(args.run)):
            doc, rows, layout = write_weights(Path(args.run), Path(args.model), args.eq, out, args.alpha, args.split)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    errors = doc["errors"]
    print(f"Eq. {args.eq} weights from {doc['faces']} {args.split} faces "
          f"(mean error {100 * doc['mean_error']:.2f}% of d):")
    names = [f"{j + 1:>7d}" for j in range(layout.n_points)]
    print(f"{'landmark':<17}" + "".join(names[:20]) + (" ..." if layout.n_points > 20 else ""))
    print(f"{'error % d':<17}" + "".join(f"{100 * e:7.2f}" for e in errors[:20]))
    for name, vec in rows:
        print(f"{'u ' + name:<17}" + "".join(f"{u:7.3f}" for u in vec[:20]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
