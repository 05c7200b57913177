#!/usr/bin/env python3
"""The reproducibility audit of a run: the paper's ablations (METHOD §10) beside the paper's numbers.

  tools/audit.py perturb --run RUN --weights loss_weights/bm_eq5.json --delta 0.2 --seed 0 --out W
      Eq. 5 weights with +delta on a seeded random floor(n/2) landmarks, -delta on the rest
  tools/audit.py models --run RUN --out RUN/audit/models.json
      BM, WM and AM with the run's BatchNorm statistics and with Caffe's running ones
  tools/audit.py ablation NAME --run RUN --out RUN/audit/NAME.json
      one ablation: pre_bm, perturbation, single_head, simplified_am,
      weighting_simplified_am, occlusion, equal_budget (its models trained by Make)
  tools/audit.py report --run RUN
      RUN/audit/audit.json + audit.md + plots from the files above

`make audit` runs all of it; `make -j2 audit` trains independent ablations side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcl.caffe.caffemodel import ModelError
from mcl.evaluation import audit, audit_report
from mcl.evaluation.evaluate import EvalError
from mcl.records.lock import writer


def cmd_perturb(args, run: Path) -> None:
    plus = audit.perturb_file(run, Path(args.weights), args.delta, args.seed, Path(args.out))
    print(f"perturbed Eq. 5 weights (delta {args.delta:g}, +delta on landmarks {plus}) -> {args.out}")


def cmd_models(args, run: Path) -> None:
    for name, r in audit.score_models(run, args.split, Path(args.out)).items():
        print(f"{name:>14}: mean error {100 * r['inter_ocular']['mean_error']:.2f}%  "
              f"failure {100 * r['inter_ocular']['failure_rate']['0.10']:.1f}%  (BatchNorm statistics {r['bn_stats']})")


def cmd_ablation(args, run: Path) -> None:
    res = audit.run_ablation(run, args.name, args.seed, args.split, Path(args.out))
    print(f"{args.name}: expected {res['expected_direction']}: {'held' if res['direction_held'] else 'did not hold'}")


def cmd_report(args, run: Path) -> None:
    paths = audit_report.write(run, Path(args.out_dir) if args.out_dir else run / "audit",
                               speed_repeats=args.speed_repeats)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perturb", help="perturbed Eq. 5 weights (Section IV-C-2)")
    p.add_argument("--weights", required=True, help="Eq. 5 weights JSON (loss_weights/bm_eq5.json)")
    p.add_argument("--delta", type=float, required=True, help="the perturbation delta")
    p.add_argument("--seed", type=int, default=0, help="seed of the random half (default 0)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("models", help="BM, WM, AM under both BatchNorm-statistics settings")
    p.add_argument("--out", required=True)
    p = sub.add_parser("ablation", help="one ablation's numbers")
    p.add_argument("name", choices=audit.ABLATIONS)
    p.add_argument("--seed", type=int, default=0, help="seed of the occluded faces (default 0)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("report", help="audit.json + audit.md + plots")
    p.add_argument("--out-dir", help="default RUN/audit")
    p.add_argument("--speed-repeats", type=int, default=50, help="forward passes timed per net (default 50)")
    for p in sub.choices.values():
        p.add_argument("--run", required=True, help="run folder")
        p.add_argument("--split", default="test", help="split scored (default test)")
    args = ap.parse_args(argv)
    run = Path(args.run).resolve()
    try:
        with writer(run):
            {"perturb": cmd_perturb, "models": cmd_models, "ablation": cmd_ablation, "report": cmd_report}[args.cmd](args,
                                                                                                           run)
    except (audit.AuditError, EvalError, ModelError, ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
