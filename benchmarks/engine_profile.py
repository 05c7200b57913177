#!/usr/bin/env python3
"""Where a training step of the torch engine spends its time, beside its floor (`make bench-engine`
prints it after its table; this file alone: `benchmarks/engine_profile.py --layouts 5,68`).

For each stage type (stage 1: every layer trains; stage 2: the first six convolutions fixed, their
pass precomputed per training row, mcl/engine/fixed.py; the joint heads) one step is split into:
convolutions forward, convolutions backward, BatchNorm/Scale/ReLU (forward + backward), pooling
(forward + backward), the fully connected / shape layers and the loss (Eq. 4, METHOD §3), the SGD
update (METHOD §5.2), the data feed, and "other" (what the named parts do not cover).

How the parts are timed
-----------------------
Instrumented steps, each with perf_counter around the engine's own code: the feed
(mcl.engine.feeds and the fixed prefix's rows), the fused forward one entry of its plan at a time
(FusedNet's own loop run on a one-entry plan: a convolution, a fused BatchNorm-Scale-ReLU chain, a
pooling, an Eq. 4 group, ...), the weighted loss, the backward pass, and the update
(CaffeSGD.apply_update). In the backward pass every autograd node is tagged with the part whose
forward entry created it (the nodes reached from the entry's tops that no earlier entry made), and
a node runs from its pre-hook to the next hooked node's: the CPU's autograd engine runs the nodes
one after another on the calling thread. A hook (a Python call, some microseconds) sits only where
the part changes, on each node some of whose consumers belong to another part (and on the root);
the nodes between, reached only from their own part, run within it (StepProfiler(every_node=True)
hooks every node). Consecutive entries of one part are timed as one. What is left of the
instrumented step is "other": the autograd engine's set-up before the first node, the fused loop
passing over the fixed prefix's layers, the step's tensors and graph freed at its end, Python
between the parts. The tagging walk is bookkeeping, taken out of the step.

The measured step is timed on its own: the same solver's plain Solver.step(), in turn with the
instrumented steps (medians of each). The parts (medians; "other" the median of each step's
remainder) add up to the instrumented step, which is held to the plain one: they should agree
within 10% (tests/test_engine_profile.py). The instrumented step computes what Solver.step()
computes (the same test holds the weights after two steps of each to each other).

The floors
----------
In the same process, on the same threads: the cores' fp32 peak (the best of a large torch.mm, a
large 3x3 convolution, best of a few runs each, and benchmarks/peaks.py's FMA kernel on as many
cores) and the memory bandwidth (the best of a copy and an add of tensors far larger than the
caches). Each plan entry's floor is its roofline,
max(FLOPs / peak, bytes / bandwidth), counted from the net's shapes; a part's floor is the sum of
its entries'.

- Convolution forward: 2 N Cout Hout Wout (Cin / group) kh kw. Backward: the weight gradient (as
  many FLOPs) where the weight trains, and the data gradient (as many) where the bottom needs a
  gradient (not the first layer, nor the first trained layer after a fixed prefix); a fixed layer
  that still runs has no backward. Bytes: input, weights and output of each pass.
- BatchNorm-Scale-ReLU (a fused chain; S the bytes of its input): forward with batch statistics
  3 S (read for the statistics, read and write), with stored ones 2 S; backward 5 S with batch
  statistics (a reduction pass over dy and x, then dy and x read and dx written) or 3 S with stored
  ones, 2 S where no data gradient is needed (the scale's own reduction). The mask of the ReLU is
  recomputed from x. Layers outside a chain: 2 S forward, 3 S backward each.
- Pooling: input and output read / written once forward; backward dy read and dx written (MAX
  also reads x again to find each window's maximum).
- Fully connected: 2 N K M forward, as many for the weight gradient and for the data gradient where
  they are needed; bytes: input, weights, output. The shape layers and Eq. 4's loss: their
  elementwise work (a few FLOPs and the bytes of their blobs); Slice, Reshape, Flatten, Split are
  views.
- SGD: every trained blob's weight, gradient and history read, weight and history written (5 x 4
  bytes a value; the engine's four foreach passes move 11).
- Data feed: one pass over the bytes of the batch's tops (the engine's batch is a view of the split
  held in memory, so this part may run under its floor).
- Other: no floor.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peaks  # benchmarks/: the cores' peaks from the FMA kernel

PARTS = ("conv_fwd", "conv_bwd", "bn", "pool", "fc_loss", "sgd", "feed", "other")
NAMED = PARTS[:-1]
LABELS = {"conv_fwd": "convolutions forward", "conv_bwd": "convolutions backward",
          "bn": "BatchNorm/Scale/ReLU (fwd+bwd)", "pool": "pooling (fwd+bwd)",
          "fc_loss": "FC/shape layers + loss (Eq. 4)", "sgd": "SGD update", "feed": "data feed", "other": "other"}
STAGE_LABELS = {"stage1": "stage 1 (all layers)", "stage2": "stage 2 (6 convs fixed)", "heads": "heads (joint)"}
STAGES = tuple(STAGE_LABELS)
COLUMNS = ("part", "ms", "floor ms", "ratio", "GFLOP", "MB")
F32 = 4  # bytes a value
INPUT_TYPES = ("Input", "HDF5Data", "Data")  # mcl.torchnet's data layers (the feed)
VIEW_TYPES = ("Slice", "Reshape", "Flatten", "Split", "Silence")


# ---- counting the work, from the net's shapes (no timing) ----------------------------------------------------------

def conv_flops(n: int, c_out: int, h_out: int, w_out: int, c_in: int, kh: int, kw: int, group: int = 1) -> int:
    """FLOPs of one convolution's forward pass: 2 N Cout Hout Wout (Cin / group) kh kw."""
    return 2 * n * c_out * h_out * w_out * (c_in // group) * kh * kw


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _work(name: str, kind: str, part: str, flop_fwd=0, flop_bwd=0, bytes_fwd=0, bytes_bwd=0) -> dict:
    return {"name": name, "type": kind, "part": part, "flop_fwd": int(flop_fwd), "flop_bwd": int(flop_bwd),
            "bytes_fwd": int(bytes_fwd), "bytes_bwd": int(bytes_bwd)}


def part_of(entry) -> str:
    """The part a FusedNet plan entry belongs to."""
    kind, what = entry
    if kind == "fused":
        return "bn"
    if kind == "losses":
        return "fc_loss"
    t = what.type
    if t in INPUT_TYPES:
        return "feed"
    if t == "Convolution":
        return "conv"
    if t == "Pooling":
        return "pool"
    if t in ("BatchNorm", "ReLU") or (t == "Scale" and len(what.bottoms) == 1):
        return "bn"
    return "fc_loss"  # InnerProduct, the shape layers (Scale by 1/IOD, Slice, ...), EuclideanLoss


def _trains(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def entry_work(net, entry, grad: set, skip=frozenset()) -> dict | None:
    """FLOPs and bytes of one plan entry, forward and backward; `grad` (the blobs that need a gradient,
    updated here) says which backward passes run. None for an entry that does nothing (skipped, data)."""
    kind, what = entry
    shapes = net.shapes
    if kind == "losses":
        n = _numel(shapes[what["a"]])
        needs = what["a"] in grad or what["b"] in grad
        if needs:
            grad.update(what["tops"])
        # (a - b), its square, the sum: 3 FLOPs a value, a and b read; backward 2 (a - b) / N, dx written.
        return _work(f"Eq. 4 group ({what['k']} losses)", "losses", "fc_loss", 3 * n, 2 * n if needs else 0,
                     2 * n * F32, 3 * n * F32 if needs else 0)
    if kind == "fused":
        bn, _, relu, members = what
        live = [m for m in members if m.name not in skip]
        if not live:
            return None
        bottom = members[0].bottoms[0]
        s = _numel(shapes[bottom]) * F32
        trains = any(_trains(net.layer(m.name)) for m in live)
        dx = bottom in grad
        out_grad = dx or trains
        if out_grad:
            grad.update(members[-1].tops)
        batch = not bn.use_global_stats
        bwd = 0 if not out_grad else ((5 if batch else 3) * s if dx else 2 * s)
        names = "-".join(m.type for m in live)
        return _work(members[0].name, names, "bn", 0, 0, (3 if batch else 2) * s, bwd)
    s = what
    if s.type in INPUT_TYPES or s.name in skip:
        return None
    mod = net.layer(s.name)
    trains = _trains(mod)
    ins = [shapes[b] for b in s.bottoms]
    outs = [shapes[t] for t in s.tops]
    dx = any(b in grad for b in s.bottoms)
    if trains or dx:
        grad.update(s.tops)
    part = part_of(entry)
    if s.type == "Convolution":
        x, y = ins[0], outs[0]
        w = _numel(mod.weight.shape)
        f = conv_flops(x[0], y[1], y[2], y[3], x[1], mod.kernel[0], mod.kernel[1], mod.group)
        wgrad, dgrad = mod.weight.requires_grad, dx
        return _work(s.name, s.type, "conv", f, f * (int(wgrad) + int(dgrad)),
                     (_numel(x) + w + _numel(y)) * F32,
                     ((_numel(x) + _numel(y) + w) * F32) * (int(wgrad) + int(dgrad)))
    if s.type == "InnerProduct":
        x, y = ins[0], outs[0]
        w = _numel(mod.weight.shape)
        f = 2 * x[0] * _numel(x[1:]) * y[-1]
        wgrad = mod.weight.requires_grad
        return _work(s.name, s.type, part, f, f * (int(wgrad) + int(dx)), (_numel(x) + w + _numel(y)) * F32,
                     (_numel(x) + _numel(y) + w) * F32 * (int(wgrad) + int(dx)))
    if s.type == "Pooling":
        sin, sout = _numel(ins[0]) * F32, _numel(outs[0]) * F32
        bwd = (sout + (2 if mod.max else 1) * sin) if dx else 0
        return _work(s.name, s.type, part, _numel(ins[0]), _numel(ins[0]) if dx else 0, sin + sout, bwd)
    if s.type in VIEW_TYPES:
        return _work(s.name, s.type, part)
    moved = sum(_numel(v) for v in ins) + sum(_numel(v) for v in outs)
    n = max((_numel(v) for v in outs), default=0)
    if s.type == "BatchNorm" and not mod.use_global_stats:
        return _work(s.name, s.type, part, 0, 0, 3 * _numel(ins[0]) * F32, 5 * _numel(ins[0]) * F32 if dx else 0)
    back = dx or trains
    return _work(s.name, s.type, part, n, n if back else 0, moved * F32, (moved + n) * F32 if back else 0)


def step_work(solver) -> list[dict]:
    """The work of one training step of `solver`, entry by entry, with the update and the feed."""
    net, fused = solver.net, solver.fused
    if fused.plan is None:
        raise ValueError("the profile follows the fused path: Solver(fast=True)")
    grad: set = set()
    out = []
    for entry in fused.plan:
        w = entry_work(net, entry, grad, fused.skip)
        if w is not None:
            out.append(w)
    trained = sum(b.tensor.numel() for b in solver.sgd.blobs if b.lr_mult != 0)
    out.append(_work("SGD update", "SGD", "sgd", 4 * trained, 0, 5 * trained * F32, 0))
    tops = [_numel(net.shapes[n]) for n in net.input_names]
    if solver.fixed_prefix is not None:
        tops += [_numel(net.shapes[b]) for b in solver.fixed_prefix.frontier]
    out.append(_work("data feed", "feed", "feed", 0, 0, sum(tops) * F32, 0))
    return out


def floors(work: list[dict], peak_gflops: float, bandwidth_gbs: float) -> dict[str, dict]:
    """Per part: FLOPs, bytes and the floor in ms (each entry's roofline, forward and backward apart)."""
    out = {p: {"flop": 0, "bytes": 0, "floor_ms": 0.0} for p in NAMED}
    for w in work:
        for d in ("fwd", "bwd"):
            part = w["part"]
            if part == "conv":
                part = f"conv_{d}"
            f, b = w[f"flop_{d}"], w[f"bytes_{d}"]
            out[part]["flop"] += f
            out[part]["bytes"] += b
            out[part]["floor_ms"] += max(f / (peak_gflops * 1e6), b / (bandwidth_gbs * 1e6))
    return out


# ---- the machine: fp32 peak and memory bandwidth, on the profile's threads ---------------------------------------

def cpu_description() -> dict:
    """The CPU's model name and the vector ISA torch uses (and the flags that say so)."""
    import torch
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return {"model": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [f for f in wanted if f in flags], "no_avx512": "avx512f" not in flags}


def _best(fn, runs: int) -> float:
    fn()  # warm
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _mm_gflops(n: int, runs: int) -> float:
    import torch
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    return 2 * n ** 3 / _best(lambda: torch.mm(a, b, out=c), runs) / 1e9


def _conv_gflops(batch: int, runs: int) -> float:
    import torch
    import torch.nn.functional as F
    x, w = torch.randn(batch, 128, 28, 28), torch.randn(128, 128, 3, 3) * 0.03
    return conv_flops(batch, 128, 28, 28, 128, 3, 3) / _best(lambda: F.conv2d(x, w, padding=1), runs) / 1e9


def _bandwidth(m: int, runs: int) -> tuple[float, float]:
    """GB/s of a copy (read + write: 2 x bytes) and an add (3 x bytes) of `m` float32 values."""
    import torch
    src, dst, other = torch.rand(m), torch.empty(m), torch.rand(m)
    copy_bw = 2 * m * F32 / _best(lambda: dst.copy_(src), runs) / 1e9
    add_bw = 3 * m * F32 / _best(lambda: torch.add(src, other, out=dst), runs) / 1e9
    return copy_bw, add_bw


def measure_machine(threads: int, quick: bool = False, runs: int = 4) -> dict:
    """fp32 peak (GFLOP/s: the best of a square torch.mm, n = 2048, a 3x3 convolution 128 -> 128 channels
    on 28 x 28 maps, batch 32, best of `runs` each, and the FMA kernel of benchmarks/peaks.py on as many
    cores as threads, where it builds: on some CPUs the convolutions run faster than torch.mm) and memory
    bandwidth (GB/s: a copy and an add of 128 MiB tensors, far beyond the caches); `quick`: n = 1024,
    batch 8, 64 MiB."""
    import torch
    torch.set_num_threads(threads)
    with torch.no_grad():
        mm = _mm_gflops(1024 if quick else 2048, runs)
        conv = _conv_gflops(8 if quick else 32, runs)
        copy_bw, add_bw = _bandwidth((16 if quick else 32) << 20, runs)
    cores = sorted(os.sched_getaffinity(0))[:threads] if hasattr(os, "sched_getaffinity") else list(range(threads))
    fma = peaks.fp32_gflops(tuple(cores), tries=2 if quick else runs)
    return {"threads": threads, "peak_gflops": max(mm, conv, fma or 0.0), "mm_gflops": mm, "conv_gflops": conv,
            "fma_gflops": fma,
            "bandwidth_gbs": max(copy_bw, add_bw), "copy_gbs": copy_bw, "add_gbs": add_bw,
            "cpu": cpu_description()}


# ---- timing the parts of a step ------------------------------------------------------------------------------------

class StepProfiler:
    """Solver.step() with each part timed (module docstring): the engine's own feed, fused forward,
    loss and update; in the backward pass, each part from the pre-hook where it begins to the next
    one (`_hook`). `step()` returns seconds per part (forward and backward apart) and the step's total, the
    tagging walk (bookkeeping) taken out."""

    KEYS = ("conv_fwd", "conv_bwd", "bn_fwd", "bn_bwd", "pool_fwd", "pool_bwd", "fc_loss_fwd", "fc_loss_bwd",
            "sgd", "feed", "other_fwd", "other_bwd")

    def __init__(self, solver, every_node: bool = False, clock=time.perf_counter):
        import torch
        if solver.fused.plan is None:
            raise ValueError("the profile follows the fused path: Solver(fast=True)")
        self.solver, self.every_node = solver, every_node
        self.hooks = 0  # pre-hooks of the last step
        self.sub = copy.copy(solver.fused)  # runs the same plan one entry at a time
        self.weights = torch.tensor(solver.loss_weights, dtype=torch.float32, device=solver.device)
        # (a plan of consecutive entries of one part, the part, the key its forward time goes to, their
        # tops); the layers of the fixed prefix, which the loop passes over, go to "other".
        self.entries = []
        for e in solver.fused.plan:
            part = "other" if _skipped(e, solver.fused.skip) else part_of(e)
            if self.entries and self.entries[-1][1] == part:
                self.entries[-1][0].append(e)
                self.entries[-1][3].extend(_top_names(e))
            else:
                self.entries.append(([e], part, _forward_key(part), _top_names(e)))
        self.times: dict[str, float] = {}
        # The node running now: (its key, when it started). The CPU's autograd engine runs the nodes one
        # at a time on the calling thread, so a node runs from its pre-hook to the next node's.
        self.current = ["other_bwd", 0.0]
        self.clock = clock
        times, current = self.times, self.current

        def pre_for(key):
            def pre(grad_outputs):
                now = clock()
                times[current[0]] += now - current[1]
                current[0], current[1] = key, now
            return pre

        self._pre = {p: pre_for(p + "_bwd") for p in ("conv", "bn", "pool", "fc_loss")}

    def _tag(self, tensors, part: str, parts: dict) -> None:
        """Every autograd node reached from `tensors` that no earlier part made: its part, in `parts`."""
        stack = [t.grad_fn for t in tensors if t is not None and getattr(t, "grad_fn", None) is not None]
        while stack:
            node = stack.pop()
            if node is None or node in parts:
                continue
            parts[node] = part
            stack.extend(nx for nx, _ in node.next_functions)

    def _hook(self, parts: dict, root) -> int:
        """Pre-hooks where the part changes: on each node the backward pass from `root` reaches some of
        whose consumers (the nodes that hand it its gradient) belong to another part, and on the root; a
        node without a hook belongs to the part of the node before it, its consumers'. With
        `every_node`, a hook on every node reached."""
        consumers: dict = {}
        reached, stack = {root}, [root]
        while stack:
            node = stack.pop()
            for nx, _ in node.next_functions:
                if nx is not None:
                    consumers.setdefault(nx, set()).add(parts[node])
                    if nx not in reached:
                        reached.add(nx)
                        stack.append(nx)
        n = 0
        for node in reached:
            part = parts[node]
            if self.every_node or consumers.get(node, set()) != {part}:
                node.register_prehook(self._pre[part])
                n += 1
        return n

    def step(self) -> dict[str, float]:
        """One iteration, as Solver.step() runs it, timed part by part."""
        from mcl.engine import feeds as feeding
        s, sub, clock, times = self.solver, self.sub, self.clock, self.times
        times.clear()
        times.update({k: 0.0 for k in self.KEYS})
        book = 0.0
        seen: dict = {}  # autograd node -> its part
        start = clock()
        inputs = feeding.batch(s.feeds, s.iter)
        if s.fixed_prefix is not None:
            inputs.update(s.fixed_prefix.batch(s.iter))
        sub.plan = []
        blobs = sub(inputs)  # the net's input blobs, as FusedNet.__call__ gathers them
        t = clock()
        times["feed"] += t - start
        for plan, part, key, tops in self.entries:
            sub.plan = plan
            sub._run(blobs)  # FusedNet's own loop, on these entries alone
            t1 = clock()
            times[key] += t1 - t
            if part not in ("feed", "other"):
                self._tag([blobs.get(n) for n in tops] + [v for e in plan for v in _group_vector(e)], part, seen)
            t = clock()
            book += t - t1
        losses = sub.loss_vector(blobs, s.loss_tops)
        total = (losses * self.weights).sum()
        t1 = clock()
        times["fc_loss_fwd"] += t1 - t
        self._tag([total], "fc_loss", seen)
        self.hooks = self._hook(seen, total.grad_fn)
        t = clock()
        book += t - t1
        self.current[0], self.current[1] = "other_bwd", t  # (the engine's set-up, before the first node)
        total.backward()
        t1 = clock()
        times[self.current[0]] += t1 - self.current[1]
        backward = t1 - t
        s.last_rate = s.sgd.apply_update(s.iter)
        t2 = clock()
        times["sgd"] += t2 - t1
        s.last_losses = losses.detach()
        s.iter += 1
        t = clock()
        seen.clear()  # (the tagging's own objects)
        t1 = clock()
        book += t1 - t
        del inputs, blobs, losses, total  # the step's tensors and graph go, as when Solver.step() returns
        end = clock()
        out = dict(times)
        out["other_free"] = end - t1
        out["backward"] = backward
        out["total"] = end - start - book
        out["bookkeeping"] = book
        return out


def _forward_key(part: str) -> str:
    return {"conv": "conv_fwd", "feed": "feed"}.get(part, part + "_fwd")


def _skipped(entry, skip) -> bool:
    """A plan entry the fused loop passes over: a layer of the fixed prefix (its tops are given)."""
    kind, what = entry
    if kind == "layer":
        return what.name in skip
    if kind == "fused":
        return all(m.name in skip for m in what[3])
    return False


def _top_names(entry) -> list[str]:
    kind, what = entry
    if kind == "layer":
        return list(what.tops)
    if kind == "fused":
        return [m.tops[0] for m in what[3]]
    return list(what["tops"])


def _group_vector(entry) -> list:
    kind, what = entry
    return [what["vector"]] if kind == "losses" and "vector" in what else []


def _parts(sample: dict) -> dict[str, float]:
    """One instrumented step's seconds -> the profile's parts in ms ("other": the rest of the step)."""
    ms = {"conv_fwd": sample["conv_fwd"], "conv_bwd": sample["conv_bwd"],
          "bn": sample["bn_fwd"] + sample["bn_bwd"], "pool": sample["pool_fwd"] + sample["pool_bwd"],
          "fc_loss": sample["fc_loss_fwd"] + sample["fc_loss_bwd"], "sgd": sample["sgd"],
          "feed": sample["feed"]}
    ms = {k: v * 1000.0 for k, v in ms.items()}
    ms["other"] = sample["total"] * 1000.0 - sum(ms.values())
    return ms


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def profile_stage(run: Path, stage: str, threads: int, warmup: int = 2, iters: int = 6,
                  machine: dict | None = None, clock: str = "wall") -> dict:
    """Plain and instrumented steps of one stage, in turn: the measured step, the parts, their floors.

    `clock`: "wall" (perf_counter, the benchmark's) or, on one thread only, "cpu": the calling thread's
    CPU time, which is the wall-clock time less what other processes took of the core (on a shared
    machine, the figures the tests hold to each other)."""
    import torch

    from mcl.engine.solver import Solver
    if clock == "cpu" and threads != 1:
        raise ValueError("the thread's CPU time measures a step on one thread only")
    tick = CLOCKS[clock]
    torch.set_num_threads(threads)
    run = Path(run)
    cwd = os.getcwd()
    os.chdir(run)
    try:
        solver = Solver(run, run / "solvers" / f"{stage}_solver.prototxt", device="cpu", fillers="torch")
        fixed_ms_per_row = None
        if solver.fixed_prefix is not None:  # the one-off pass over the split, as bench_engine times it
            t0 = time.perf_counter()
            solver.fixed_prefix.build()
            fixed_ms_per_row = (time.perf_counter() - t0) * 1000.0 / solver.feeds[0].rows
        prof = StepProfiler(solver, clock=tick)
        for _ in range(warmup):
            solver.step()
            prof.step()
        plain, samples = [], []
        for i in range(iters):
            for kind in (("plain", "instrumented") if i % 2 == 0 else ("instrumented", "plain")):
                if kind == "plain":
                    t0 = tick()
                    solver.step()
                    plain.append((tick() - t0) * 1000.0)
                else:
                    samples.append(prof.step())
        work = step_work(solver)
    finally:
        os.chdir(cwd)
    per_step = [_parts(x) for x in samples]
    parts = {p: statistics.median(v[p] for v in per_step) for p in PARTS}
    detail = {k: statistics.median(x[k] * 1000.0 for x in samples)
              for k in StepProfiler.KEYS + ("other_free", "backward", "total", "bookkeeping")}
    res = {"stage": stage, "threads": threads, "iters": iters, "warmup": warmup, "clock": clock,
           "step_ms": statistics.median(plain), "plain_ms": plain,
           "instrumented_ms": statistics.median(x["total"] * 1000.0 for x in samples),
           "parts_ms": parts, "detail_ms": detail, "sum_of_parts_ms": sum(parts.values()),
           "fixed_ms_per_row": fixed_ms_per_row, "work": work}
    if machine is not None:
        add_floors(res, machine)
    return res


def add_floors(res: dict, machine: dict) -> dict:
    """The floors of a stage's profile on a machine: per part and for the whole step, with the ratios."""
    fl = floors(res["work"], machine["peak_gflops"], machine["bandwidth_gbs"])
    res["floor"] = fl
    res["floor_ms"] = sum(f["floor_ms"] for f in fl.values())
    res["ratio"] = {p: (res["parts_ms"][p] / fl[p]["floor_ms"] if fl[p]["floor_ms"] > 0 else None) for p in NAMED}
    res["step_ratio"] = res["step_ms"] / res["floor_ms"] if res["floor_ms"] > 0 else None
    return res


# ---- the table ----------------------------------------------------------------------------------------------------

def machine_line(m: dict) -> str:
    cpu = m["cpu"]
    return (f"{cpu['model']}, {m['threads']} thread(s) of {cpu['cores']} cores; ISA: torch {cpu['torch_capability']} "
            f"(flags: {' '.join(cpu['flags']) or '-'}{', no AVX-512' if cpu['no_avx512'] else ''}); "
            f"fp32 peak {m['peak_gflops']:.1f} GFLOP/s (torch.mm {m['mm_gflops']:.1f}, 3x3 conv "
            f"{m['conv_gflops']:.1f}" + (f", FMA kernel {m['fma_gflops']:.1f}" if m.get("fma_gflops") else "")
            + f"); memory bandwidth {m['bandwidth_gbs']:.1f} GB/s (copy {m['copy_gbs']:.1f}, "
            f"add {m['add_gbs']:.1f})")


def format_table(res: dict, layout: str, batch: int) -> str:
    """One stage's profile: each part's ms, floor ms, ratio, GFLOP and MB, then the whole step."""
    label = STAGE_LABELS.get(res["stage"], res["stage"])
    diff = (res["sum_of_parts_ms"] - res["step_ms"]) / res["step_ms"] * 100.0
    lines = [f"{label}, layout {layout}, batch {batch}, {res['threads']} thread(s): step {res['step_ms']:.2f} ms "
             f"(plain, median of {res['iters']}), parts sum {res['sum_of_parts_ms']:.2f} ms ({diff:+.1f}%)"]
    lines.append(f"  {COLUMNS[0]:<34}{COLUMNS[1]:>9}{COLUMNS[2]:>10}{COLUMNS[3]:>8}{COLUMNS[4]:>9}{COLUMNS[5]:>9}")
    for p in PARTS:
        ms = res["parts_ms"][p]
        if p == "other":
            lines.append(f"  {LABELS[p]:<34}{ms:>9.2f}{'-':>10}{'-':>8}{'-':>9}{'-':>9}")
            continue
        f = res["floor"][p]
        ratio = res["ratio"][p]
        lines.append(f"  {LABELS[p]:<34}{ms:>9.2f}{f['floor_ms']:>10.2f}"
                     f"{(f'{ratio:.1f}x' if ratio is not None else '-'):>8}{f['flop'] / 1e9:>9.2f}"
                     f"{f['bytes'] / 1e6:>9.1f}")
    flop = sum(f["flop"] for f in res["floor"].values())
    moved = sum(f["bytes"] for f in res["floor"].values())
    sr = res["step_ratio"]
    lines.append(f"  {'total (the measured step)':<34}{res['step_ms']:>9.2f}{res['floor_ms']:>10.2f}"
                 f"{(f'{sr:.1f}x' if sr is not None else '-'):>8}{flop / 1e9:>9.2f}{moved / 1e6:>9.1f}")
    return "\n".join(lines)


def largest_gaps(profile: dict, n: int = 3) -> list[tuple[str, str, str, float]]:
    """(layout, stage, part, ms above the floor), the largest first."""
    gaps = []
    for layout, stages in profile["layouts"].items():
        for stage, res in stages.items():
            for p in PARTS:
                above = res["parts_ms"][p] - (res["floor"][p]["floor_ms"] if p != "other" else 0.0)
                gaps.append((layout, stage, p, above))
    return sorted(gaps, key=lambda g: -g[3])[:n]


def report(profile: dict, batch: int) -> str:
    m = profile["machine"]
    lines = ["\nWhere a step of the torch engine goes (CPU; instrumented steps in turn with plain ones; "
             "floor = each layer's max(FLOPs / peak, bytes / bandwidth)):", f"machine: {machine_line(m)}",
             f"load average {profile['load_average'][0]:.2f} -> {profile['load_average'][1]:.2f}"]
    for layout, stages in profile["layouts"].items():
        for res in stages.values():
            lines.append(format_table(res, layout, batch))
    gaps = largest_gaps(profile)
    lines.append("largest gaps to the floor: " + "; ".join(
        f"layout {lay} {STAGE_LABELS[st]}: {LABELS[p]} {ms:.1f} ms above" for lay, st, p, ms in gaps))
    return "\n".join(lines)


# ---- the child process and the parent's side -------------------------------------------------------------------------

def child(job: dict) -> int:
    """In its own process (torch only here): the machine's peak and bandwidth, then every layout and stage."""
    import torch
    torch.set_num_threads(job["threads"])
    machine = measure_machine(job["threads"], quick=job.get("quick", False))
    out = {"machine": machine, "layouts": {}}
    for layout, run in job["runs"].items():
        out["layouts"][layout] = {}
        for stage in job["stages"]:
            out["layouts"][layout][stage] = profile_stage(Path(run), stage, job["threads"], job["warmup"],
                                                          job["iters"], machine)
            print(f"  profiled layout {layout} {stage}: {out['layouts'][layout][stage]['step_ms']:.1f} ms/iter",
                  file=sys.stderr, flush=True)
    Path(job["out"]).write_text(json.dumps(out))
    return 0


def write_run(run: Path, layout_name: str, batch: int, rows: int) -> None:
    """A run folder for the engine benchmarks: the layout's nets and solvers as `make nets` writes them
    (scale 1, seed 0, HDF5) and `rows` random training rows (mcl.data.writers.write_random_train)."""
    from mcl.caffe.runfiles import run_files  # deferred: the parent imports only what it runs
    from mcl.data.writers import write_random_train
    from mcl.fileio import atomic_write
    from mcl.method.layouts import get_layout

    layout = get_layout(layout_name)
    for rel, text in run_files(layout, scale=1.0, seed=0, source="hdf5", batch_size=batch).items():
        atomic_write(run / rel, text)
    write_random_train(run, layout.n_points, rows, seed=0)
    (Path(run) / "snapshots").mkdir(exist_ok=True)


def profile(layouts, batch: int, threads: int, write_run, warmup: int = 2, iters: int = 6,
            stages=STAGES, quick: bool = False) -> dict:
    """The profile of each layout and stage, measured in one child process with `threads` CPU threads
    (the parent imports no torch); prints the tables and returns the figures. `write_run(run, layout,
    batch, rows)` writes a run folder (bench_engine.write_run)."""
    load0 = os.getloadavg()[0]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), GLOG_minloglevel="2")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine's worker runs (mcl/run/worker.py)
    with tempfile.TemporaryDirectory(prefix="mcl-engine-profile-") as tmp:
        runs = {}
        for layout in layouts:
            run = Path(tmp) / f"layout{layout}"
            write_run(run, layout, batch, rows=4 * batch)
            runs[layout] = str(run)
        job = {"runs": runs, "stages": list(stages), "threads": threads, "warmup": warmup, "iters": iters,
               "quick": quick, "out": str(Path(tmp) / "profile.json")}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                              env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the profile's process failed (exit {proc.returncode})")
        out = json.loads(Path(job["out"]).read_text())
    out.update(batch=batch, threads=threads, load_average=[load0, os.getloadavg()[0]])
    print(report(out, batch), flush=True)
    return out


def parse_layouts(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="5,68", help="layouts, comma-separated (default 5,68)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64, the paper's)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first (default 2)")
    ap.add_argument("--iters", type=int, default=6, help="timed steps of each kind (default 6)")
    ap.add_argument("--stages", default=",".join(STAGES), help="stage types (default stage1,stage2,heads)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    out = profile(parse_layouts(args.layouts), args.batch, args.threads, write_run, args.warmup, args.iters,
                  parse_layouts(args.stages))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(json.loads(sys.argv[2])))
    sys.exit(main())
