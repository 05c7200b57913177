#!/usr/bin/env python3
"""Apply the method to a second architecture (the paper's Section IV-E): Algorithm 1 in PyTorch
(mcl.method.pytorch.algorithm1) on a run's data, scored like the audit, its AM exported to ONNX.

  tools/audit_model.py --run runs/demo --model mobilenet_v2_0.5 --threads 1
  tools/audit_model.py --run runs/ibug-68 --model mobilenet_v2 --device cuda --scale 0.1

Reads RUN/data (train, val, test) and, where they exist, the run's Caffe products to score beside it.
Writes RUN/audit_model/<model>/report.md, report.json, am.pt, am.onnx and am.onnx.json (the model
card tools/predict.py reads). Schedule, scale and batch default to the run's (RUN/run.json).
Bad input (no such run folder or split, an unknown model or schedule, no GPU for cuda) exits 2.
"""

from __future__ import annotations

import argparse
import sys

from mcl.data.splits import SplitError
from mcl.evaluation.audit_model import AuditModelError
from mcl.method.backbones import ARCHITECTURES, BackboneError
from mcl.method.pytorch import LayoutMismatchError, ModelError
from mcl.port.reading import PortError
from mcl.port.torch_export import audit_and_export


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder with prepared data (make data)")
    p.add_argument("--model", required=True, help=f"architecture: {', '.join(ARCHITECTURES)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--schedule", help="paper (scaled by --scale) or a named schedule such as demo (default: the run's)")
    p.add_argument("--scale", type=float, help="schedule scale (default: the run's)")
    p.add_argument("--batch", type=int, help="batch size (default: the run's, else 64)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", help="output folder (default RUN/audit_model/<model>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    try:
        doc, paths = audit_and_export(args.run, args.model, args.device, args.scale, args.schedule, args.seed,
                                      args.batch, args.threads, args.out, None if args.quiet else print)
    except (AuditModelError, SplitError, BackboneError, ModelError, LayoutMismatchError, PortError) as exc:
        print(f"audit_model: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    n = doc["numbers"]
    print("audit_model: " + ", ".join(f"{k} {100 * n[k]['inter_ocular']['mean_error']:.2f}%" for k in n)
          + f"; {1000 * doc['time_per_iteration_s']:.0f} ms per stage-1 iteration; {doc['wall_time_s']:.0f} s")
    print("audit_model: wrote " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
