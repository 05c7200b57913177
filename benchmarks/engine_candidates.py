#!/usr/bin/env python3
"""`make bench-candidates`: candidate speed-ups of the torch engine's fp32 CPU training step, side by side.

Each candidate is one way of running stage 1 (every layer trains; batch 64, the nets as `make nets`
writes them, random rows as benchmarks/bench_engine.py writes them, the images 8-bit pixels normalised
as METHOD §1 says) through the engine's own
mcl.engine.solver.Solver.step(): forward, backward and Caffe's SGD update. A candidate changes the solver's
objects for itself only (its own Solver, wrapped, subclassed or with an attribute replaced); nothing
under mcl/ is edited. The candidates:

  baseline            Solver.step() as the engine runs it: channels-last maps, its own BatchNorm-Scale-ReLU
                      and pooling kernels (mcl/engine/clkernels.py), the heap kept (device.keep_heap)
  nchw_pytorch        the engine before its kernels: NCHW maps, PyTorch's fused BatchNorm and pooling.
                      Every candidate below is a change to this one (as they were first measured)
  nchw_kernels        NCHW maps with the engine's own kernels (MCL_FP32_MAPS=nchw): its convolutions
                      NCHW, the chains and poolings the engine's
  channels_last       the conv weights and the batch in channels-last memory format, so oneDNN's
                      convolutions, PyTorch's BatchNorms and the poolings all run channels-last
  compile_step        torch.compile (inductor, its defaults) of the step: the forward pass and the loss
                      as one compiled graph, its backward compiled with it (AOTAutograd); the SGD update
                      stays eager (CaffeSGD.apply_update computes Caffe's float32 rate in NumPy, which
                      breaks the graph every iteration); the compile time is reported apart. Inductor's
                      layout optimisation turns the convolutions' maps channels-last, and it decomposes
                      BatchNorm into its own reductions
  compile_step_nchw   the same with the layout optimisation off (NCHW maps, BatchNorm decomposed)
  compile_step_aten_bn  the same, NCHW, with BatchNorm left to ATen's kernels (the engine's own), not
                      decomposed: inductor compiles everything around them
  bn_compiled         each BatchNorm-Scale-ReLU chain compiled on its own (inductor), for fewer passes
                      over memory: the normalisation, scale, shift and ReLU fused, and their backward
  bn_pool_compiled    each chain compiled together with the pooling that reads it (the chain's output
                      then need not be written out), the other chains as bn_compiled
  pool_channels_last  the MAX poolings in channels-last (a copy in, the pooling, a copy out)
  uint8_feed          the split held as 8-bit pixels, normalised in the step by METHOD §1's
                      (p - PIXEL_MEAN) * PIXEL_SCALE (mcl.method.layouts): the images in a quarter of
                      the memory
  prefetch            the next batch read in a thread while the current one trains
  uint8_prefetch      both: the next batch's pixels normalised in a thread
  threads_N           N intra-op threads (OMP_NUM_THREADS=N) instead of --threads; its own process
  omp_active          OMP_WAIT_POLICY=ACTIVE (idle threads spin) instead of the engine's PASSIVE
                      (mcl/run/worker.py); its own process, the variable being read when torch loads
  omp_bind            OMP_PROC_BIND=close, OMP_PLACES=cores (each thread kept on one core)

`a+b` (in-process candidates only) stacks candidates: `channels_last+bn_compiled`.

How they are measured
---------------------
One worker process per environment: the "main" worker holds the baseline and every in-process
candidate, each with a Solver of its own, all built alike (the same iteration-0 weights); each
thread or OpenMP candidate has a worker of its own, with a baseline solver. A worker is stopped
(SIGSTOP to its process group) while another works, so no idle thread of one takes a core from
another (OMP_WAIT_POLICY=ACTIVE threads would otherwise spin through the other turns). Each candidate
first takes one step whose gradients and blobs are kept for the numerics check (for the compiled
candidates this step compiles), then --warmup untimed steps. Then --rounds rounds: in each, every
candidate takes a turn of --iters timed steps beside a turn of the baseline's (the baseline first in
every other pair), the candidates in an order rotated by one each round, so that a candidate and the
baseline it is held to see the same load of a shared machine. The figure is the median ms per step over
all its timed steps (the baseline's: over all its turns); the ratio to the baseline is taken per round
(the candidate's median over the median of the baseline's turn beside it), and its median and range
over the rounds are reported. A candidate "helps" only when it was faster than the baseline in every
round (its gain is beyond the spread between rounds) and its numerics are within the bar; it "hurts"
when it was slower in every round; a verdict needs 3 rounds. The compile time of a compiled candidate
is the time of the steps that compiled (the first, and any warm-up step that compiled again) less what
they would have taken as the fastest warm-up step did; it is not in the per-step figures. The floor
is benchmarks/engine_profile.py's: every layer's roofline, max(FLOPs / peak, bytes / bandwidth), the
fp32 peak and the memory bandwidth measured on --threads threads before the rounds and after each round
(the best of those measurements: other jobs only slow them down).

Numerics (from the same iteration-0 weights and the same batch; the baseline's step is the fp32
reference, and the same step in float64, the net and the batch cast, is the exact one): per blob, the
relative L2 difference ||a - b|| / ||b|| (tests/test_engine.py's measure) and the largest absolute
difference, of every parameter gradient against the fp32 baseline and against float64, of the Scale
blobs' gradients (what the BatchNorm backward computes: docs/ENGINE.md's channels-last finding) against
float64, and of every blob after the step (the BatchNorm statistics apart too) against the baseline's.
A conv bias that feeds a BatchNorm has an exact gradient of 0 and is compared in absolute terms (1e-5),
as tests/test_engine.py does. Within the bar (1e-3 per blob, the equivalence tests' stage-2 bar): no
gradient further from float64 than the baseline's by more than 1e-3 (relative, blob by blob), and the
BatchNorm statistics after the step within 1e-3 of the baseline's; a candidate more exact than the
baseline passes though it differs from it. The verdicts hold for the benchmark's batch (random 8-bit
pixels, the nets' iteration-0 weights): the worst blobs are the Scale gradients where they cancel.

  benchmarks/engine_candidates.py --layouts 68,5 --out candidates.json
  benchmarks/engine_candidates.py --layouts 5 --candidates baseline,bn_compiled --rounds 3

Exit status: 0 done, 2 bad arguments, 143 ended by SIGTERM (its workers ended with it, nothing
written). The JSON (--out) is written at the end, to a temporary name renamed over the path.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGE = "stage1"
BAR = 1e-3  # per blob: the equivalence tests' stage-2 bar (Caffe vs torch)
INERT_ABS = 1e-5  # a conv bias feeding a BatchNorm: its exact gradient is 0 (tests/test_engine.py)
TARGET = 1.4  # the step at most this many times its floor
MIN_ROUNDS = 3  # a verdict needs at least this many rounds

# In-process candidates, in the order their changes are applied when stacked (`a+b`).
IN_PROCESS = ("nchw_pytorch", "nchw_kernels", "channels_last", "uint8_feed", "prefetch", "uint8_prefetch", "pool_channels_last", "bn_compiled",
              "bn_pool_compiled", "compile_step", "compile_step_nchw", "compile_step_aten_bn")
STEP_COMPILES = ("compile_step", "compile_step_nchw", "compile_step_aten_bn")
COMPILED = STEP_COMPILES + ("bn_compiled", "bn_pool_compiled")
# Candidates in a process of their own: the environment they start torch with.
PROCESS_ENV = {"omp_active": {"OMP_WAIT_POLICY": "ACTIVE"},
               "omp_bind": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}}
DEFAULT_CANDIDATES = ("baseline",) + IN_PROCESS + tuple(PROCESS_ENV)


def default_candidates(threads: int) -> str:
    """Every candidate, with 1 thread and (where the machine has more cores than --threads) all cores."""
    counts = sorted({1, os.cpu_count() or 1} - {threads})
    return ",".join(DEFAULT_CANDIDATES + tuple(f"threads_{n}" for n in counts))


LABELS = {"baseline": "the engine's step", "nchw_pytorch": "NCHW maps, PyTorch's kernels (the engine before)",
          "nchw_kernels": "NCHW maps, the engine's kernels (MCL_FP32_MAPS=nchw)",
          "channels_last": "channels-last maps, oneDNN convolutions, PyTorch's BatchNorm",
          "compile_step": "torch.compile of the step (inductor)",
          "compile_step_nchw": "torch.compile of the step, NCHW",
          "compile_step_aten_bn": "torch.compile of the step, NCHW, ATen BatchNorm",
          "bn_compiled": "BN-Scale-ReLU chains compiled", "bn_pool_compiled": "chains + pooling compiled",
          "pool_channels_last": "MAX pooling channels-last", "uint8_feed": "uint8 feed, normalised in the step",
          "prefetch": "next batch read in a thread", "uint8_prefetch": "uint8 feed + prefetch",
          "omp_active": "OMP_WAIT_POLICY=ACTIVE", "omp_bind": "OMP_PROC_BIND=close OMP_PLACES=cores"}


class Stop(Exception):
    """SIGTERM: the run ends (workers killed, nothing written), exit 143."""


def label(name: str) -> str:
    if name.startswith("threads_"):
        return f"{name.split('_', 1)[1]} intra-op thread(s)"
    return " + ".join(LABELS.get(p, p) for p in name.split("+"))


# ---- the arguments ---------------------------------------------------------------------------------

def parse_candidates(text: str) -> list[str]:
    """The candidates asked for (baseline first, always), each known; ValueError names one that is not."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError("--candidates: empty list")
    out = ["baseline"]
    for name in names:
        if name == "baseline":
            continue
        parts = name.split("+")
        if len(parts) > 1:
            bad = [p for p in parts if p not in IN_PROCESS]
            if bad or len(set(parts)) != len(parts) or len([q for q in parts if q in STEP_COMPILES]) > 1:
                raise ValueError(f"--candidates: {name!r}: only distinct in-process candidates stack, one "
                                 f"compile_step* at most ({', '.join(IN_PROCESS)})")
        elif name.startswith("threads_"):
            n = name.split("_", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"--candidates: {name!r}: threads_N needs a whole number N >= 1")
        elif name not in IN_PROCESS and name not in PROCESS_ENV:
            raise ValueError(f"--candidates: {name!r} is not a candidate (choose from baseline, "
                             f"{', '.join(IN_PROCESS)}, threads_N, {', '.join(PROCESS_ENV)}, or a+b)")
        if name not in out:
            out.append(name)
    return out


def parse_layouts(text: str) -> list[str]:
    from mcl.method.layouts import LAYOUTS

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("--layouts: empty list")
    for t in items:
        if t not in LAYOUTS:
            raise ValueError(f"--layouts: {t!r} is not one of {', '.join(map(str, LAYOUTS))}")
    return list(dict.fromkeys(items))


# ---- the worker: the candidates of one environment -----------------------------------------------------

def _die_with_parent() -> None:
    """SIGKILL when the parent dies, however it dies: a worker may be stopped (SIGSTOP) at the time, and
    only SIGKILL ends a stopped process."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        sys.exit(1)


class MapFeed:
    """A feed whose 4-axis tops (the images) pass through `fn` per batch; everything else is the feed's."""

    def __init__(self, inner, fn):
        self.inner, self.fn = inner, fn

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch(self, index: int) -> dict:
        out = self.inner.batch(index)
        return {k: (self.fn(v) if v.dim() == 4 else v) for k, v in out.items()}


class PrefetchFeed:
    """The next batch read in a thread of its own while the current one trains."""

    def __init__(self, inner):
        from concurrent.futures import ThreadPoolExecutor

        self.inner, self.pool, self.pending = inner, ThreadPoolExecutor(1), None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch(self, index: int) -> dict:
        if self.pending is not None and self.pending[0] == index:
            out = self.pending[1].result()
        else:
            out = self.inner.batch(index)
        self.pending = (index + 1, self.pool.submit(self.inner.batch, index + 1))
        return out


def uint8_feed(feed):
    """The feed with its images held as 8-bit pixels p, normalised per batch to (p - PIXEL_MEAN) * PIXEL_SCALE
    (METHOD §1, mcl.method.layouts: the one definition that mcl.data.writers.network_input applies); the
    pixels are recovered from the stored floats, which must be exactly such values."""
    import torch

    from mcl.engine.feeds import Feed
    from mcl.method.layouts import PIXEL_MEAN, PIXEL_SCALE

    def normalise(p):
        return (p.to(torch.float32) - PIXEL_MEAN) * PIXEL_SCALE

    tops = {}
    for name, t in feed.tops.items():
        if t.dim() == 4:
            p = torch.round(t / PIXEL_SCALE + PIXEL_MEAN)
            if p.min() < 0 or p.max() > 255 or not torch.equal(normalise(p.to(torch.uint8)), t):
                raise ValueError(f"top {name!r} does not hold 8-bit pixels normalised by METHOD §1")
            t = p.to(torch.uint8)
        tops[name] = t

    class Uint8Feed(Feed):
        def batch(self, index: int) -> dict:
            out = super().batch(index)
            return {k: (normalise(v) if v.dtype == torch.uint8 else v) for k, v in out.items()}

    return Uint8Feed(feed.layer, tops, feed.batch_size)


def _plan_net_class():
    from mcl.engine.fused import FusedNet

    class PlanNet(FusedNet):
        """The engine's FusedNet with some plan entries run by other functions: `overrides` maps an entry's
        index to (fn, bottoms, tops), fn None to leave the entry out (another took its work); every
        other entry runs through FusedNet's own loop, one entry at a time."""

        def __init__(self, base, overrides: dict):
            self.net, self.groups, self.skip, self.kernels = base.net, base.groups, base.skip, base.kernels
            self.full_plan, self.plan, self.overrides = base.plan, base.plan, overrides

        def _run(self, blobs: dict) -> dict:
            for i, entry in enumerate(self.full_plan):
                o = self.overrides.get(i)
                if o is None:
                    self.plan = [entry]
                    FusedNet._run(self, blobs)
                elif o[0] is not None:
                    fn, bottoms, tops = o
                    blobs.update(zip(tops, fn(*[blobs[b] for b in bottoms])))
            self.plan = self.full_plan
            return blobs

    return PlanNet


def _readers(specs) -> dict:
    out: dict = {}
    for s in specs:
        for b in s.bottoms:
            out.setdefault(b, []).append(s.name)
    return out


def _chain_fn(bn, scale, relu, pool=None):
    import torch.nn.functional as F

    bias = scale.bias if "bias" in scale.blob_names else None

    def chain(x):
        y = bn.native(x, scale.weight, bias)  # the engine's fused BatchNorm-Scale (fused.py)
        y = F.relu(y) if relu else y
        return (pool(y),) if pool is not None else (y,)

    return chain


def plan_overrides(solver, kind: str, backend: str, overrides: dict) -> None:
    """Add the overrides of `kind` (bn_compiled, bn_pool_compiled, pool_channels_last) to `overrides`."""
    import torch

    net, plan = solver.net, solver.fused.plan
    readers = _readers(net.specs)

    def add(i, entry):
        if i in overrides:
            raise ValueError(f"{kind}: plan entry {i} is already replaced by another candidate")
        overrides[i] = entry

    for i, (what, item) in enumerate(plan):
        if kind == "pool_channels_last" and what == "layer" and item.type == "Pooling":
            layer = net.layer(item.name)
            if layer.max and not layer.glob:
                def pool_cl(x, layer=layer):
                    return (layer(x.contiguous(memory_format=torch.channels_last)).contiguous(),)
                add(i, (pool_cl, list(item.bottoms), list(item.tops)))
        elif kind in ("bn_compiled", "bn_pool_compiled") and what == "fused":
            bn, scale, relu, members = item
            top = members[-1].tops[0]
            pool = None
            if kind == "bn_pool_compiled" and i + 1 < len(plan):
                nxt_kind, nxt = plan[i + 1]
                own = {m.name for m in members}
                if (nxt_kind == "layer" and nxt.type == "Pooling" and list(nxt.bottoms) == [top]
                        and [r for r in readers.get(top, []) if r not in own] == [nxt.name]):
                    pool = nxt  # (the chain works in place on `top`: only the pooling reads what it gives)
            fn = torch.compile(_chain_fn(bn, scale, relu, net.layer(pool.name) if pool else None),
                               backend=backend, dynamic=False)
            add(i, (fn, [members[0].bottoms[0]], list(pool.tops if pool else [top])))
            if pool is not None:
                add(i + 1, (None, [], []))


class CompiledForward:
    """Solver.fused for compile_step: the forward pass and the loss vector as one compiled function, called
    where Solver.step() calls the fused net; loss_vector hands back what it computed."""

    def __init__(self, fused, tops, backend: str):
        import torch

        def forward_loss(inputs):
            return fused.loss_vector(fused(inputs), tops)

        self.fused, self.fn, self.losses = fused, torch.compile(forward_loss, backend=backend, dynamic=False), None
        self.plan, self.groups, self.net = fused.plan, fused.groups, fused.net

    def __call__(self, inputs):
        self.losses = self.fn(inputs)
        return {}

    def loss_vector(self, blobs, tops):
        out, self.losses = self.losses, None
        return out


def step_backend(kind: str, backend: str):
    """The torch.compile backend of a compile_step* candidate: inductor as it comes (compile_step), with its
    layout optimisation off (_nchw), or also with every BatchNorm decomposition taken out of its table, so
    that ATen's BatchNorm kernels run inside the compiled step (_aten_bn). Another --compile-backend than
    inductor is used as it is (the tests' "eager")."""
    if backend != "inductor" or kind == "compile_step":
        return backend
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    table = select_decomp_table()
    if kind == "compile_step_aten_bn":
        table = {op: fn for op, fn in table.items() if "batch_norm" not in str(op)}

    def compile_nchw(gm, example_inputs):
        return compile_fx(gm, example_inputs, config_patches={"layout_optimization": False}, decompositions=table)

    return compile_nchw


def install(solver, name: str, backend: str) -> None:
    """Change `solver` into candidate `name` (its parts applied in IN_PROCESS's order)."""
    import torch

    parts = [p for p in IN_PROCESS if p in name.split("+")]
    if parts:  # every candidate starts from the engine before its kernels (nchw_pytorch)
        solver.net.to(memory_format=torch.contiguous_format)
        solver.fused.kernels = False
    overrides: dict = {}
    for p in parts:
        if p == "nchw_kernels":
            solver.fused.kernels = True
        if p == "channels_last":
            solver.net.to(memory_format=torch.channels_last)
            solver.feeds = [MapFeed(f, lambda x: x.contiguous(memory_format=torch.channels_last))
                            for f in solver.feeds]
        elif p in ("uint8_feed", "uint8_prefetch"):
            solver.feeds = [uint8_feed(f) for f in solver.feeds]
        elif p in ("pool_channels_last", "bn_compiled", "bn_pool_compiled"):
            plan_overrides(solver, p, backend, overrides)
        if p in ("prefetch", "uint8_prefetch"):
            solver.feeds = [PrefetchFeed(f) for f in solver.feeds]
    if overrides:
        solver.fused = _plan_net_class()(solver.fused, overrides)
    for p in parts:
        if p in STEP_COMPILES:
            solver.fused = CompiledForward(solver.fused, solver.loss_tops, step_backend(p, backend))


class Capture:
    """The gradients of one step, kept as the update reads them (before it): wraps sgd.apply_update once.
    `update=False` (the float64 reference): the gradients only, no update."""

    def __init__(self, solver, update: bool = True):
        self.solver, self.update, self.grads = solver, update, None
        self.own = solver.sgd.__dict__.get("apply_update")
        solver.sgd.apply_update = self

    def __call__(self, it):
        sgd = self.solver.sgd
        self.grads = {f"{b.layer}|{b.index}": b.tensor.grad.detach().contiguous().numpy().copy()
                      for b in sgd.blobs if b.tensor.grad is not None}
        if self.own is None:
            del sgd.apply_update
        else:
            sgd.apply_update = self.own
        if not self.update:
            for b in sgd.blobs:
                b.tensor.grad = None
            return sgd.settings.rate(it)
        return sgd.apply_update(it)


def save_capture(path: Path, grads: dict, blobs: dict | None) -> None:
    import numpy as np

    arrays = {f"g|{k}": v for k, v in grads.items()}
    for name, values in (blobs or {}).items():
        for i, a in enumerate(values):
            arrays[f"b|{name}|{i}"] = np.ascontiguousarray(a)
    np.savez(path, **arrays)


def _dynamo_counts() -> dict:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {"graph_breaks": int(sum(counters["graph_break"].values()))}


def _openmp_runtime() -> str:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for lib, what in (("libiomp", "Intel OpenMP (libiomp)"), ("libgomp", "GNU OpenMP (libgomp)")):
        if lib in maps:
            return what
    return "unknown"


def _inert(net_param) -> list[str]:
    """Blob keys of every conv / inner-product bias whose output goes straight into a BatchNorm."""
    bn_inputs = {lay.bottom[0] for lay in net_param.layer if lay.type == "BatchNorm"}
    return [f"{lay.name}|1" for lay in net_param.layer
            if lay.type in ("Convolution", "InnerProduct") and lay.top[0] in bn_inputs]


class Worker:
    """The worker's side: the candidates of its environment, set up, then stepped turn by turn."""

    def __init__(self, spec: dict):
        import torch

        self.spec, self.torch = spec, torch
        torch.set_num_threads(spec["threads"])
        cfg = torch._dynamo.config
        for key in ("recompile_limit", "cache_size_limit"):  # every chain of every solver its own graph
            if hasattr(cfg, key):
                setattr(cfg, key, 4096)
        for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(cfg, key):
                setattr(cfg, key, 1 << 16)
        self.run = Path(spec["run"])
        self.solvers: dict = {}

    def _solver(self):
        from mcl.engine.solver import Solver

        return Solver(self.run, self.run / "solvers" / f"{STAGE}_solver.prototxt", device="cpu", fillers="torch")

    def setup(self) -> dict:
        torch, spec = self.torch, self.spec
        os.chdir(self.run)
        out: dict = {"variants": {}, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "openmp": _openmp_runtime(),
                     "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                            "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY",
                                                            "KMP_BLOCKTIME") if os.environ.get(k) is not None}}
        if spec.get("describe"):
            out.update(self._describe())
        for name in spec["variants"]:
            compiling = ", compiling" if any(c in name.split("+") for c in COMPILED) else ""
            log(f"  {name}: building, first step (kept for the numerics check){compiling} ...")
            info: dict = {}
            before = _dynamo_counts()
            try:
                t0 = time.perf_counter()
                solver = self._solver()
                install(solver, "" if name == "baseline" or name in spec.get("plain", ()) else name,
                        spec["backend"])
                info["build_s"] = time.perf_counter() - t0
                cap = Capture(solver)
                t0 = time.perf_counter()
                solver.step()
                info["first_step_s"] = time.perf_counter() - t0
                save_capture(Path(spec["numerics_dir"]) / f"{name}.npz", cap.grads, solver.blobs())
                warm = []
                for _ in range(spec["warmup"]):
                    t0 = time.perf_counter()
                    solver.step()
                    warm.append((time.perf_counter() - t0) * 1000.0)
                info["warmup_ms"] = warm
                if not bool(torch.isfinite(solver.last_losses).all()):
                    raise FloatingPointError("the loss is not finite")
                self.solvers[name] = solver
            except Exception as exc:  # a candidate that cannot run is a result, not a crash
                info["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                log(f"  {name}: failed: {info['error'].splitlines()[0][:200]}")
            after = _dynamo_counts()
            if any(c in name.split("+") for c in COMPILED) and after:
                info["dynamo"] = {k: after[k] - before.get(k, 0) for k in after}
            out["variants"][name] = info
        if spec.get("reference"):
            out["reference"] = self._reference()
        if spec.get("floor") and "baseline" in self.solvers:
            out["work"] = self.work()
            log("  the machine's fp32 peak and memory bandwidth ...")
            out["machine"] = self.machine()
        return out

    def _describe(self) -> dict:
        import engine_profile

        from mcl.engine.device import cpu_flags

        flags = cpu_flags()
        wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
        cpu = engine_profile.cpu_description()
        cpu["flags"] = [f for f in wanted if f in flags]
        cpu["avx512"] = "avx512f" in flags
        cpu["amx"] = any(f.startswith("amx") for f in flags)
        return {"cpu": cpu, "mkldnn": bool(self.torch.backends.mkldnn.is_available())}

    def _reference(self) -> dict:
        """The baseline's first step in float64 (net and batch cast): its gradients, and which blobs are
        which (the inert biases, the chains' Scale layers)."""
        log("  float64 reference: the first step's gradients ...")
        solver = self._solver()
        keys = [f"{b.layer}|{b.index}" for b in solver.sgd.blobs]
        solver.net.double()
        for f in solver.feeds:
            f.tops = {k: (v.double() if v.is_floating_point() else v) for k, v in f.tops.items()}
        cap = Capture(solver, update=False)
        solver.step()
        save_capture(Path(self.spec["numerics_dir"]) / "float64.npz", cap.grads, None)
        scales = [f"{item[3][1].name}|{i}" for kind, item in solver.fused.plan if kind == "fused" for i in range(2)]
        return {"inert": _inert(solver.net_param), "scale_blobs": [k for k in scales if k in keys], "blobs": keys,
                "bn_layers": [lay.name for lay in solver.net_param.layer if lay.type == "BatchNorm"]}

    def machine(self) -> dict:
        """The cores' fp32 peak and the memory bandwidth on this worker's threads (engine_profile's)."""
        import engine_profile

        return engine_profile.measure_machine(self.spec["threads"], quick=self.spec.get("quick_floor", False))

    def work(self) -> list[dict]:
        """The FLOPs and bytes of the baseline's step, entry by entry (engine_profile's count)."""
        import engine_profile

        return engine_profile.step_work(self.solvers["baseline"])

    def turn(self, name: str, iters: int) -> dict:
        solver = self.solvers.get(name)
        if solver is None:
            return {"error": f"{name}: not set up"}
        ms = []
        try:
            for _ in range(iters):
                t0 = time.perf_counter()
                solver.step()
                ms.append((time.perf_counter() - t0) * 1000.0)
        except Exception as exc:
            del self.solvers[name]
            return {"error": f"{type(exc).__name__}: {exc}"[:2000], "ms": ms}
        return {"ms": ms}


_REPLY = None  # a worker's answers and progress lines (its stdout); None in the parent


def log(*parts) -> None:
    """A progress line: on stderr in the parent; from a worker, sent to the parent, which prints it."""
    text = " ".join(map(str, parts))
    if _REPLY is not None:
        _REPLY.write(json.dumps({"progress": text}) + "\n")
        _REPLY.flush()
    else:
        print(text, file=sys.stderr, flush=True)


def worker_main(spec: dict) -> int:
    global _REPLY
    _die_with_parent()
    reply = _REPLY = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to the log, not into the replies
    sys.stdout = sys.stderr
    worker = Worker(spec)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["do"] == "setup":
            out = worker.setup()
        elif cmd["do"] == "turn":
            out = worker.turn(cmd["name"], cmd["iters"])
        elif cmd["do"] == "machine":
            out = {"machine": worker.machine()}
        else:
            break
        reply.write(json.dumps(out) + "\n")
        reply.flush()
    return 0


# ---- the parent: workers, rounds, numerics, the table ---------------------------------------------------

class Proc:
    """A worker process in its own process group, stopped between its turns."""

    def __init__(self, spec: dict, env: dict, logfile: Path):
        self.log_path = logfile
        self._log = open(logfile, "w")
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                                  text=True, start_new_session=True)
        self.running = True

    def pause(self) -> None:
        if self.running and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGSTOP)
            self.running = False

    def resume(self) -> None:
        if not self.running and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGCONT)
            self.running = True

    def ask(self, cmd: dict, timeout: float) -> dict:
        self.resume()
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"a worker gave no answer to {cmd['do']} within {timeout:.0f} s{self.tail()}")
            ready, _, _ = select.select([self.p.stdout], [], [], min(left, 1.0))
            if ready:
                line = self.p.stdout.readline()
                if not line:
                    raise RuntimeError(f"a worker ended (exit {self.p.wait()}){self.tail()}")
                msg = json.loads(line)
                if "progress" in msg and len(msg) == 1:
                    log(msg["progress"])
                    continue
                return msg

    def tail(self) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            text = ""
        return f"; its log ends:\n{text}" if text else ""

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGCONT)
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._log.close()


def worker_env(threads: int, tmp: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "GOMP_CPU_AFFINITY"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="PASSIVE",  # as the engine's worker runs (mcl/run/worker.py)
               GLOG_minloglevel="2", TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor-cache"),
               TORCHINDUCTOR_COMPILE_THREADS="1")
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                                  if os.environ.get("PYTHONPATH") else []))
    return env


def write_run(run: Path, layout: str, batch: int) -> None:
    """bench_engine's run folder (the nets as `make nets` writes them, random rows), its images made 8-bit
    pixels normalised as METHOD §1 (mcl.data.writers.network_input), as real crops are."""
    import h5py
    import numpy as np

    from bench_engine import write_run as bench_run
    from mcl.data.writers import network_input

    bench_run(run, layout, batch, rows=4 * batch)
    with h5py.File(run / "data" / "train.h5", "r+") as f:
        n, _, h, w = f["data"].shape
        pixels = np.random.default_rng(1).integers(0, 256, (n, h, w), dtype=np.uint8)
        f["data"][...] = network_input(pixels)


def relerr(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _worst(pairs: list[tuple[str, float]]):
    return max(pairs, key=lambda p: p[1]) if pairs else (None, 0.0)


def compare(cand: dict, base: dict, f64: dict, ref: dict) -> dict:
    """The numerics of one candidate's first step (module docstring): the worst blob of each comparison."""
    import numpy as np

    inert, scales = set(ref["inert"]), set(ref["scale_blobs"])
    grads = [k[2:] for k in base if k.startswith("g|")]
    out: dict = {}

    def worst(keys, mine, other, prefix):
        rel = [(k, relerr(mine[prefix + k], other[prefix + k])) for k in keys if k not in inert]
        ab = [(k, float(np.abs(np.asarray(mine[prefix + k], np.float64) - np.asarray(other[prefix + k], np.float64))
                        .max())) for k in keys]
        inert_abs = [v for k, v in ab if k in inert]
        (rk, rv), (ak, av) = _worst(rel), _worst(ab)
        return {"relerr": rv, "relerr_blob": rk, "max_abs": av, "max_abs_blob": ak,
                "inert_max_abs": max(inert_abs, default=0.0)}

    out["grad_vs_fp32"] = worst(grads, cand, base, "g|")
    if f64:
        out["grad_vs_float64"] = worst(grads, cand, f64, "g|")
        out["bn_scale_grad_vs_float64"] = worst([k for k in grads if k in scales], cand, f64, "g|")
        # what the candidate adds to the engine's own distance from float64, blob by blob
        excess = [(k, relerr(cand["g|" + k], f64["g|" + k]) - relerr(base["g|" + k], f64["g|" + k]))
                  for k in grads if k not in inert]
        k, v = _worst(excess)
        out["grad_excess_vs_float64"] = {"excess": v, "blob": k}
    blobs = [k[2:] for k in base if k.startswith("b|")]
    out["blobs_after_step_vs_fp32"] = worst(blobs, cand, base, "b|")
    bn = set(ref.get("bn_layers", ()))
    out["bn_statistics_after_step_vs_fp32"] = worst([k for k in blobs if k.split("|")[0] in bn], cand, base, "b|")
    out["identical"] = all(np.array_equal(cand[k], base[k]) for k in base)
    return out


def within_bar(r: dict) -> bool:
    """No parameter gradient further from float64 than the baseline's by more than the bar (relative, per
    blob; the inert biases within INERT_ABS), and the BatchNorm statistics after the step within the bar of
    the baseline's. (A candidate more exact than the baseline passes though it differs from it.)"""
    if r["identical"]:
        return True
    g, stats = r.get("grad_excess_vs_float64"), r["bn_statistics_after_step_vs_fp32"]
    grads_ok = g is None or (g["excess"] <= BAR and r["grad_vs_float64"]["inert_max_abs"] <= INERT_ABS)
    return bool(grads_ok and stats["relerr"] <= BAR)


def numerics(names: list[str], folder: Path, ref: dict) -> dict:
    import numpy as np

    def load(name):
        p = folder / f"{name}.npz"
        if not p.exists():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    base, f64 = load("baseline"), load("float64")
    if base is None:
        return {}
    f64 = f64 or {}
    out = {"baseline": compare(base, base, f64, ref)}
    for name in names:
        cand = load(name) if name != "baseline" else None
        if cand is not None:
            r = compare(cand, base, f64, ref)
            r["within_bar"] = within_bar(r)
            out[name] = r
    return out


def summarise(names: list[str], times: dict, paired: dict, errors: dict, setup: dict, num: dict,
              floor_ms: float | None) -> dict:
    """Per candidate: its median ms per step, the ratio to the baseline's turn beside it in each round (median
    and range), against the floor, the compile time, the numerics and the verdict. `times[name]`: the
    candidate's timed steps per round; `paired[name]`: the baseline's turn beside it in the same round."""
    out = {}
    base_flat = [x for name in names if name != "baseline" for r in paired.get(name, []) for x in r]
    base_turns = [statistics.median(r) for name in names if name != "baseline" for r in paired.get(name, []) if r]
    for name in names:
        info = dict(setup.get(name, {}))
        rounds = times.get(name, []) if name != "baseline" else [base_flat]
        res: dict = {"label": label(name), **{k: v for k, v in info.items() if k != "error"}}
        err = info.get("error") or errors.get(name)
        if err:
            res["error"] = err
        flat = [x for r in rounds for x in r]
        if flat:
            med = statistics.median(flat)
            res.update(ms_per_iter=med, fastest_ms=min(flat), timed_steps=len(flat))
            if name != "baseline":
                res["all_ms"], res["baseline_beside_ms"] = rounds, paired.get(name, [])
                beside = [x for r in paired.get(name, []) for x in r]
                if beside:
                    res["baseline_beside_median_ms"] = statistics.median(beside)
                ratios = [statistics.median(r) / statistics.median(b) for r, b in zip(rounds, paired.get(name, []))
                          if r and b]
                if ratios:
                    res.update(ratio=statistics.median(ratios), ratio_rounds=ratios,
                               ratio_range=[min(ratios), max(ratios)])
            if floor_ms:
                res["vs_floor"], res["fastest_vs_floor"] = med / floor_ms, min(flat) / floor_ms
            if "first_step_s" in info and any(c in name.split("+") for c in COMPILED):
                warm = info.get("warmup_ms", [])
                # the steps that compiled (the first, and any warm-up step that compiled again), less the time
                # they would have taken as the fastest warm-up step did; with no warm-up, the first step whole
                res["compile_s"] = max(0.0, info["first_step_s"] + sum(warm) / 1000.0
                                       - (1 + len(warm)) * min(warm) / 1000.0) if warm else info["first_step_s"]
        if name in num:
            res["numerics"] = num[name]
        res["verdict"] = verdict(name, res)
        out[name] = res
    spread = (max(base_turns) - min(base_turns)) / statistics.median(base_turns) if base_turns else None
    return {"candidates": out, "baseline_turn_medians_ms": base_turns, "baseline_spread": spread}


def verdict(name: str, res: dict) -> str:
    if name == "baseline":
        return "reference"
    if "ratio_range" not in res:
        return "failed" if res.get("error") else "not measured"
    if len(res["ratio_rounds"]) < MIN_ROUNDS:
        return f"no verdict (fewer than {MIN_ROUNDS} rounds)"
    lo, hi = res["ratio_range"]
    ok = res.get("numerics", {}).get("within_bar", True)
    if hi < 1.0:
        return "helps" if ok else "faster, numerics outside the bar"
    if lo > 1.0:
        return "hurts"
    return "no clear difference" if ok else "no clear difference, numerics outside the bar"


def best_machine(measured: list[dict]) -> dict | None:
    """The machine's floor figures from several measurements (other jobs only ever slow one down): the
    highest peak and the highest bandwidth, with the figures each came from."""
    if not measured:
        return None
    peak = max(measured, key=lambda m: m["peak_gflops"])
    bw = max(measured, key=lambda m: m["bandwidth_gbs"])
    return {**{k: peak[k] for k in ("threads", "peak_gflops", "mm_gflops", "conv_gflops")},
            **{k: bw[k] for k in ("bandwidth_gbs", "copy_gbs", "add_gbs")},
            "measurements": [{k: m[k] for k in ("peak_gflops", "bandwidth_gbs")} for m in measured]}


def floor_of(work: list[dict], machine: dict) -> dict:
    from engine_profile import floors

    parts = floors(work, machine["peak_gflops"], machine["bandwidth_gbs"])
    return {"floor_ms": sum(p["floor_ms"] for p in parts.values()),
            "parts_ms": {k: v["floor_ms"] for k, v in parts.items()},
            "gflop": sum(p["flop"] for p in parts.values()) / 1e9, "gbytes": sum(p["bytes"] for p in parts.values()) / 1e9}


def measure_layout(layout: str, names: list[str], args, tmp: Path, machines: list[dict]) -> dict:
    """Every candidate of one layout, set up and then timed round by round, each turn beside a baseline turn.
    Appends the machine measurements made here to `machines`."""
    t_start, load0 = time.time(), os.getloadavg()
    run = tmp / f"layout{layout}"
    write_run(run, layout, args.batch)
    ndir = tmp / f"numerics{layout}"
    ndir.mkdir()
    main_names = [n for n in names if n == "baseline" or n.split("+")[0] in IN_PROCESS]
    floor = args.floor != "off"
    specs = [("main", {"variants": main_names, "threads": args.threads, "reference": True, "floor": floor,
                       "quick_floor": args.floor == "quick", "describe": True}, {})]
    for n in names:
        if n.startswith("threads_"):
            specs.append((n, {"variants": [n], "plain": [n], "threads": int(n.split("_")[1])}, {}))
        elif n in PROCESS_ENV:
            specs.append((n, {"variants": [n], "plain": [n], "threads": args.threads}, PROCESS_ENV[n]))
    procs: dict[str, Proc] = {}
    where: dict[str, str] = {}
    setup: dict = {}
    main_info: dict = {}
    times: dict = {n: [] for n in names}
    paired: dict = {n: [] for n in names}
    errors: dict = {}

    def turn(name: str) -> list[float]:
        proc = procs[where[name]]
        for other in procs.values():
            if other is not proc:
                other.pause()
        got = proc.ask({"do": "turn", "name": name, "iters": args.iters}, args.timeout)
        if got.get("error"):
            errors[name] = got["error"]
            log(f"  {name}: failed: {got['error'].splitlines()[0][:200]}")
        return got.get("ms", [])

    try:
        for key, spec, extra in specs:
            spec.update(run=str(run), warmup=args.warmup, backend=args.compile_backend, numerics_dir=str(ndir))
            env = worker_env(spec["threads"], tmp, extra)
            log(f"[candidates] layout {layout}: worker {key} ({spec['threads']} thread(s)"
                f"{', ' + ' '.join(f'{k}={v}' for k, v in extra.items()) if extra else ''}): "
                f"{', '.join(spec['variants'])}")
            proc = Proc(spec, env, tmp / f"worker-{layout}-{key}.log")
            procs[key] = proc
            info = proc.ask({"do": "setup"}, args.timeout)
            proc.pause()
            for n in spec["variants"]:
                where[n] = key
                setup[n] = info["variants"][n]
                setup[n]["threads"] = info["threads"]
                setup[n]["env"] = info["env"]
            if key == "main":
                main_info = info
                if info.get("machine"):
                    machines.append(info["machine"])
        if "error" in setup["baseline"]:
            raise RuntimeError(f"the baseline could not run: {setup['baseline']['error']}")
        live = [n for n in names if n != "baseline" and "error" not in setup[n]]
        for r in range(args.rounds):
            line = []
            k = r % len(live) if live else 0
            for i, n in enumerate(live[k:] + live[:k]):
                if n in errors:
                    times[n].append([])
                    paired[n].append([])
                    continue
                first_base = (r + i) % 2 == 0  # the baseline's turn before the candidate's, or after it
                b = turn("baseline") if first_base else None
                c = turn(n)
                if not first_base:
                    b = turn("baseline")
                times[n].append(c)
                paired[n].append(b if c else [])
                if c and b:
                    line.append(f"{n} {statistics.median(c) / statistics.median(b):.2f}")
            base = [statistics.median(x[-1]) for x in paired.values() if x and x[-1]]
            log(f"[candidates] layout {layout} round {r + 1}/{args.rounds}: baseline "
                f"{statistics.median(base) if base else float('nan'):.0f} ms/step; candidate / baseline beside it: "
                f"{', '.join(line)}")
            if floor:  # the peak and the bandwidth again (about a second): the floor takes the best
                for other in procs.values():
                    if other is not procs["main"]:
                        other.pause()
                machines.append(procs["main"].ask({"do": "machine"}, args.timeout)["machine"])
    finally:
        for proc in procs.values():
            proc.close()
    ref = main_info.get("reference")
    num = numerics(names, ndir, ref) if ref else {}
    out = {"layout": layout, "work": main_info.get("work"), "times": times, "paired": paired, "errors": errors,
           "setup": setup, "numerics": num, "load_average": [load0[0], os.getloadavg()[0]],
           "wall_s": time.time() - t_start, "workers": {k: s["variants"] for k, s, _ in specs},
           "describe": {k: main_info.get(k) for k in ("cpu", "mkldnn", "torch", "openmp") if k in main_info}}
    return out


def measure(layouts: list[str], names: list[str], args) -> dict:
    t0 = time.time()
    load0 = os.getloadavg()
    doc: dict = {"benchmark": "engine_candidates", "stage": STAGE,
                 "settings": {"layouts": layouts, "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
                              "iters": args.iters, "warmup": args.warmup, "candidates": names,
                              "compile_backend": args.compile_backend, "floor": args.floor, "bar": BAR,
                              "target_vs_floor": TARGET},
                 "load_average_start": list(load0), "layouts": {}}
    machines: list[dict] = []
    raw = {}
    with tempfile.TemporaryDirectory(prefix="mcl-candidates-") as tmp:
        for layout in layouts:
            raw[layout] = measure_layout(layout, names, args, Path(tmp), machines)
    machine = best_machine(machines)
    desc = next(iter(raw.values()))["describe"]
    for layout, m in raw.items():
        floor = floor_of(m["work"], machine) if machine and m.get("work") else None
        res = summarise(names, m["times"], m["paired"], m["errors"], m["setup"], m["numerics"],
                        floor["floor_ms"] if floor else None)
        res.update(layout=layout, floor=floor, load_average=m["load_average"], wall_s=m["wall_s"],
                   workers=m["workers"])
        if m["numerics"].get("baseline"):
            res["baseline_numerics"] = m["numerics"]["baseline"]
        doc["layouts"][layout] = res
    doc["machine"] = {**desc.get("cpu", {}), "mkldnn": desc.get("mkldnn"), "openmp": desc.get("openmp"),
                      "floor_figures": machine}
    doc["torch"] = desc.get("torch")
    doc["load_average_end"] = list(os.getloadavg())
    doc["wall_s"] = time.time() - t0
    return doc


def _f(x, fmt="{:.1f}", none="-"):
    return none if x is None else fmt.format(x)


def table(doc: dict) -> str:
    m = doc.get("machine", {})
    fl = m.get("floor_figures") or {}
    lines = [f"CPU: {m.get('model')}, {m.get('cores')} cores (flags: {' '.join(m.get('flags', [])) or '-'}; "
             f"OpenMP: {m.get('openmp')}), torch {doc.get('torch')}; load average "
             f"{doc['load_average_start'][0]:.2f} at the start, {doc['load_average_end'][0]:.2f} at the end; "
             f"{doc['wall_s']:.0f} s",
             f"stage 1, batch {doc['settings']['batch']}, {doc['settings']['threads']} thread(s) unless said; "
             f"{doc['settings']['rounds']} rounds, each candidate's turn of {doc['settings']['iters']} timed steps "
             f"beside a baseline turn; floor from fp32 peak {_f(fl.get('peak_gflops'))} GFLOP/s, bandwidth "
             f"{_f(fl.get('bandwidth_gbs'))} GB/s (best of {len(fl.get('measurements', []))} measurements)"]
    for layout, res in doc["layouts"].items():
        floor = (res.get("floor") or {}).get("floor_ms")
        spread = res.get("baseline_spread")
        lines += ["", f"layout {layout} points: floor {_f(floor)} ms; the baseline's turns spread "
                      f"{_f(spread * 100 if spread is not None else None, '{:.0f}')}% (max - min over median); "
                      f"load average {res['load_average'][0]:.2f} -> {res['load_average'][1]:.2f}",
                  "| candidate | ms/step (fastest) | baseline beside it | vs baseline (range over rounds) | vs floor "
                  "(fastest) | grads vs fp32 | grads vs float64 (BN scale) | excess over fp32's | BN statistics vs "
                  "fp32 | within bar | compile s | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in res["candidates"].items():
            if "ms_per_iter" not in c:
                lines.append(f"| {name} | - | - | - | - | - | - | - | - | - | - | {c['verdict']}: "
                             f"{c.get('error', '').splitlines()[0][:120] if c.get('error') else ''} |")
                continue
            rng = c.get("ratio_range")
            ratio = (f"{c['ratio']:.2f}x ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "-") if name != "baseline" else "1"
            n = c.get("numerics") or res.get("baseline_numerics") if name == "baseline" else c.get("numerics")
            cells = ["-"] * 5
            if n:
                g64 = n.get("grad_vs_float64", {})
                f64 = (f"{_f(g64.get('relerr'), '{:.1e}')} "
                       f"({_f(n.get('bn_scale_grad_vs_float64', {}).get('relerr'), '{:.1e}')})")
                if name == "baseline":
                    cells = ["-", f64, "-", "-", "-"]
                elif n["identical"]:
                    cells = ["bit-identical", f64, "0", "0", "yes"]
                else:
                    cells = [f"{n['grad_vs_fp32']['relerr']:.1e}", f64,
                             _f(n.get("grad_excess_vs_float64", {}).get("excess"), "{:.1e}"),
                             f"{n['bn_statistics_after_step_vs_fp32']['relerr']:.1e}",
                             "yes" if n["within_bar"] else "NO"]
            floor_cell = (f"{_f(c.get('vs_floor'), '{:.2f}x')} ({_f(c.get('fastest_vs_floor'), '{:.2f}x')})"
                          if c.get("vs_floor") else "-")
            lines.append(f"| {name} | {c['ms_per_iter']:.1f} ({c['fastest_ms']:.1f}) | "
                         f"{_f(c.get('baseline_beside_median_ms'))} | {ratio} | {floor_cell} | "
                         f"{' | '.join(cells)} | {_f(c.get('compile_s'))} | {c['verdict']} |")
    lines += ["", f"(numerics of the first step, the worst blob's relative L2 difference; within the bar: no gradient "
                  f"further from float64 than the baseline's by more than {BAR:g}, the BatchNorm statistics within "
                  f"{BAR:g} of the baseline's; target: the step at most {TARGET}x its floor)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    doc_parts = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog="engine_candidates.py", description=doc_parts[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(doc_parts[1:]))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--layouts", default="68,5", help="layouts, comma-separated (default 68,5)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64, the paper's)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of the baseline (default 2)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds; in each, every candidate takes one turn beside a baseline turn (default 5)")
    ap.add_argument("--iters", type=int, default=2, help="timed steps per turn (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the numerics step (default 2)")
    ap.add_argument("--candidates", default=None,
                    help="comma-separated (default: every candidate, threads_1 and "
                         "threads_<cores> where the machine has more cores than --threads)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend of the compiled candidates (default inductor)")
    ap.add_argument("--floor", default="full", choices=("full", "quick", "off"),
                    help="measure the fp32 peak and bandwidth for the floor: full, quick (smaller), off")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds a worker may take per command (default 1200)")
    ap.add_argument("--out", help="write the figures to this JSON file (atomically)")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    try:
        layouts = parse_layouts(args.layouts)
        names = parse_candidates(args.candidates if args.candidates is not None
                                 else default_candidates(max(args.threads, 1)))
        for key in ("batch", "threads", "rounds", "iters"):
            if getattr(args, key) < 1:
                raise ValueError(f"--{key}: must be at least 1, got {getattr(args, key)}")
        if args.warmup < 0:
            raise ValueError(f"--warmup: must be 0 or more, got {args.warmup}")
        if args.timeout <= 0:
            raise ValueError("--timeout: must be positive")
        if not args.compile_backend.strip():
            raise ValueError("--compile-backend: empty")
        if args.out and Path(args.out).is_dir():
            raise ValueError(f"--out: {args.out} is a folder")
    except ValueError as e:
        print(f"engine_candidates: {e}", file=sys.stderr)
        return 2

    def on_term(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        doc = measure(layouts, names, args)
        print(table(doc), flush=True)
        if args.out:
            from mcl.fileio import atomic_write

            atomic_write(args.out, json.dumps(doc, indent=1) + "\n")
    except Stop:
        print("engine_candidates: ended by SIGTERM; nothing written", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
