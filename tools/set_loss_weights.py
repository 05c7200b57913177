#!/usr/bin/env python3
"""Rewrite the loss_weight fields of a net's Eq. 4 loss layers from a weights file.

The weights file is the JSON written by tools/compute_weights.py (or by hand):
layout, n_points, and either "weights" (one u_j per landmark, for the weighting
stages) or "clusters" (one vector per cluster, for the multi-center heads).
A file whose layout or landmark count does not match the net is refused.
"""

from __future__ import annotations

import argparse
import sys

from mcl.caffe import reweight


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("net", help="net prototxt with Eq. 4 loss layers")
    ap.add_argument("weights", help="weights JSON")
    ap.add_argument("-o", "--out", help="output prototxt (default: rewrite NET in place)")
    ap.add_argument("--rows", type=int, default=12, help="rows of the old/new table to print (default 12)")
    args = ap.parse_args(argv)
    out = args.out or args.net
    try:
        changes = reweight.rewrite_file(args.net, args.weights, out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(reweight.change_table(changes, args.rows))
    print(f"rewrote {len(changes)} loss weights of {args.net} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
