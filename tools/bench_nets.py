#!/usr/bin/env python3
"""Benchmark: ms per training iteration of each stage, and joint vs separate heads.

Prints, side by side in one run on the same random HDF5 batches:
  - step 1 (all layers trainable), step 2 (conv11..conv32 fixed), the head stage;
  - m separate single-head runs against one joint m-head run, same iterations.
Target (issue): joint at least 0.7 x m times faster than m separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mcl.caffe import netgen, solvers
from mcl.data.writers import write_random_train
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import BATCH_SIZE, STAGES


def time_solver(caffe, run: Path, tag: str, net, stage, iters: int, warmup: int) -> float:
    (run / f"{tag}.prototxt").write_text(netgen.to_text(net))
    s = solvers.solver(stage, f"{tag}.prototxt", f"snap_{tag}", scale=1.0, seed=0, snapshot=10**9)
    (run / f"{tag}_solver.prototxt").write_text(netgen.to_text(s))
    solver = caffe.SGDSolver(str(run / f"{tag}_solver.prototxt"))
    solver.step(warmup)
    t0 = time.perf_counter()
    solver.step(iters)
    return (time.perf_counter() - t0) / iters * 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="68", choices=sorted(LAYOUTS, key=int), help="layout (default 68)")
    ap.add_argument("--batch", type=int, default=BATCH_SIZE, help=f"batch size (default {BATCH_SIZE})")
    ap.add_argument("--iters", type=int, default=4, help="timed iterations per run (default 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    caffe.set_mode_cpu()
    layout = get_layout(args.layout)
    data = netgen.DataSpec(batch_size=args.batch)
    with tempfile.TemporaryDirectory(prefix="mcl-bench-") as tmp:
        run = Path(tmp)
        write_random_train(run, layout.n_points, max(4 * args.batch, 64), seed=0)
        cwd = os.getcwd()
        os.chdir(run)
        try:
            res = {}
            for key, stage in (("step1", "stage1"), ("step2", "stage2"), ("heads_joint", "heads")):
                net = (netgen.heads_net(layout, STAGES[stage], data=data) if stage == "heads"
                       else netgen.train_net(layout, STAGES[stage], data))
                res[key] = time_solver(caffe, run, key, net, STAGES[stage], args.iters, args.warmup)
                print(f"  {key:<12} {res[key]:9.1f} ms/iter", flush=True)
            separate = []
            for c in layout.cluster_names:
                net = netgen.heads_net(layout, STAGES["heads"], [c], data=data)
                separate.append(time_solver(caffe, run, f"head_{c}", net, STAGES["heads"], args.iters, args.warmup))
            res["heads_separate_total"] = float(sum(separate))
        finally:
            os.chdir(cwd)
    m = layout.m
    speedup = res["heads_separate_total"] / res["heads_joint"]
    print(f"\nMCL-Caffe training benchmark: layout {layout.name} (D={layout.feature_dim}, m={m}), "
          f"batch {args.batch}, {args.iters} timed iterations after {args.warmup} warm-up, CPU")
    print(f"{'stage':<34}{'ms/iter':>10}{'vs step 1':>11}")
    for key, label in (("step1", "step 1: all layers trainable"), ("step2", "step 2: conv11..conv32 fixed"),
                       ("heads_joint", f"heads: joint, {m} heads")):
        print(f"{label:<34}{res[key]:>10.1f}{res[key] / res['step1']:>10.2f}x")
    print(f"{f'heads: {m} separate runs, total':<34}{res['heads_separate_total']:>10.1f}")
    target = 0.7 * m
    print(f"\njoint vs separate: {speedup:.2f}x faster (target >= 0.7 x m = {target:.1f}x): "
          f"{'met' if speedup >= target else 'NOT met'}")
    if args.json:
        res.update(layout=layout.name, batch=args.batch, iters=args.iters, speedup=speedup, target=target)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
