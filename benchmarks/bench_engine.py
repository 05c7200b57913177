#!/usr/bin/env python3
"""Benchmark: Caffe and the torch engine side by side, ms per training iteration.

Stage 1 (all layers trainable), stage 2 (the first six convolutions fixed) and the
joint heads stage, generated for a scratch run as `make nets` writes them, on the same
random HDF5 batches; each engine in its own process with the same number of CPU
threads, the two taking turns of a few iterations each, never at once. Figures are
medians over the timed iterations. Also printed: the projected time of the paper's
whole schedule (METHOD §5, Algorithm 1's stages as mcl/method/stages.py sets them), with
the torch engine's one pass of the fixed layers over 300-W's training split counted.
Target: the torch engine at least 2.5x faster than Caffe on the CPU. With --device cuda
(or cuda:N) the torch engine is timed alone, with no Caffe process: throughput (a block
with one synchronisation) and latency, and the projected paper schedule.

How it works
------------
The engine benchmark (`make bench-engine`): on the CPU, Caffe and the
torch engine timed side by side, ms per training iteration; on a GPU, the torch engine alone;
and the paper's whole schedule projected from the figures.

Stage 1 (all layers trainable), stage 2 (the first six convolutions fixed) and the joint
heads stage, generated for a scratch run as `make nets` writes them, train on the same
random HDF5 batches. Each engine runs in its own process (`benchmarks/bench_engine.py
--child SPEC`) with the same number of CPU threads (OpenBLAS for Caffe, intra-op threads
for torch). The two take turns of a few iterations each, so both see the same load on a
shared machine, and never run at once: one engine's idle threads must not take cores
from the other (OpenBLAS's threads spin for about 0.1 s after each call, so each turn
starts after a pause, and with untimed iterations). Figures are medians over the timed
iterations.

On a GPU (`--device cuda`, `cuda:N`) there is nothing to put beside it (the Caffe here is a CPU
build): no Caffe child is started and pycaffe is not imported (`plan`). The torch child then
times two things: throughput, a block of iterations with one synchronisation at its end (the
GPU runs ahead of the Python loop, as in training), and latency, each iteration synchronised
on its own (the median); the projection is made from the throughput (mcl.engine.schedule), and
no CPU target is printed.

The projection counts every stage of Algorithm 1 (mcl.method.stages, at the paper's
schedule) at the rate of the benchmarked stage that trains like it: stage 3 trains every
layer, as stage 1 does. Where the leading layers are fixed (stage 2, the heads) the torch
engine computes them once per training row (mcl/engine/fixed.py): that pass is timed on
its own and counted for the size of 300-W's training split.

After the table (on the CPU; --no-profile skips it): where a torch-engine step goes, per stage type
and per layout (--profile-layouts, default 5,68), at the same batch size and threads, in a child
process of its own: convolutions forward and backward, BatchNorm/Scale/ReLU, pooling, the fully
connected / shape layers with the loss, the SGD update, the data feed and the rest, each beside its
floor (FLOPs over the cores' measured fp32 peak, bytes over the measured memory bandwidth) and
the ratio; the figures also go into --json under `profile` (benchmarks/engine_profile.py says how
the parts are timed and the floors counted). Then (--no-precision skips it) the torch engine's step in
fp32 and in its opt-in bfloat16 (PRECISION=bf16) side by side, per stage type and layout, at the same
threads and batch (benchmarks/engine_threads.py; bf16 only where the CPU has bfloat16 instructions),
under `precision` in --json.
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

import engine_profile  # benchmarks/: the step's profile beside its floor, printed after the table
import engine_threads  # benchmarks/: fp32 and bf16 side by side, printed after the profile
from mcl.data.augment import AugmentSettings
from mcl.data.pipeline import PrepareSettings
from mcl.engine.schedule import BENCHED, LABELS, paper_schedule, project
from mcl.method import paper
from mcl.method.stages import BATCH_SIZE, STAGES

TARGET = 2.5  # the torch engine's speed-up over Caffe at stage 1, on the CPU
ROOT = Path(__file__).resolve().parents[1]


def plan(device: str) -> dict:
    """What runs for a device: on the CPU both engines side by side, the CPU target checked; on any
    other device the torch engine alone (no Caffe child), timed for throughput and latency."""
    if device == "cpu":
        return {"engines": ("caffe", "torch"), "measures": ("latency",), "target": TARGET}
    return {"engines": ("torch",), "measures": ("throughput", "latency"), "target": None}


write_run = engine_profile.write_run  # the run folder every engine benchmark times (defined below this module)


def child(spec: dict) -> int:
    """One engine, stepped by the parent: a line `step` (or `block N`: N iterations, one synchronisation)
    in, the wall-clock and CPU ms out."""
    run, stage, threads = Path(spec["run"]), spec["stage"], spec["threads"]
    os.chdir(run)
    solver_path = run / "solvers" / f"{stage}_solver.prototxt"
    if spec["engine"] == "caffe":
        import caffe  # deferred: pycaffe loads in the Caffe child only
        caffe.set_mode_cpu()
        solver = caffe.SGDSolver(str(solver_path))

        def step():
            solver.step(1)

        def sync():
            pass
    else:
        # Deferred: torch (which mcl.engine.solver imports) loads in the torch child only, never
        # in the parent or beside Caffe.
        import torch

        from mcl.engine.solver import Solver
        torch.set_num_threads(threads)
        solver = Solver(run, solver_path, device=spec["device"], fillers="torch")
        sync = torch.cuda.synchronize if solver.device.type == "cuda" else (lambda: None)
        if solver.fixed_prefix is not None:  # the one-off pass over the split, timed on its own
            t0 = time.perf_counter()
            solver.fixed_prefix.build()
            sync()
            fixed_ms = (time.perf_counter() - t0) * 1000.0
            print(f"fixed {fixed_ms / solver.feeds[0].rows:.4f}", flush=True)

        def step():
            solver.step()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] not in ("step", "block"):
            break
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(int(words[1]) if words[0] == "block" else 1):
            step()
        sync()
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
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine's worker runs (mcl/run/worker.py)
    procs = {}
    for engine in ("caffe", "torch"):
        spec = {"engine": engine, "run": str(run), "stage": stage, "device": device if engine == "torch" else "cpu",
                "threads": threads}
        procs[engine] = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                                         cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        fixed_ms_per_row = None
        for engine, p in procs.items():
            line = p.stdout.readline().strip()
            if line.startswith("fixed "):
                fixed_ms_per_row = float(line.split()[1])
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
        return times, cpu, fixed_ms_per_row
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
    faces = paper.value("split.ibug.train")
    val = PrepareSettings(dataset="ibug", out="").val_fraction
    return round(faces * (1 - val)) * AugmentSettings().copies


def hours(ms: float, iterations: int) -> float:
    return ms * iterations / 3.6e6


def _k(iterations: int) -> str:
    return f"{iterations / 1000:g}k"


def compare_engines(layout: str = "68", batch: int = BATCH_SIZE, threads: int = 2, device: str = "cpu", warmup: int = 2,
                    iters: int = 12, block: int = 4, settle: float = 0.5, json_path: str | None = None,
                    profile_layouts=("5", "68"), precision_layouts=("5", "68")) -> dict:
    """Time both engines at every benchmarked stage, print the table, the projection of the
    paper's schedule and the verdict; then, for each of `profile_layouts` (none: skipped), the torch
    engine's step split into its parts beside their floors (engine_profile.py, `profile` in the
    figures); return the figures (also written to `json_path`). On a device other than the CPU: the
    torch engine alone (`torch_alone`), with no profile."""
    if "caffe" not in plan(device)["engines"]:
        return torch_alone(layout, batch, threads, device, warmup, iters, json_path)
    load0 = os.getloadavg()[0]
    res = {}
    with tempfile.TemporaryDirectory(prefix="mcl-bench-engine-") as tmp:
        run = Path(tmp)
        write_run(run, layout, batch, rows=4 * batch)
        for stage in BENCHED:
            times, cpu, fixed = bench_stage(run, stage, device, threads, warmup, iters, block, settle)
            res[stage] = {e: statistics.median(t) for e, t in times.items()}
            res[stage].update({f"{e}_cpu": statistics.median(t) for e, t in cpu.items()})
            res[stage]["all"] = {"wall": times, "cpu": cpu}
            res[stage]["fixed_ms_per_row"] = fixed
            print(f"  {stage:<7} caffe {res[stage]['caffe']:8.1f} ms/iter   torch ({device}) "
                  f"{res[stage]['torch']:8.1f} ms/iter", flush=True)
    load1 = os.getloadavg()[0]
    print(f"\nMCL torch engine vs Caffe: layout {layout}, batch {batch}, {threads} CPU threads each, "
          f"torch on {device}; median of {iters} iterations, in turns of {block} after {warmup} untimed, "
          f"engines in alternating turns (load average {load0:.1f} -> {load1:.1f})")
    print(f"{'stage':<24}{'Caffe ms/iter':>14}{'torch ms/iter':>15}{'speed-up':>10}"
          f"{'CPU ms: Caffe':>16}{'torch':>8}{'ratio':>8}")
    for stage in BENCHED:
        r = res[stage]
        print(f"{LABELS[stage]:<24}{r['caffe']:>14.1f}{r['torch']:>15.1f}{r['caffe'] / r['torch']:>9.2f}x"
              f"{r['caffe_cpu']:>16.0f}{r['torch_cpu']:>8.0f}{r['caffe_cpu'] / r['torch_cpu']:>7.2f}x")
    print("(wall-clock medians; CPU ms = the process's CPU time over all its threads, less sensitive to other jobs)")
    schedule = paper_schedule()
    total = {e: sum(hours(res[s][e], sum(schedule[s].values())) for s in BENCHED) for e in ("caffe", "torch")}
    rows = training_rows()
    for stage in BENCHED:
        fixed = res[stage]["fixed_ms_per_row"]
        if fixed is not None:
            total["torch"] += hours(fixed, rows)
            print(f"{stage}: the fixed layers' one pass over the split, {fixed:.3f} ms a row "
                  f"({fixed * rows / 1000:.0f} s for the {rows:,} training rows of 300-W), is counted below")
    at_stage1 = " + ".join(_k(n) + ("" if name == "stage1" else f" (stage {STAGES[name].step})")
                           for name, n in schedule["stage1"].items())
    print(f"\nprojected paper schedule ({at_stage1} at stage 1's rate, {_k(sum(schedule['stage2'].values()))} of "
          f"stage 2, {_k(sum(schedule['heads'].values()))} joint heads "
          f"= {_k(sum(sum(s.values()) for s in schedule.values()))} iterations):\n"
          f"  Caffe {total['caffe']:.1f} h ({total['caffe'] / 24:.1f} days), "
          f"torch engine {total['torch']:.1f} h ({total['torch'] / 24:.1f} days)")
    speed = res["stage1"]["caffe"] / res["stage1"]["torch"]
    print(f"stage 1: torch engine {speed:.2f}x faster than Caffe (target >= {TARGET}x on the CPU): "
          f"{'met' if speed >= TARGET else 'NOT met'}")
    out = dict(res, layout=layout, batch=batch, threads=threads, device=device, projected_hours=total,
               training_rows_300w=rows, stage1_speedup=speed, load_average=[load0, load1])
    if profile_layouts:
        out["profile"] = engine_profile.profile(list(profile_layouts), batch, threads, write_run, warmup=warmup,
                                                iters=iters)
    if precision_layouts:
        # fp32 and the engine's PRECISION=bf16 side by side, per stage type and layout, at these threads
        # (engine_threads.py; bf16 only where the CPU has bfloat16 instructions, else said).
        print(f"\nthe torch engine in fp32 and bf16 (PRECISION=bf16), {threads} threads, batch {batch}, median of "
              f"{iters} iterations after {warmup} untimed, the two in turns:", flush=True)
        out["precision"] = engine_threads.measure(list(precision_layouts), [threads], list(BENCHED),
                                                  ["fp32", "bf16"], batch, warmup, iters, block=2, timeout=1800,
                                                  log=lambda *a, **k: None)
        print(engine_threads.table(out["precision"]), flush=True)
        bf16 = bf16_projection(out["precision"], layout, threads, res, schedule, rows)
        if bf16 is not None:
            out["projected_hours_bf16"] = bf16
            print(f"\nprojected paper schedule in the torch engine, layout {layout}, at the ratios above: fp32 "
                  f"{bf16['fp32']:.1f} h, PRECISION=bf16 {bf16['total']:.1f} h ({bf16['fp32'] / bf16['total']:.2f}x "
                  "less)", flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out



def bf16_projection(doc: dict, layout: str, threads: int, res: dict, schedule: dict, rows: int) -> dict | None:
    """The paper's schedule in the torch engine with PRECISION=bf16 (every stage in bf16): the engine
    comparison's fp32 hours of each stage type divided by the fp32 / bf16 ratio measured side by side
    (engine_threads.measure); the fixed layers' pass over the split (float32 in both) stays as timed.
    None where bf16 was not measured for `layout` at `threads`."""
    measured = doc.get("results", {}).get(layout, {}).get(str(threads), {})
    if "bf16" not in doc.get("precisions", ()) or not measured:
        return None
    per, bf16 = {}, {}
    for stage in BENCHED:
        r = measured[stage]
        ratio = r["fp32"]["ms_per_iter"] / r["bf16"]["ms_per_iter"]
        train = hours(res[stage]["torch"], sum(schedule[stage].values()))
        fixed = hours(res[stage]["fixed_ms_per_row"] or 0.0, rows)
        per[stage], bf16[stage] = train + fixed, train / ratio + fixed
    return {"fp32": sum(per.values()), "total": sum(bf16.values()), "by_stage_fp32": per, "by_stage": bf16}


def ask(p: subprocess.Popen, command: str) -> float:
    """One command to a child (`step`, `block N`); the wall-clock ms it took."""
    p.stdin.write(command + "\n")
    p.stdin.flush()
    return float(p.stdout.readline().split()[0])


def torch_alone(layout: str = "68", batch: int = BATCH_SIZE, threads: int = 2, device: str = "cuda", warmup: int = 2,
                iters: int = 12, json_path: str | None = None) -> dict:
    """The torch engine alone on `device` (a GPU: no Caffe child): per stage, after `warmup` untimed
    iterations, a block of `iters` with one synchronisation (throughput, ms per iteration) and `iters`
    synchronised one by one (latency, their median); then the projected paper schedule."""
    res = {}
    with tempfile.TemporaryDirectory(prefix="mcl-bench-engine-") as tmp:
        run = Path(tmp)
        write_run(run, layout, batch, rows=4 * batch)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for stage in BENCHED:
            spec = {"engine": "torch", "run": str(run), "stage": stage, "device": device, "threads": threads}
            p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            try:
                fixed = None
                line = p.stdout.readline().strip()
                if line.startswith("fixed "):
                    fixed = float(line.split()[1])
                    line = p.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"the torch process on {device} failed to start (exit {p.wait()})")
                for _ in range(warmup):
                    ask(p, "step")
                throughput = ask(p, f"block {iters}") / iters
                latency = [ask(p, "step") for _ in range(iters)]
            finally:
                try:
                    p.stdin.close()
                except OSError:
                    pass
                p.wait()
            res[stage] = {"torch": throughput, "latency": statistics.median(latency), "all": {"latency": latency},
                          "fixed_ms_per_row": fixed}
            print(f"  {stage:<7} torch ({device}) {throughput:8.2f} ms/iter (throughput), "
                  f"{res[stage]['latency']:8.2f} ms latency", flush=True)
    rows = training_rows()
    projection = project({s: res[s]["torch"] for s in BENCHED}, {s: res[s]["fixed_ms_per_row"] for s in BENCHED}, rows)
    print(f"\nMCL torch engine on {device} alone (no Caffe beside it): layout {layout}, batch {batch}; throughput: a "
          f"block of {iters} iterations with one synchronisation; latency: the median of {iters} synchronised one by "
          f"one; after {warmup} untimed")
    print(f"{'stage':<24}{'ms/iter':>10}{'latency ms':>12}{'fixed pass ms/row':>19}")
    for stage in BENCHED:
        r = res[stage]
        fixed = f"{r['fixed_ms_per_row']:.4f}" if r["fixed_ms_per_row"] is not None else "-"
        print(f"{LABELS[stage]:<24}{r['torch']:>10.2f}{r['latency']:>12.2f}{fixed:>19}")
    print(projection["line"])
    out = dict(res, layout=layout, batch=batch, threads=threads, device=device, engines=["torch"],
               projected_hours={"torch": projection["total_hours"]}, projection=projection, training_rows_300w=rows)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="68", help="layout (default 68)")
    ap.add_argument("--batch", type=int, default=BATCH_SIZE, help=f"batch size (default {BATCH_SIZE}, the paper's)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each engine (default 2)")
    ap.add_argument("--device", default="cpu", help="torch engine's device: cpu (default; beside Caffe) or cuda, cuda:N (alone)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed iterations at the start of each engine's turn (default 2)")
    ap.add_argument("--iters", type=int, default=12, help="timed iterations per engine and stage (default 12)")
    ap.add_argument("--block", type=int, default=4, help="timed iterations per turn (default 4)")
    ap.add_argument("--settle", type=float, default=0.5, help="pause before each turn, seconds (default 0.5)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the torch engine's step profile (its parts beside their floors) after the table")
    ap.add_argument("--profile-layouts", default="5,68", help="layouts of the profile, comma-separated (default 5,68)")
    ap.add_argument("--no-precision", action="store_true",
                    help="skip the torch engine's fp32 and bf16 (PRECISION=bf16) side by side after the profile")
    args = ap.parse_args(argv)
    layouts = () if args.no_profile else engine_profile.parse_layouts(args.profile_layouts)
    compare_engines(args.layout, args.batch, args.threads, args.device, args.warmup, args.iters, args.block,
                    args.settle, json_path=args.json, profile_layouts=layouts,
                    precision_layouts=() if args.no_precision else engine_profile.parse_layouts(args.profile_layouts))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(json.loads(sys.argv[2])))
    sys.exit(main())
