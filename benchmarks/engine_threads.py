#!/usr/bin/env python3
"""`make bench-threads`: the torch engine's CPU training step against the number of threads, in fp32 and,
where the CPU has bfloat16 instructions, in the engine's opt-in bfloat16 (PRECISION=bf16).

For each layout and thread count a child process of its own (`--child`, the intra-op threads set before
the first torch operation, OMP_NUM_THREADS / MKL_NUM_THREADS with them) builds stage 1 (every layer
trains), stage 2 (the first six convolutions fixed, their pass computed once per training row) and the
joint heads as `make nets` generates them (batch 64, the paper's), on random rows in the nets' HDF5 form
(benchmarks/gpu_check.py's Workspace), stage 2 and the heads from the stage-1 model, and times `--iters`
iterations after `--warmup` untimed ones: the median ms per iteration. Where bf16 is asked for and the
CPU has it, an fp32 solver and a bf16 solver (mcl.engine.solver.Solver(precision="bf16"): the forward
pass under bfloat16 autocast, BatchNorm statistics, losses, master weights and the SGD update in fp32,
docs/ENGINE.md) of the same stage take turns of a few iterations each, so both see the same load on a
shared machine. A CPU without bfloat16 instructions (mcl.engine.device.bf16_support: `avx512_bf16` or
`amx_bf16` in /proc/cpuinfo) gets no bf16 figures, and the table says so.

The speed-up is the 1-thread time over the N-thread time of the same stage in the same run; the
efficiency is the speed-up over N. docs/BENCHMARKS.md ("How the step scales with cores") gives the figures
and the number of cores a training job should ask for (docs/CLUSTER.md).

  benchmarks/engine_threads.py                              (1, 2 and every core of this machine, fp32)
  benchmarks/engine_threads.py --threads 1,2,4,8,16 --precisions fp32,bf16 --json threads.json

Needs Python, NumPy, h5py, protobuf and PyTorch only (no Caffe, no OpenCV, no .venv), as
benchmarks/gpu_check.py: the project's tree can be carried to another machine and run with PYTHONPATH=.
Exit status: 0 done, 2 bad input, 143 ended by SIGTERM (its child ended with it, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcl.caffe.speed import cpu_name
from mcl.engine import PRECISIONS  # torch-free: the parent loads no torch before it must

import peaks  # benchmarks/: the cores' vector peaks

STAGES = ("stage1", "stage2", "heads")
INIT_STEPS = 3  # stage-1 steps before the model stage 2 and the heads start from, where stage 1 is not timed


def bf16_support() -> str | None:
    """What gives this CPU bfloat16 (mcl.engine.device.bf16_support: its /proc/cpuinfo flags), or None."""
    from mcl.engine.device import bf16_support as engine_support

    return engine_support("cpu")


def parse_list(text: str, what: str, allowed=None, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what}: empty list")
    out = []
    for t in items:
        try:
            v = cast(t)
        except ValueError:
            raise ValueError(f"--{what}: {t!r} is not a valid value") from None
        if allowed is not None and v not in allowed:
            raise ValueError(f"--{what}: {t!r} is not one of {', '.join(map(str, allowed))}")
        if cast is int and v < 1:
            raise ValueError(f"--{what}: {t!r} must be at least 1")
        out.append(v)
    return out


# ---- the child: one layout at one thread count ---------------------------------------------------

def child(spec: dict) -> dict:
    from mcl.run.worker import stop_with_parent  # torch-free: ends this child when the parent dies, even by -9

    stop_with_parent()
    import torch

    torch.set_num_threads(spec["threads"])
    from gpu_check import Workspace  # benchmarks/: the run folders on random rows, no OpenCV
    from mcl.engine.solver import Solver

    ws = Workspace(Path(spec["root"]), spec["layout"], spec["batch"])
    out = {}
    # Stage 2 and the heads start from a stage-1 model (real BatchNorm statistics, as Algorithm 1
    # starts them; from the fillers their fixed BatchNorms would divide by zero variance): stage 1's
    # solver after its timed steps, or after INIT_STEPS where stage 1 is not timed.
    init = Path(spec["root"]) / "stage1.caffemodel"
    for stage in ["stage1"] + [s for s in spec["stages"] if s != "stage1"]:
        solvers = {}
        for p in ["fp32"] + [p for p in spec["precisions"] if p != "fp32"]:
            solvers[p] = Solver(ws.folder(f"t{spec['threads']}-{p}"), f"solvers/{stage}_solver.prototxt",
                                device="cpu", fillers="torch", precision=p)
            if stage != "stage1":
                solvers[p].copy_from(init)
        solver = solvers["fp32"]
        if stage == "stage1" and stage not in spec["stages"]:
            for _ in range(INIT_STEPS):
                solver.step()
            solver.save(init)
            continue
        modes = {p: sv.step for p, sv in solvers.items()}
        times: dict[str, list[float]] = {m: [] for m in modes}
        for step in modes.values():
            for _ in range(spec["warmup"]):
                step()
        block = max(1, spec["block"])
        while min(len(t) for t in times.values()) < spec["iters"]:
            for mode, step in modes.items():
                for _ in range(min(block, spec["iters"] - len(times[mode]))):
                    t0 = time.perf_counter()
                    step()
                    times[mode].append((time.perf_counter() - t0) * 1000.0)
        out[stage] = {m: {"ms_per_iter": statistics.median(t), "all_ms": t} for m, t in times.items()}
        out[stage]["loss_finite"] = all(bool(torch.isfinite(torch.tensor(sv.loss))) for sv in solvers.values())
        if stage == "stage1":
            solver.save(init)
    return out


def run_child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    here = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here, root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"child ({spec['layout']}, {spec['threads']} threads) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- the parent ----------------------------------------------------------------------------------

def measure(layouts, threads, stages, precisions, batch, warmup, iters, block, timeout, log=print) -> dict:
    import torch

    from mcl.engine.device import CPU_BF16_FLAGS

    support = bf16_support()
    want_bf16 = "bf16" in precisions
    used = [p for p in precisions if p != "bf16" or support]
    doc = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": os.getloadavg(),
           "torch": torch.__version__, "bf16_instructions": support,
           "bf16": (f"measured (the engine's PRECISION=bf16; {support})" if support else "not measured: the CPU "
                    "lists neither " + " nor ".join(CPU_BF16_FLAGS)) if want_bf16 else "not asked for",
           "batch": batch, "warmup": warmup, "iters": iters, "threads": threads, "stages": stages,
           "precisions": used, "results": {}}
    if "bf16" in used:  # one core's vector peaks: the ceiling of bf16's gain on the convolutions (AMX aside)
        doc["peaks"] = {"fp32_gflops": peaks.fp32_gflops(), "bf16_gflops": peaks.bf16_gflops()}
    with tempfile.TemporaryDirectory(prefix="mcl-threads-") as tmp:
        for layout in layouts:
            doc["results"][layout] = {}
            for n in threads:
                log(f"[threads] layout {layout}, {n} thread(s) ...", flush=True)
                spec = {"root": str(Path(tmp) / f"{layout}-{n}"), "layout": layout, "threads": n,
                        "stages": stages, "precisions": used, "batch": batch, "warmup": warmup,
                        "iters": iters, "block": block}
                doc["results"][layout][str(n)] = run_child(spec, timeout)
    doc["load_average_end"] = os.getloadavg()
    return doc


def table(doc: dict) -> str:
    lines = [f"CPU: {doc['cpu']}, {doc['cores']} cores, torch {doc['torch']}; load average "
             f"{doc['load_average_start'][0]:.2f} at the start, {doc['load_average_end'][0]:.2f} at the end",
             f"bf16: {doc['bf16']}"]
    pk = doc.get("peaks") or {}
    if pk.get("fp32_gflops") and pk.get("bf16_gflops"):
        lines.append(f"one core's vector peaks (benchmarks/peaks.py): fp32 FMA {pk['fp32_gflops']:.1f} GFLOP/s, AVX-512 "
                     f"BF16 {pk['bf16_gflops']:.1f} ({pk['bf16_gflops'] / pk['fp32_gflops']:.2f}x): the most bf16 can "
                     "gain on the convolutions without AMX; BatchNorm, pooling and the update stay fp32")
    lines.append("")
    bf16 = "bf16" in doc["precisions"]
    head = "| layout | stage | threads | fp32 ms/iter | speed-up vs 1 | efficiency |"
    head += " bf16 ms/iter | fp32 / bf16 |" if bf16 else ""
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for layout, by_n in doc["results"].items():
        for stage in doc["stages"]:
            base = by_n.get("1", {}).get(stage, {}).get("fp32", {}).get("ms_per_iter")
            for n, res in by_n.items():
                r = res[stage]
                ms = r["fp32"]["ms_per_iter"]
                up = base / ms if base else None
                row = (f"| {layout} | {stage} | {n} | {ms:.1f} | " + (f"{up:.2f}x" if up else "-") + " | "
                       + (f"{up / int(n):.0%}" if up else "-") + " |")
                if bf16:
                    b = r["bf16"]["ms_per_iter"]
                    row += f" {b:.1f} | {ms / b:.2f}x |"
                lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layouts", default="68", help="layouts, comma-separated (default 68)")
    ap.add_argument("--threads", default=None,
                    help="thread counts, comma-separated (default 1,2 and this machine's cores)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"stage types (default {','.join(STAGES)})")
    ap.add_argument("--precisions", default="fp32",
                    help="fp32 and/or bf16 (bf16: measured where the CPU has bfloat16 instructions)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64, the paper's)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per stage (default 2)")
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per stage and precision (default 8)")
    ap.add_argument("--block", type=int, default=2, help="iterations per turn of fp32 and bf16 (default 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child before it is stopped")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: the child is killed (subprocess.run kills it on any exception) and
    # the scratch folder removed; nothing is written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from mcl.method.layouts import LAYOUTS

    try:
        layouts = parse_list(args.layouts, "layouts", allowed=tuple(LAYOUTS))
        cores = os.cpu_count() or 1
        threads = parse_list(args.threads or ",".join(map(str, sorted({1, 2, cores}))), "threads", cast=int)
        stages = parse_list(args.stages, "stages", allowed=STAGES)
        precisions = parse_list(args.precisions, "precisions", allowed=PRECISIONS)
        for name in ("batch", "iters", "block"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name}: must be at least 1")
        if args.warmup < 0:
            raise ValueError("--warmup: must be 0 or more")
    except ValueError as e:
        print(f"engine_threads: {e}", file=sys.stderr)
        return 2
    doc = measure(layouts, threads, stages, precisions, args.batch, args.warmup, args.iters, args.block,
                  args.timeout, log=lambda *a, **k: print(*a, file=sys.stderr, **k))
    print(table(doc))
    if args.json:
        from mcl.fileio import atomic_write

        atomic_write(args.json, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
