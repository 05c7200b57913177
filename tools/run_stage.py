#!/usr/bin/env python3
"""Train one stage of Algorithm 1 in real Caffe, resuming from its last snapshot.

  stage1   pre-train BM (all layers, u_j = 1)                     -> models/bm.caffemodel
  stage2   weighting fine-tuning part 1 (conv11..conv32 fixed)     -> models/stage2.caffemodel
  stage3   weighting fine-tuning part 2 (all layers) -> WM          -> models/wm.caffemodel
  heads    multi-center fine-tuning, all heads jointly             -> models/heads.caffemodel
  heads --separate   one run per head (head_<cluster>)             -> models/heads_separate.json
  pre_bm   the pre-BM ablation (pool4 + fc5 + fc6)                 -> models/pre_bm.caffemodel

With --loss-weights the stage's net gets those u_j (Eq. 5 or Eq. 9) first.
With --engine torch the same net and solver train in PyTorch with Caffe's numerics
(mcl/engine; --device cuda on a GPU); the products are the same Caffe files.
The full Caffe log goes to <run>/logs/<stage>.log; progress is shown as a bar.
Interrupted (Ctrl-C or killed), the next run resumes from the latest snapshot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.caffe import (  # noqa: E402
    bnstats,
    caffemodel,
    reweight,  # noqa: E402
)
from mcl.caffe.runfiles import derive, run_layout  # noqa: E402
from mcl.caffe.train import SNAPSHOT_RE, StageError, StageSpec, run_stage, snapshots  # noqa: E402
from mcl.fileio import atomic_write  # noqa: E402
from mcl.run import manifest  # noqa: E402
from mcl.run.provenance import engine_record  # noqa: E402
from mcl.run.verify import check_stage_inputs  # noqa: E402

DEFAULT_OUT = {"stage1": "bm", "stage2": "stage2", "stage3": "wm", "heads": "heads", "pre_bm": "pre_bm",
               "equal_budget": "equal_budget", "warmup": "warmup"}


def rewrite_weights(net_path: Path, weights_path: Path) -> None:
    changes = reweight.rewrite_file(net_path, weights_path)
    print(reweight.change_table(changes, limit=8))
    print(f"loss weights of {net_path.name} set from {weights_path}")


def fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(manifest.sha256(p).encode())
    return h.hexdigest()


def prepare_snapshots(spec: StageSpec, inputs: list[Path]) -> None:
    """Snapshots made from other inputs (another init model, other weights) are discarded."""
    fp = fingerprint(inputs) + ("" if spec.engine == "caffe" else f" engine={spec.engine} device={spec.device}")
    stamp = spec.snapshot_prefix.parent / f"{spec.name}.inputs"
    if stamp.exists() and stamp.read_text() != fp:
        for _, state in snapshots(spec):
            state.unlink(missing_ok=True)
            state.with_suffix(".caffemodel").unlink(missing_ok=True)
        print(f"[{spec.name}] inputs changed since the last snapshots: starting afresh")
    atomic_write(stamp, fp)


def train_one(run: Path, name: str, init: Path | None, out: Path, weights: Path | None, stage: str,
              bn_stats: str = bnstats.DEFAULT, bn_batches: int = bnstats.DEFAULT_BATCHES,
              engine: str = "caffe", device: str = "cpu", warmup: Path | None = None) -> dict:
    net_path = run / "nets" / f"{name}_train.prototxt"
    solver_path = run / "solvers" / f"{name}_solver.prototxt"
    for p in (net_path, solver_path):
        if not p.exists():
            raise StageError(f"{p}: missing (generate the run's nets with `make nets`)")
    if weights is not None:
        rewrite_weights(net_path, weights)
    # Caffe's model goes to <out>.raw.caffemodel; the statistics step makes <out> from it.
    raw = bnstats.raw_path(out)
    spec = StageSpec(run, name, init, raw, engine, device)
    trained_by = engine_record(engine, device)
    inputs = [solver_path, net_path] + ([init] if init else []) + ([warmup, warmup.with_suffix(".caffemodel")]
                                                                    if warmup else [])
    settings = manifest.solver_settings(solver_path)
    data_manifest = run / "data" / "manifest.json"  # the training data, where data_prep wrote them
    raw_inputs = inputs + ([weights] if weights else []) + ([data_manifest] if data_manifest.exists() else [])
    if manifest.is_current(run, raw, raw_inputs) and \
            (manifest.entry(run, raw) or {}).get("engine", "caffe") == engine:  # only the statistics step again
        e = manifest.entry(run, raw)
        summary, wall = {"resumed_from": e.get("resumed_from_iter", 0), "last": {"loss": e.get("final_loss")}}, 0.0
        print(f"[{name}] Caffe's model {raw.name} is current for these inputs: training skipped")
    else:
        prepare_snapshots(spec, inputs)
        if warmup is not None and not snapshots(spec):
            seed_from_warmup(spec, warmup)
        t0 = time.time()
        summary = run_stage(spec)
        wall = time.time() - t0
        manifest.record(run, raw, stage, settings, raw_inputs, wall, resumed_from_iter=summary["resumed_from"],
                        final_loss=(summary["last"] or {}).get("loss"), log=str(spec.log_path.relative_to(run)),
                        bn_stats="running", **trained_by, **({"warmup": str(warmup.relative_to(run))} if warmup else {}))
    last = summary["last"] or {}
    if last.get("loss") is not None and not math.isfinite(last["loss"]):
        print(f"[{name}] WARNING: training diverged: the loss is {last['loss']} at the end of the stage "
              f"(see {spec.log_path}); its model's predictions will not be finite", file=sys.stderr)
    t1 = time.time()
    stats = bnstats.finish_stage(run, net_path, raw, out, bn_stats, bn_batches)
    entry = manifest.record(run, out, stage, settings, raw_inputs + [raw],
                            wall + time.time() - t1, resumed_from_iter=summary["resumed_from"],
                            final_loss=last.get("loss"), log=str(spec.log_path.relative_to(run)), **stats,
                            **trained_by)
    how = (f"BatchNorm statistics recomputed over {stats['bn_batches']} training batches" if bn_stats == "recomputed"
           else "Caffe's running BatchNorm statistics kept")
    print(f"[{name}] done in {wall:.1f} s, {how} ({time.time() - t1:.1f} s) -> {out}")
    return entry


def seed_from_warmup(spec: StageSpec, state: Path) -> None:
    """Step 1 resumes from the warm-up's solverstate (SPEC 5): it becomes the stage's first snapshot,
    so the runner resumes from it as from any snapshot (weights, momentum, iteration, data position)."""
    from mcl.caffe.proto import caffe_pb2
    it = int(SNAPSHOT_RE.search(state.name).group(1))
    solver_state = caffe_pb2.SolverState()
    solver_state.ParseFromString(state.read_bytes())
    model = spec.snapshot_prefix.with_name(f"{spec.snapshot_prefix.name}_iter_{it}.caffemodel")
    atomic_write(model, state.with_suffix(".caffemodel").read_bytes())
    solver_state.learned_net = str(model.relative_to(spec.run))
    atomic_write(model.with_suffix(".solverstate"), solver_state.SerializeToString())
    print(f"[{spec.name}] starting from the warm-up's solverstate at iteration {it} ({state.name})")


def warmup_state(run: Path) -> Path:
    """The warm-up's final solverstate (a finished warm-up keeps only its last snapshot)."""
    found = snapshots(StageSpec(run, "warmup", None, run / "models" / "warmup.caffemodel"))
    if not found:
        raise StageError(f"{run / 'snapshots'}: no warm-up snapshot (train --stage warmup first)")
    return found[0][1]


def heads_init(run: Path, wm: Path, clusters, name: str = "heads") -> Path:
    """WM with its shape layer copied to every head (SPEC 5: heads start from WM's layer)."""
    path = run / "snapshots" / f"{name}_init.caffemodel"
    caffemodel.save(caffemodel.init_heads(caffemodel.load(wm), clusters), path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (holds data/, nets/, solvers/)")
    ap.add_argument("--stage", required=True, choices=sorted(DEFAULT_OUT), help="stage to train")
    ap.add_argument("--init", help="caffemodel to start from (the previous stage's model)")
    ap.add_argument("--loss-weights", help="weights JSON (Eq. 5 for stage2/3, Eq. 9 for heads)")
    ap.add_argument("--separate", action="store_true", help="heads: one run per head instead of one joint run")
    ap.add_argument("--warmup", action="store_true",
                    help="stage1: start from the warm-up's final solverstate (SPEC 5's optional warm-up; train "
                         "--stage warmup first)")
    ap.add_argument("--name", help="train the stage on a named copy of its net and solver (nets/NAME_train.prototxt, "
                                   "snapshots/NAME): an ablation with its own loss weights and snapshots")
    ap.add_argument("--out", help="output caffemodel (default models/<bm|stage2|wm|heads|pre_bm>.caffemodel)")
    ap.add_argument("--bn-stats", choices=bnstats.SETTINGS, default=bnstats.DEFAULT,
                    help="BatchNorm statistics of the product: recomputed with the final weights over training "
                         "batches (default), or running (Caffe's raw running averages); the raw model is kept "
                         "beside it as <out>.raw.caffemodel")
    ap.add_argument("--bn-batches", type=int, default=bnstats.DEFAULT_BATCHES,
                    help=f"training batches the statistics are recomputed over (default {bnstats.DEFAULT_BATCHES}, "
                         "at most one pass over the split)")
    ap.add_argument("--engine", choices=("caffe", "torch"), default="caffe",
                    help="caffe (the reference, default) or torch: the same net and solver in PyTorch with "
                         "Caffe's numerics (mcl/engine)")
    ap.add_argument("--device", default="cpu", help="torch engine: cpu (default), cuda or cuda:N")
    args = ap.parse_args(argv)
    if args.engine == "caffe" and args.device != "cpu":
        ap.error("the Caffe engine here is a CPU build: use --engine torch for --device " + args.device)
    bn = dict(bn_stats=args.bn_stats, bn_batches=args.bn_batches, engine=args.engine, device=args.device)
    run = Path(args.run).resolve()
    init = Path(args.init).resolve() if args.init else None
    weights = Path(args.loss_weights).resolve() if args.loss_weights else None
    try:
        if init is not None and not init.exists():
            raise StageError(f"{init}: the model this stage starts from is missing")
        check_stage_inputs(run, run / "nets" / f"{args.stage}_train.prototxt", [p for p in (init, weights) if p],
                           Path(args.out) if args.out else None)
        name = args.name or args.stage
        if args.name:
            if args.separate:
                raise StageError("--name and --separate cannot be combined")
            derive(run, args.stage, args.name)
        if args.stage != "heads":
            out = Path(args.out) if args.out else run / "models" / f"{DEFAULT_OUT[args.stage]}.caffemodel"
            if args.warmup and args.stage != "stage1":
                raise StageError("--warmup: only step 1 (stage1) starts from the warm-up")
            train_one(run, name, init, out.resolve(), weights, args.stage, **bn,
                      warmup=warmup_state(run) if args.warmup else None)
            return 0
        if init is None:
            raise StageError("heads: --init (the weighting model WM) is required")
        layout = run_layout(run)
        hinit = heads_init(run, init, layout.cluster_names, name)
        if not args.separate:
            out = Path(args.out) if args.out else run / "models" / "heads.caffemodel"
            train_one(run, name, hinit, out.resolve(), weights, "heads", **bn)
            return 0
        models = {}
        for c in layout.cluster_names:
            out_c = run / "models" / f"head_{c}.caffemodel"
            if not out_c.exists():
                train_one(run, f"head_{c}", hinit, out_c, weights, "heads", **bn)
            models[c] = str(out_c.relative_to(run))
        listing = Path(args.out) if args.out else run / "models" / "heads_separate.json"
        atomic_write(listing, json.dumps({"layout": layout.name, "heads": models}, indent=2) + "\n")
        print(f"[heads] {len(models)} separate head runs -> {listing}")
    except (StageError, ValueError, OSError) as exc:  # bnstats.StatsError and ModelError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the next run resumes from the last snapshot", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
