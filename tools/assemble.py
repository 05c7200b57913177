#!/usr/bin/env python3
"""Assemble the multi-center heads into one shape layer: the assembled model AM (Eq. 2-3).

Takes the joint heads model (models/heads.caffemodel) or the listing of separate
head runs (models/heads_separate.json), splices each cluster's x/y rows and
biases into one InnerProduct, writes AM's caffemodel and deploy prototxt, and
checks on sample inputs that AM's output for every landmark equals the output
of that landmark's head exactly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.caffe.caffemodel import ModelError
from mcl.evaluation.evaluate import EvalError
from mcl.method.stages import ASSEMBLED_MODEL
from mcl.run.assemble import assemble_run
from mcl.records.lock import writer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder")
    ap.add_argument("--heads", required=True, help="heads caffemodel (joint) or heads_separate.json")
    ap.add_argument("--out", help=f"AM caffemodel (default {ASSEMBLED_MODEL}; deploy beside it)")
    ap.add_argument("--check-samples", type=int, default=64, help="validation faces for the self-check (default 64)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    out = Path(args.out).resolve() if args.out else run / ASSEMBLED_MODEL
    try:
        with writer(run):
            done = assemble_run(run, Path(args.heads), out, args.check_samples)
    except (ModelError, EvalError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layout = done["layout"]
    print(f"AM: {layout.m} heads spliced into one InnerProduct "
          f"({2 * layout.n_points} x {layout.feature_dim}); self-check on {done['check']['samples']} inputs: exact")
    print(f"wrote {out} and {done['deploy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
