#!/usr/bin/env python3
"""The reproducibility audit of a run: the paper's ablations (SPEC 10) beside the paper's numbers.

  tools/audit.py perturb --run RUN --weights weights/bm_eq5.json --delta 0.2 --seed 0 --out W
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
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.caffe.caffemodel import ModelError  # noqa: E402
from mcl.caffe.runfiles import run_layout  # noqa: E402
from mcl.evaluation import audit  # noqa: E402
from mcl.evaluation.evaluate import EvalError  # noqa: E402
from mcl.fileio import atomic_write  # noqa: E402
from mcl.method import loss_weights  # noqa: E402
from mcl.run import manifest  # noqa: E402


def cmd_perturb(args, run: Path) -> None:
    layout = run_layout(run)
    src = Path(args.weights)
    doc = loss_weights.load(src)
    if doc["layout"] != layout.name or "weights" not in doc:
        raise ValueError(f"{src}: not Eq. 5 weights of layout {layout.name} (the run's layout)")
    u = doc["weights"]
    w, plus = audit.perturb_weights(u, args.delta, args.seed)
    out = loss_weights.document(layout, "eq5", weights=w, source=str(src), errors=doc.get("errors"),
                                perturbation={"delta": args.delta, "seed": args.seed, "plus": [j + 1 for j in plus],
                                              "floor": audit.PERTURBATION_FLOOR})
    atomic_write(Path(args.out), json.dumps(out, indent=2) + "\n")
    manifest.record(run, Path(args.out).resolve(), "audit-perturb", {"delta": args.delta, "seed": args.seed}, [src], 0.0)
    print(f"perturbed Eq. 5 weights (delta {args.delta:g}, +delta on landmarks {[j + 1 for j in plus]}) -> {args.out}")


def cmd_models(args, run: Path) -> None:
    layout = run_layout(run)
    data = audit.load_test(run, args.split)
    out = {s.name: audit.score(run, s, data, layout) for s in audit.main_models(run)}
    _write(run, Path(args.out), {"split": args.split, "models": out}, "audit-models",
           [run / s.model for s in audit.main_models(run)])
    for name, r in out.items():
        print(f"{name:>14}: mean error {100 * r['inter_ocular']['mean_error']:.2f}%  "
              f"failure {100 * r['inter_ocular']['failure_rate']['0.10']:.1f}%  (BatchNorm statistics {r['bn_stats']})")


def cmd_ablation(args, run: Path) -> None:
    layout = run_layout(run)
    res = audit.ablation(run, args.name, layout, args.seed, args.split)
    res["split"] = args.split
    models = sorted({p for p in _model_paths(res)})
    _write(run, Path(args.out), res, f"audit-{args.name}", [run / m for m in models])
    print(f"{args.name}: expected {res['expected_direction']}: {'held' if res['direction_held'] else 'did not hold'}")


def _model_paths(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("model"), str) and obj["model"].endswith(".caffemodel"):
            yield obj["model"]
        for v in obj.values():
            yield from _model_paths(v)


def _write(run: Path, out: Path, doc: dict, stage: str, inputs: list[Path]) -> None:
    t0 = time.time()
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    manifest.record(run, out.resolve(), stage, {}, [p for p in inputs if p.exists()], time.time() - t0)


def cmd_report(args, run: Path) -> None:
    from mcl.evaluation import audit_report
    paths = audit_report.write(run, Path(args.out_dir) if args.out_dir else run / "audit",
                               speed_repeats=args.speed_repeats)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perturb", help="perturbed Eq. 5 weights (Section IV-C-2)")
    p.add_argument("--weights", required=True, help="Eq. 5 weights JSON (weights/bm_eq5.json)")
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
        {"perturb": cmd_perturb, "models": cmd_models, "ablation": cmd_ablation, "report": cmd_report}[args.cmd](args, run)
    except (audit.AuditError, EvalError, ModelError, ValueError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
