"""The torch engine of the stage runner: `Solver` behind the interface of `mcl.run.worker`.

It logs Caffe-style lines on stderr ("Iteration N, loss = ..."), writes the same
snapshot files and resumes with no data replay: batch k is a function of k. The device
is checked first (a named error for a PyTorch without CUDA or a GPU index past the last), and
the precision with it (bf16 where the device has no bfloat16: PrecisionError's message);
`facts` is what the manifest records of it, and whose fillers drew the iteration-0
weights of a stage started from them (kept beside the snapshots for the run that resumes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from mcl.caffe.caffemodel import ModelError
from mcl.engine.device import (DeviceError, PrecisionError, check_device, check_precision, device_facts, gpu_lock_dir,
                               keep_heap, pick_gpu)
from mcl.engine.solver import Solver
from mcl.fileio import atomic_write
from mcl.run.stage import SnapshotError, StageError, StageSpec, fillers_stamp


class TorchStage:
    def __init__(self, spec: StageSpec):
        self.spec, self.device, self.gpu_lock = spec, spec.device, None
        try:
            check_device(self.device)
            if self.device == "cuda":  # one GPU per job where there are several (docs/GPU.md, "Parallel jobs")
                self.device, self.gpu_lock = pick_gpu(lock_dir=gpu_lock_dir())
            check_precision(spec.precision, self.device)  # bf16 where the device has bfloat16
        except (DeviceError, PrecisionError) as exc:
            raise StageError(f"{spec.name}: {exc}") from None
        self.facts: dict = {}
        self.resumed = False
        self.log(f"torch {torch.__version__}, device {self.device}, {torch.get_num_threads()} threads, "
                 f"tf32 {'on' if spec.tf32 else 'off'}, deterministic {'on' if spec.deterministic else 'off'}, "
                 f"precision {spec.precision}")
        self.reset()
        self.log(f"Solving {self.solver.net_param.name} ({spec.solver_path.name}), initial weights from "
                 f"{self.solver.init_source}'s fillers (seed {self.settings.random_seed})")

    def reset(self) -> None:
        self.solver = Solver(self.spec.run, self.spec.solver_path, device=self.device, tf32=self.spec.tf32,
                             deterministic=self.spec.deterministic, precision=self.spec.precision)
        self.settings = self.solver.settings
        self.resumed = False

    @property
    def iter(self) -> int:
        return self.solver.iter

    def log(self, msg: str) -> None:
        print(f"I{time.strftime('%m%d %H:%M:%S')} mcl.engine] {msg}", file=sys.stderr, flush=True)

    def restore(self, state: Path) -> None:
        try:
            self.solver.restore(state)
        except (ModelError, OSError, ValueError, RuntimeError) as exc:  # cut short by a kill
            raise SnapshotError(str(exc)) from None
        self.resumed = True

    def replay(self, start: int) -> None:
        pass  # batch k is a function of k

    def start_from(self, init: Path) -> None:
        self.solver.copy_from(init)
        self.log(f"Copying weights from {init}")

    def prepare(self) -> None:
        self.facts = device_facts(self.solver.device, self.spec.tf32, self.spec.deterministic)
        self.facts["device"] = self.spec.device  # as asked (`cuda`); gpu_index says which one it took
        self.facts["precision"] = self.spec.precision
        self.facts["maps"] = self.solver.maps  # channels-last with the engine's kernels, or NCHW (solver.py)
        if self.solver.device.type == "cpu":
            self.facts["allocator"] = keep_heap()
        if self.spec.init is None:  # iteration 0 came from the fillers: whose, from the run that started it
            stamp = fillers_stamp(self.spec)
            if not self.resumed:
                atomic_write(stamp, self.solver.init_source)
            if stamp.exists():
                self.facts["fillers"] = stamp.read_text().strip()
        fixed = self.solver.fixed_prefix
        if fixed is not None:
            t1 = time.time()
            fixed.build()
            rows = max(f.rows for f in fixed.cached)
            self.log(f"Fixed layers ({fixed.skip[0]} .. {fixed.skip[-1]}, {len(fixed.skip)} layers): "
                     f"{', '.join(fixed.frontier)} computed once for {rows} training rows in {time.time() - t1:.1f} s")

    def step(self) -> None:
        self.solver.step()
        it, sp = self.solver.iter, self.settings
        if sp.snapshot and it % sp.snapshot == 0:  # as Caffe's Solver::Step snapshots
            self.log(f"Snapshotting solver state to {self.solver.snapshot()}")
        if it % sp.display == 0 or it == sp.max_iter:
            self.log(f"Iteration {it - 1}, loss = {self.solver.loss:.6g}")
            self.log(f"Iteration {it - 1}, lr = {float(self.solver.last_rate):.6g}")

    @property
    def loss(self) -> float:
        return self.solver.loss

    def snapshot(self) -> None:
        self.solver.snapshot()

    def save(self, path: Path) -> None:
        self.solver.save(path)
