#!/usr/bin/env python3
"""`make gpu-check`: the torch engine on a device, checked against the CPU step by step, and timed.

Stage 1, stage 2 and the joint heads (68 points, batch 64) train --steps iterations on the CPU
and on --device from the same iteration-0 model (the engine's own seeded fillers); it checks
the per-step losses (1e-4 relative) and every blob against the CPU, that two runs on the device
give the same bits, that a run killed and resumed from a snapshot equals the uninterrupted run,
that snapshots restore across devices, and that every tensor is on the device; then it times
the three stage types (ms per iteration: throughput and latency) and projects the paper's
68-point schedule (180k stage-1 + 3 x 60k iterations).

  PYTHONPATH=. python3 benchmarks/gpu_check.py --device cuda --json gpu-check.json   (from the checkout; or make gpu-check)
  PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --steps 5   (the same checks on the CPU against itself)

Needs Python, NumPy, h5py, protobuf and PyTorch only (no Caffe, no .venv): the project's tree
can be carried to a GPU machine. Exit status: 0 every check passed, 1 one failed, 2 bad input

How it works
------------
`make gpu-check`: the torch engine on a device, checked against the CPU step by step.

Stage 1 (every layer trains), stage 2 (the first six convolutions fixed, their pass over the
split cached) and the joint heads, as `make nets` generates them (68 points, batch 64), train
`steps` iterations on the reference device (the CPU) and on the device under test, from the
same iteration-0 model: stage 1 from the engine's own seeded fillers (mcl/engine/fillers.py),
stage 2 and the heads from stage 1's reference model after its steps, as Algorithm 1 starts
them (its BatchNorm statistics are then real ones, which the fixed layers use). Every run
starts by restoring one iteration-0 snapshot. The checks, per stage:

- losses: every step's loss on the device within LOSS_RTOL (1e-4) relative of the
  reference's, or within CHAOS_FACTOR times how far the reference drifts from itself when
  its weights move by one float32 ulp (the free-running rule of tests/test_engine.py, the
  CPU-vs-Caffe test: training is a chaotic map in float32, and at stage 1's learning rate
  a one-ulp change grows past 1e-4 within 20 steps; the drift is measured here, on the
  same nets and batches, not assumed);
- blobs: after the last step every blob within FREE_FLOOR (1e-4) relative L2 or
  CHAOS_FACTOR times that drift, for the same reason: one step from the same state agrees
  to float32 accumulation error (about sqrt(M) x 6e-8 for sums of M terms, 1e-5 at the
  20,000 terms of a gradient here) and training amplifies it; a conv bias feeding a
  BatchNorm (its exact gradient is 0: rounding noise in both) within INERT_ABS absolute;
  the fixed layers bit-identical to iteration 0 on both devices (nothing updates them);
- repeatable: a second run on the device gives the same bits (every loss, blob and momentum
  history): the deterministic settings' claim (mcl/engine/device.py);
- resume: a run killed after the snapshot at step k and restored from it in a new solver
  ends with the same bits as the uninterrupted run;
- across devices: the device's snapshot at step k restored on the reference device, and
  the reference's on the device, hold the same bits as the solver that wrote it, and the
  next step's loss (a forward pass from the same state) agrees within LOSS_RTOL;
- on the device: every tensor the solver holds (weights, BatchNorm statistics, histories,
  the split, the fixed-layer caches) is on the device, and so is every tensor a torch
  function returns during one more step (a TorchFunctionMode sees them all).

Then each stage type is timed on the device: the fixed layers' one pass over the split on
its own, then `time_steps` iterations with one synchronisation at the end (throughput, ms
per iteration), then `time_steps` iterations synchronised one by one (latency, the
median). The paper's 68-point schedule (mcl/method/stages.py: 180k stage-1 and 3 x 60k
iterations, stage 3 at stage 1's rate) is projected from the throughput, with the fixed
layers' pass over 300-W's training rows counted.

It needs Python, NumPy, h5py, protobuf and PyTorch only: no Caffe (the fillers are the
engine's own), no OpenCV (mcl.data is not imported: the synthetic rows are written here),
so the project's tree can be carried to a GPU machine and run with its own Python.
With `device="cpu"` the same checks run on the CPU against itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from mcl.caffe.runfiles import run_files
from mcl.engine import CUBLAS_WORKSPACE
from mcl.engine.device import DeviceError, check_device, configure_device, device_facts
from mcl.engine.schedule import BENCHED, LABELS, project
from mcl.engine.solver import Solver
from mcl.fileio import atomic_write
from mcl.method.layouts import get_layout
from mcl.method.stages import BATCH_SIZE

REFERENCE = "cpu"
# Tolerances: tests/test_engine.py's free-running comparison (module docstring says why).
LOSS_RTOL = 1e-4
FREE_FLOOR = 1e-4
INERT_ABS = 1e-5
CHAOS_FACTOR = 4
PERTURB, PERTURB_RUNS = 1e-7, 2  # about one float32 ulp, relative; runs that measure the drift
WARMUP = 2  # untimed iterations before the timed blocks (allocations, cuDNN's first calls)


@dataclass
class Check:
    stage: str
    name: str
    passed: bool
    detail: str


class OffDevice(TorchFunctionMode):
    """Every tensor a torch function returns while active: how many, and those not on `device`."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.seen, self.off = torch.device(device), 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen += 1
                if t.device.type != self.device.type:
                    self.off.append(f"{getattr(func, '__name__', repr(func))} on {t.device}")
        return out


# ---- the run folders -----------------------------------------------------------------------------

def write_rows(path: Path, n_points: int, rows: int, seed: int = 0) -> None:
    """Random training rows in the HDF5 form the nets read (data, landmarks, inv_iod; d = 20 pixels)."""
    import h5py  # the one h5py use here; the engine's feeds import it the same way

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"] = rng.uniform(-1, 1, (rows, 1, 50, 50)).astype(np.float32)
        f["landmarks"] = rng.uniform(5, 45, (rows, 2 * n_points)).astype(np.float32)
        f["inv_iod"] = np.full(rows, 1 / 20, np.float32)


class Workspace:
    """One run folder per solver (so no run's snapshot is read for another's), all on one data file."""

    def __init__(self, root: Path, layout: str, batch: int):
        self.root, self.count = Path(root), 0
        layout_obj = get_layout(layout)
        self.files = run_files(layout_obj, scale=1.0, seed=0, source="hdf5", batch_size=batch)
        self.data = self.root / "rows.h5"
        # Not a multiple of the batch: batches wrap around mid-batch, as over a real split.
        write_rows(self.data, layout_obj.n_points, 2 * batch + batch // 2)

    def folder(self, role: str) -> Path:
        self.count += 1
        run = self.root / f"{self.count:02d}-{role}"
        for rel, text in self.files.items():
            atomic_write(run / rel, text)
        atomic_write(run / "data/train.txt", f"{self.data}\n")
        (run / "snapshots").mkdir(exist_ok=True)
        return run

    def solver(self, stage: str, role: str, device) -> Solver:
        return Solver(self.folder(role), f"solvers/{stage}_solver.prototxt", device=str(device), fillers="torch")


def carry(state: Path, solver: Solver) -> Path:
    """A snapshot (solverstate and its caffemodel) copied into the solver's run folder, as it
    would be carried to another machine; returns the copy's solverstate."""
    for path in (state, state.with_suffix(".caffemodel")):
        shutil.copy2(path, solver.run / "snapshots" / path.name)
    return solver.run / "snapshots" / state.name


def start(solver: Solver, state: Path) -> Solver:
    """The solver restored from a snapshot (of any run, any device)."""
    solver.restore(carry(state, solver))
    return solver


def state_of(solver: Solver) -> dict[str, np.ndarray]:
    """Every blob and every momentum history of the solver, copied to the host."""
    out = {f"{name}[{i}]": a for name, arrays in solver.blobs().items() for i, a in enumerate(arrays)}
    for b, h in zip(solver.sgd.blobs, solver.sgd.history):
        out[f"{b.layer}[{b.index}] history"] = h.detach().cpu().numpy().copy()
    return out


def train(solver: Solver, steps: int, snapshot_at: int | None = None):
    """(losses, snapshot at `snapshot_at` or None, state there) after `steps` more iterations."""
    losses, snap, at = [], None, None
    for _ in range(steps):
        solver.step()
        losses.append(solver.loss)
        if solver.iter == snapshot_at:
            snap, at = solver.snapshot(), state_of(solver)
    return losses, snap, at


def perturb(solver: Solver, seed: int) -> Solver:
    """Every weight moved by a relative PERTURB (about one float32 ulp); BatchNorm statistics kept."""
    rng = np.random.default_rng(seed)
    types = {lay.name: lay.type for lay in solver.net_param.layer}
    blobs = {name: [a if types.get(name) == "BatchNorm" else
                    (a * (1 + PERTURB * rng.uniform(-1, 1, a.shape))).astype(np.float32) for a in arrays]
             for name, arrays in solver.blobs().items()}
    solver.net.load_caffe_blobs(blobs)
    return solver


def relerr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def inert(net_param) -> set[str]:
    """The bias of every convolution / inner product whose output goes straight into a BatchNorm."""
    bn_inputs = {lay.bottom[0] for lay in net_param.layer if lay.type == "BatchNorm"}
    return {f"{lay.name}[1]" for lay in net_param.layer
            if lay.type in ("Convolution", "InnerProduct") and lay.top[0] in bn_inputs}


def same_bits(a: dict, b: dict) -> list[str]:
    """Names of the arrays that differ in any bit (or exist in one only)."""
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k].tobytes() != b[k].tobytes())


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---- the checks of one stage ---------------------------------------------------------------------

def check_stage(ws: Workspace, stage: str, device: torch.device, steps: int, init: Path | None):
    """The checks of one stage (module docstring), the reference's final model for the next stage, the
    figures behind the checks and the iteration-0 snapshot."""
    ref0 = ws.solver(stage, "reference-start", REFERENCE)
    if init is not None:
        ref0.copy_from(init)
    s0 = ref0.snapshot()  # iteration 0: every run of this stage starts from it
    start_state = state_of(ref0)
    k = max(1, steps // 2)
    out: list[Check] = []

    ref = start(ws.solver(stage, "reference", REFERENCE), s0)
    ref_losses, ref_snap, ref_at_k = train(ref, steps, snapshot_at=k)
    ref_end = state_of(ref)
    drift_losses, drift_blobs = [0.0] * steps, {}
    for seed in range(PERTURB_RUNS):
        p = perturb(start(ws.solver(stage, f"reference-ulp{seed}", REFERENCE), s0), seed)
        losses, _, _ = train(p, steps)
        drift_losses = [max(d, abs(x - r) / abs(r)) for d, x, r in zip(drift_losses, losses, ref_losses)]
        for name, a in state_of(p).items():
            drift_blobs[name] = max(drift_blobs.get(name, 0.0), relerr(a, ref_end[name]))
    drift_losses = list(np.maximum.accumulate(drift_losses))  # drift only grows (as tests/test_engine.py)

    dev = start(ws.solver(stage, "device", device), s0)
    dev_losses, dev_snap, dev_at_k = train(dev, steps, snapshot_at=k)
    dev_end = state_of(dev)

    # losses, step by step
    rel = [abs(x - r) / abs(r) for x, r in zip(dev_losses, ref_losses)]
    bad = [i for i, (r, d) in enumerate(zip(rel, drift_losses)) if r > max(LOSS_RTOL, CHAOS_FACTOR * d)]
    out.append(Check(stage, "losses", not bad and all(np.isfinite(dev_losses)),
                     f"largest relative difference {max(rel):.1e} (reference's one-ulp drift up to "
                     f"{max(drift_losses):.1e}; bound max({LOSS_RTOL:g}, {CHAOS_FACTOR} x drift))"
                     + (f"; over it at steps {bad}" if bad else "")))

    # blobs after the last step
    skip, fixed = inert(ref.net_param), set(ref.fixed_prefix.skip) if ref.fixed_prefix is not None else set()
    worst, off = (0.0, ""), []
    for name, a in dev_end.items():
        if name.endswith("history"):
            continue
        if name.split("[")[0] in fixed:
            if a.tobytes() != start_state[name].tobytes() or ref_end[name].tobytes() != start_state[name].tobytes():
                off.append(f"{name} (a fixed layer) changed")
            continue
        if name in skip:
            if np.abs(a - ref_end[name]).max() > INERT_ABS:
                off.append(f"{name} {np.abs(a - ref_end[name]).max():.1e} absolute")
            continue
        e = relerr(a, ref_end[name])
        worst = max(worst, (e, name))
        if e > max(FREE_FLOOR, CHAOS_FACTOR * drift_blobs[name]):
            off.append(f"{name} {e:.1e} (drift {drift_blobs[name]:.1e})")
    out.append(Check(stage, "blobs", not off,
                     f"{len([n for n in dev_end if not n.endswith('history')])} blobs; largest relative L2 "
                     f"{worst[0]:.1e} ({worst[1]}); the {len(fixed)} layers of the fixed prefix bit-identical to iteration 0"
                     if not off else f"outside the bound: {_names(off)}"))

    # repeatable
    again = start(ws.solver(stage, "device-again", device), s0)
    again_losses, _, _ = train(again, steps)
    differ = same_bits(dev_end, state_of(again))
    out.append(Check(stage, "repeatable", not differ and again_losses == dev_losses,
                     "two runs on the device: every loss, blob and history the same bits" if not differ
                     and again_losses == dev_losses else
                     f"two runs differ: {_names(differ) or 'in their losses'}"))

    # kill and resume
    resumed = start(ws.solver(stage, "device-resumed", device), dev_snap)
    resumed_losses, _, _ = train(resumed, steps - k)
    differ = same_bits(dev_end, state_of(resumed))
    ok = not differ and resumed_losses == dev_losses[k:]
    out.append(Check(stage, "resume", ok, f"snapshot at step {k} of {steps}, restored in a new solver: "
                     + ("the same bits as the uninterrupted run" if ok else
                        f"differs from the uninterrupted run: {_names(differ) or 'in its losses'}")))

    # snapshots across devices
    problems = []
    for src, snap, at_k, losses, dst in (("device", dev_snap, dev_at_k, dev_losses, REFERENCE),
                                          ("reference", ref_snap, ref_at_k, ref_losses, device)):
        other = start(ws.solver(stage, f"{src}-snapshot-on-{dst}".replace(":", ""), dst), snap)
        differ = same_bits(at_k, state_of(other))
        if differ or other.iter != k:
            problems.append(f"the {src}'s snapshot restored on {dst}: {_names(differ) or f'iteration {other.iter}'}")
        if steps > k:
            loss, _, _ = train(other, 1)
            if abs(loss[0] - losses[k]) > LOSS_RTOL * abs(losses[k]):
                problems.append(f"the {src}'s snapshot on {dst}: next loss {loss[0]:.7g}, {losses[k]:.7g} where written")
    out.append(Check(stage, "across devices", not problems,
                     f"snapshots at step {k} restored {device} -> {REFERENCE} and {REFERENCE} -> {device}: same bits"
                     + (", next loss within 1e-4" if steps > k else "") if not problems else "; ".join(problems)))

    # every tensor on the device
    held = list(resumed.net.parameters()) + list(resumed.net.buffers()) + list(resumed.sgd.history)
    held += [t for f in resumed.feeds for t in f.tops.values()]
    if resumed.fixed_prefix is not None:
        held += [t for f in resumed.fixed_prefix.cached for t in f.tops.values()]
    elsewhere = sorted({str(t.device) for t in held if t.device.type != device.type})
    with OffDevice(device) as watch:
        resumed.step()
    ok = not elsewhere and not watch.off and resumed.last_losses.device.type == device.type
    out.append(Check(stage, "on the device", ok,
                     f"{len(held)} tensors held and {watch.seen} made in one step, all on {device.type}" if ok else
                     f"held on {elsewhere}; made elsewhere: {_names(sorted(set(watch.off)))}"))

    model = ref.run / "models" / f"{stage}_reference.caffemodel"
    ref.save(model)
    detail = {"losses_reference": ref_losses, "losses_device": dev_losses, "loss_relative_difference": rel,
              "reference_ulp_drift": drift_losses, "snapshot_step": k}
    return out, model, detail, s0


# ---- timing and the projection ------------------------------------------------------------------

def time_stage(ws: Workspace, stage: str, device: torch.device, state: Path, steps: int) -> dict:
    """Throughput (one synchronisation per timed block) and latency (one per step), ms per iteration."""
    solver = start(ws.solver(stage, "timed", device), state)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fixed_ms_per_row = None
    if solver.fixed_prefix is not None:  # the one-off pass over the split, timed on its own
        sync()
        t0 = time.perf_counter()
        solver.fixed_prefix.build()
        sync()
        fixed_ms_per_row = (time.perf_counter() - t0) * 1000.0 / max(f.rows for f in solver.fixed_prefix.cached)
    for _ in range(WARMUP):
        solver.step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        solver.step()
    sync()
    throughput = (time.perf_counter() - t0) * 1000.0 / steps
    latency = []
    for _ in range(steps):
        t0 = time.perf_counter()
        solver.step()
        sync()
        latency.append((time.perf_counter() - t0) * 1000.0)
    return {"ms_per_iter": throughput, "latency_ms": statistics.median(latency), "latency_all_ms": latency,
            "fixed_ms_per_row": fixed_ms_per_row}


# ---- the command ---------------------------------------------------------------------------------

def gpu_check(device: str = "cuda", steps: int = 20, json_path: str | None = None, threads: int | None = None,
              time_steps: int | None = None, layout: str = "68", batch: int = BATCH_SIZE,
              stages: tuple[str, ...] = BENCHED, out=sys.stdout) -> int:
    """Run the checks and the timings, print the report (and write the JSON); exit status 0 when every
    check passed, 1 when one failed, 2 for input that cannot run (a device that is not there)."""
    err = sys.stderr
    if steps < 2:
        print(f"error: --steps {steps}: at least 2 (a snapshot between two steps is resumed)", file=err)
        return 2
    try:
        dev = check_device(device)
    except DeviceError as exc:
        print(f"error: {exc}", file=err)
        return 2
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before cuBLAS starts
        configure_device(dev)
    if threads:
        torch.set_num_threads(threads)
    time_steps = time_steps or steps
    t_start = time.time()
    facts = device_facts(dev)
    print(f"MCL gpu-check: {dev} against {REFERENCE}; layout {layout}, batch {batch}, {steps} steps per stage; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f"; {facts['gpu_name']} (capability {facts['gpu_capability']}), CUDA {facts['cuda_version']}, "
             f"cuDNN {facts['cudnn_version']}, driver {facts['gpu_driver']}" if dev.type == "cuda" else ""),
          file=out, flush=True)
    checks: list[Check] = []
    details, timings = {}, {}
    with tempfile.TemporaryDirectory(prefix="mcl-gpu-check-") as tmp:
        ws = Workspace(Path(tmp), layout, batch)
        init = None
        for stage in stages:
            t0 = time.time()
            try:
                found, model, details[stage], s0 = check_stage(ws, stage, dev, steps, init)
                timings[stage] = time_stage(ws, stage, dev, s0, time_steps)
            except Exception as exc:  # noqa: BLE001  (a stage that cannot run is a failed check, named)
                found = [Check(stage, "runs", False, f"{type(exc).__name__}: {exc} "
                               f"({traceback.extract_tb(exc.__traceback__)[-1].filename.split('/')[-1]}:"
                               f"{traceback.extract_tb(exc.__traceback__)[-1].lineno})")]
                model = None
            checks += found
            print(f"{LABELS[stage]} ({time.time() - t0:.0f} s)", file=out)
            for c in found:
                print(f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}", file=out, flush=True)
            if stage == "stage1":
                init = model  # stage 2 and the heads start from stage 1's reference model
    projection = None
    if timings:
        print(f"\ntimed on {dev} ({time_steps} iterations per block after {WARMUP} untimed):", file=out)
        print(f"  {'stage':<26}{'ms/iter (throughput)':>22}{'latency ms':>12}{'fixed pass ms/row':>19}", file=out)
        for stage, t in timings.items():
            fixed = f"{t['fixed_ms_per_row']:.4f}" if t["fixed_ms_per_row"] is not None else "-"
            print(f"  {LABELS[stage]:<26}{t['ms_per_iter']:>22.2f}{t['latency_ms']:>12.2f}{fixed:>19}", file=out)
        if set(timings) == set(BENCHED):
            projection = project({s: t["ms_per_iter"] for s, t in timings.items()},
                                 {s: t["fixed_ms_per_row"] for s, t in timings.items()})
            print(projection["line"], file=out)
    failed = [c for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
          + (f"; FAILED: {', '.join(f'{c.stage} {c.name}' for c in failed)}" if failed else "")
          + f" ({time.time() - t_start:.0f} s)", file=out, flush=True)
    if json_path:
        doc = {"device": str(dev), "reference": REFERENCE, "layout": layout, "batch": batch, "steps": steps,
               "time_steps": time_steps, "threads": torch.get_num_threads(), "facts": facts,
               "passed": not failed, "checks": [asdict(c) for c in checks], "stages": details,
               "timings": timings, "projection": projection, "seconds": time.time() - t_start}
        Path(json_path).write_text(json.dumps(doc, indent=2))
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="device under test: cuda (default), cuda:N or cpu")
    ap.add_argument("--steps", type=int, default=20, help="iterations per stage and run (default 20)")
    ap.add_argument("--time-steps", type=int, help="iterations per timed block (default: --steps)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    args = ap.parse_args(argv)
    return gpu_check(args.device, args.steps, args.json, threads=args.threads, time_steps=args.time_steps)


if __name__ == "__main__":
    sys.exit(main())
