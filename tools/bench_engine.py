#!/usr/bin/env python3
"""Benchmark: Caffe and the torch engine side by side, ms per training iteration.

Stage 1 (all layers trainable), stage 2 (the first six convolutions fixed) and the
joint heads stage of the 68-point nets at batch 64, generated for a scratch run exactly as `make nets` writes them, on the
same random HDF5 batches. Each engine runs in its own process with the same
number of CPU threads (OpenBLAS for Caffe, intra-op threads for torch). The two
take turns of a few iterations each, so both see the same load on a shared
machine, and never run at once: one engine's idle threads must not take cores
from the other (OpenBLAS's threads spin for about 0.1 s after each call, so each
turn starts after a pause, and with untimed iterations). Figures are medians over
the timed iterations.

Also printed: the projected time of the paper's whole schedule (SPEC 5: 180k
iterations of stage 1 and 60k of stage 3 at stage 1's rate, 60k of stage 2, 60k
of the joint heads). Where the leading layers are fixed (stage 2, the heads) the
torch engine computes them once per training row (mcl/engine/trunk.py): that pass
is timed on its own and counted for the size of 300-W's training split.
Target: the torch engine at least 2.5x faster than Caffe on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("stage1", "stage2", "heads")
# Iterations counted at each stage's rate (SPEC 5): stage 3 trains every layer, as stage 1 does.
SCHEDULE = {"stage1": 180000 + 60000, "stage2": 60000, "heads": 60000}
TARGET = 2.5


def write_run(run: Path, layout_name: str, batch: int, rows: int) -> None:
    import h5py
    import numpy as np

    from mcl.caffe.runfiles import run_files
    from mcl.fileio import atomic_write
    from mcl.method.layouts import get_layout
    layout = get_layout(layout_name)
    for rel, text in run_files(layout, scale=1.0, seed=0, source="hdf5", batch_size=batch).items():
        atomic_write(run / rel, text)
    rng = np.random.default_rng(0)
    (run / "data").mkdir(parents=True, exist_ok=True)
    with h5py.File(run / "data" / "train.h5", "w") as f:
        f["data"] = rng.uniform(-1, 1, (rows, 1, 50, 50)).astype(np.float32)
        f["landmarks"] = rng.uniform(5, 45, (rows, 2 * layout.n_points)).astype(np.float32)
        f["inv_iod"] = np.full(rows, 1 / 20, np.float32)
    (run / "data" / "train.txt").write_text("data/train.h5\n")
    (run / "snapshots").mkdir(exist_ok=True)


def child(engine: str, run: Path, stage: str, device: str, threads: int) -> int:
    """One engine, stepped by the parent: a line `step` in, the iteration's ms out."""
    os.chdir(run)
    solver_path = run / "solvers" / f"{stage}_solver.prototxt"
    if engine == "caffe":
        import caffe
        caffe.set_mode_cpu()
        solver = caffe.SGDSolver(str(solver_path))

        def step():
            solver.step(1)
    else:
        import torch
        torch.set_num_threads(threads)
        from mcl.engine.solver import Solver
        solver = Solver(run, solver_path, device=device, fillers="torch")
        sync = torch.cuda.synchronize if solver.device.type == "cuda" else (lambda: None)
        if solver.trunk is not None:  # the one-off pass over the split, timed on its own
            t0 = time.perf_counter()
            solver.trunk.build()
            sync()
            trunk_ms = (time.perf_counter() - t0) * 1000.0
            print(f"trunk {trunk_ms / solver.feeds[0].rows:.4f}", flush=True)

        def step():
            solver.step()
            sync()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        print(f"{(time.perf_counter() - t0) * 1000.0:.3f} {(time.process_time() - c0) * 1000.0:.3f}", flush=True)
    return 0


def bench_stage(run: Path, stage: str, device: str, threads: int, warmup: int, iters: int,
                block: int = 4, settle: float = 0.5):
    """Wall-clock and process CPU ms of every timed iteration, per engine.

    The engines take turns in blocks: after a pause of `settle` seconds (so the idle engine's
    threads have stopped spinning: OpenBLAS's wait for work, about 0.1 s, would otherwise take
    a core from the other) each runs `warmup` untimed iterations, then `block` timed ones, as
    in a training run; the first engine alternates between turns.
    """
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               GLOG_minloglevel="2")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine's worker runs (mcl/engine/worker.py)
    procs = {}
    for engine in ("caffe", "torch"):
        procs[engine] = subprocess.Popen(
            [sys.executable, __file__, "--child", engine, "--run", str(run), "--stage", stage,
             "--device", device if engine == "torch" else "cpu", "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        trunk_ms_per_row = None
        for engine, p in procs.items():
            line = p.stdout.readline().strip()
            if line.startswith("trunk "):
                trunk_ms_per_row = float(line.split()[1])
                line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"the {engine} process failed to start (exit {p.wait()})")
        times = {engine: [] for engine in procs}
        cpu = {engine: [] for engine in procs}
        turn = 0
        while min(len(t) for t in times.values()) < iters:
            order = list(procs) if turn % 2 == 0 else list(procs)[::-1]
            turn += 1
            for engine in order:
                time.sleep(settle)
                for i in range(warmup + min(block, iters - len(times[engine]))):
                    procs[engine].stdin.write("step\n")
                    procs[engine].stdin.flush()
                    wall_ms, cpu_ms = map(float, procs[engine].stdout.readline().split())
                    if i >= warmup:
                        times[engine].append(wall_ms)
                        cpu[engine].append(cpu_ms)
        return times, cpu, trunk_ms_per_row
    finally:
        for p in procs.values():
            try:
                p.stdin.close()
            except OSError:
                pass
            p.wait()


def training_rows() -> int:
    """Training rows of 300-W as `make data` writes them: the paper's training faces less the
    validation share, times the augmented copies of each (mcl.data defaults)."""
    from mcl.data.augment import AugmentSettings
    from mcl.data.pipeline import PrepareSettings
    from mcl.method import paper
    faces = paper.value("split.ibug.train")
    val = PrepareSettings(dataset="ibug", out="").val_fraction
    return int(round(faces * (1 - val))) * AugmentSettings().copies


def hours(ms: float, iterations: int) -> float:
    return ms * iterations / 3.6e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="68", help="layout (default 68)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64, the paper's)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each engine (default 2)")
    ap.add_argument("--device", default="cpu", help="torch engine's device: cpu (default) or cuda")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed iterations at the start of each engine's turn (default 2)")
    ap.add_argument("--iters", type=int, default=12, help="timed iterations per engine and stage (default 12)")
    ap.add_argument("--block", type=int, default=4, help="timed iterations per turn (default 4)")
    ap.add_argument("--settle", type=float, default=0.5, help="pause before each turn, seconds (default 0.5)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", choices=("caffe", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, Path(args.run), args.stage, args.device, args.threads)
    load0 = os.getloadavg()[0]
    res = {}
    with tempfile.TemporaryDirectory(prefix="mcl-bench-engine-") as tmp:
        run = Path(tmp)
        write_run(run, args.layout, args.batch, rows=4 * args.batch)
        for stage in STAGES:
            times, cpu, trunk = bench_stage(run, stage, args.device, args.threads, args.warmup, args.iters,
                                            args.block, args.settle)
            res[stage] = {e: statistics.median(t) for e, t in times.items()}
            res[stage].update({f"{e}_cpu": statistics.median(t) for e, t in cpu.items()})
            res[stage]["all"] = {"wall": times, "cpu": cpu}
            res[stage]["trunk_ms_per_row"] = trunk
            print(f"  {stage:<7} caffe {res[stage]['caffe']:8.1f} ms/iter   torch ({args.device}) "
                  f"{res[stage]['torch']:8.1f} ms/iter", flush=True)
    load1 = os.getloadavg()[0]
    print(f"\nMCL torch engine vs Caffe: layout {args.layout}, batch {args.batch}, {args.threads} CPU threads each, "
          f"torch on {args.device}; median of {args.iters} iterations, in turns of {args.block} after "
          f"{args.warmup} untimed, "
          f"engines in alternating turns (load average {load0:.1f} -> {load1:.1f})")
    print(f"{'stage':<24}{'Caffe ms/iter':>14}{'torch ms/iter':>15}{'speed-up':>10}"
          f"{'CPU ms: Caffe':>16}{'torch':>8}{'ratio':>8}")
    labels = {"stage1": "stage 1 (all layers)", "stage2": "stage 2 (6 convs fixed)", "heads": "heads (joint)"}
    for stage in STAGES:
        r = res[stage]
        print(f"{labels[stage]:<24}{r['caffe']:>14.1f}{r['torch']:>15.1f}{r['caffe'] / r['torch']:>9.2f}x"
              f"{r['caffe_cpu']:>16.0f}{r['torch_cpu']:>8.0f}{r['caffe_cpu'] / r['torch_cpu']:>7.2f}x")
    print("(wall-clock medians; CPU ms = the process's CPU time over all its threads, less sensitive to other jobs)")
    total = {e: sum(hours(res[s][e], SCHEDULE[s]) for s in STAGES) for e in ("caffe", "torch")}
    rows = training_rows()
    for stage in STAGES:
        trunk = res[stage]["trunk_ms_per_row"]
        if trunk is not None:
            total["torch"] += hours(trunk, rows)
            print(f"{stage}: the fixed layers' one pass over the split, {trunk:.3f} ms a row "
                  f"({trunk * rows / 1000:.0f} s for the {rows:,} training rows of 300-W), is counted below")
    print(f"\nprojected paper schedule (180k + 60k (stage 3) at stage 1's rate, 60k of stage 2, 60k joint heads "
          f"= 360k iterations):\n"
          f"  Caffe {total['caffe']:.1f} h ({total['caffe'] / 24:.1f} days), "
          f"torch engine {total['torch']:.1f} h ({total['torch'] / 24:.1f} days)")
    speed = res["stage1"]["caffe"] / res["stage1"]["torch"]
    print(f"stage 1: torch engine {speed:.2f}x faster than Caffe (target >= {TARGET}x on the CPU): "
          f"{'met' if speed >= TARGET else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(res, layout=args.layout, batch=args.batch, threads=args.threads,
                                                   device=args.device, projected_hours=total,
                                                   training_rows_300w=rows, stage1_speedup=speed,
                                                   load_average=[load0, load1]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
