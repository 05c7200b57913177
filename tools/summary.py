#!/usr/bin/env python3
"""The closing summary of a run (`make demo` prints it): BM, WM and AM mean error and failure
rate, AM's time per face in Caffe and ONNX Runtime on one core, the audit's verdict on the
BM > WM > AM ordering, the wall time of every stage, and where the reports and models are.
Writes RUN/summary.json and RUN/summary.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mcl.evaluation import summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (eval/test.json, audit/audit.json)")
    ap.add_argument("--onnx", help="the ported AM (timed on one core)")
    ap.add_argument("--photo", help="tools/predict.py's JSON of a real photo aligned by the in-box model")
    args = ap.parse_args(argv)
    run = Path(args.run)
    try:
        summary.write(run, Path(args.onnx) if args.onnx else None, Path(args.photo) if args.photo else None)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {run / 'summary.json'} and {run / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
