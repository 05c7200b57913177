"""The child process of one stage trained by the torch engine (`python -m mcl.engine`).

It speaks to mcl.caffe.train.run_stage exactly as the Caffe worker does: progress as JSON
lines on stdout ({"event": "iter", ...}, "resumed", "init", "error", "interrupted",
"done"), the log on stderr (Caffe-style lines: "Iteration N, loss = ..."), the same
snapshot files, the same exit codes (130 after Ctrl-C with a snapshot written, 137
for --stop-after). Resuming needs no data replay: batch k is a function of k.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"I{time.strftime('%m%d %H:%M:%S')} mcl.engine] {msg}", file=sys.stderr, flush=True)


def _emit(**event) -> None:
    print(json.dumps(event), flush=True)


def work(spec, stop_after: int | None, device: str = "cpu") -> int:
    import torch

    from mcl.caffe.caffemodel import ModelError
    from mcl.caffe.train import snapshots
    from mcl.engine.solver import Solver

    os.chdir(spec.run)
    if device.startswith("cuda") and not torch.cuda.is_available():
        _emit(event="error", message=f"{spec.name}: --device {device}, but this PyTorch ({torch.__version__}) "
                                     "sees no CUDA device")
        return 3
    _log(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    solver = Solver(spec.run, spec.solver_path, device=device)
    sp = solver.settings
    _log(f"Solving {solver.net_param.name} ({spec.solver_path.name}), initial weights from {solver.init_source}'s "
         f"fillers (seed {sp.random_seed})")
    start, failed = 0, False
    for it, state in snapshots(spec):
        try:
            solver.restore(state)
        except (ModelError, OSError, ValueError, RuntimeError) as exc:  # cut short by a kill: the one before
            _log(f"snapshot {state.name} unreadable ({exc}); trying the one before")
            failed = True
            continue
        start = it
        break
    if failed and not start:  # a restore that failed halfway may have left some blobs behind
        solver = Solver(spec.run, spec.solver_path, device=device)
    if start:
        _log(f"Restored solver state from {state}")
        _emit(event="resumed", iter=start, **{"from": str(state)})
    elif spec.init is not None:
        try:
            solver.copy_from(spec.init)
        except ModelError as exc:
            _emit(event="error", message=str(exc))
            return 3
        _log(f"Copying weights from {spec.init}")
        _emit(event="init", **{"from": str(spec.init)})

    if solver.trunk is not None:  # before the handlers: a signal here ends the process at once
        t1 = time.time()
        solver.trunk.build()
        rows = max(f.rows for f in solver.trunk.cached)
        _log(f"Fixed trunk ({solver.trunk.skip[0]} .. {solver.trunk.skip[-1]}, {len(solver.trunk.skip)} layers): "
             f"{', '.join(solver.trunk.frontier)} computed once for {rows} training rows in {time.time() - t1:.1f} s")

    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.time()
    while solver.iter < sp.max_iter:
        solver.step()
        it = solver.iter
        if sp.snapshot and it % sp.snapshot == 0:
            _log(f"Snapshotting solver state to {solver.snapshot()}")
        if it % sp.display == 0 or it == sp.max_iter:
            loss = solver.loss
            # The next iteration's rate, computed as the Caffe worker reports it.
            lr = float(sp.base_lr) * (float(sp.gamma) ** (it // sp.stepsize) if sp.lr_policy == "step" else 1.0)
            _log(f"Iteration {it - 1}, loss = {loss:.6g}")
            _log(f"Iteration {it - 1}, lr = {float(solver.last_rate):.6g}")
            _emit(event="iter", iter=it, max_iter=sp.max_iter, loss=loss, lr=lr,
                  elapsed=time.time() - t0, start=start)
        if interrupted:
            if not (sp.snapshot and it % sp.snapshot == 0):
                solver.snapshot()  # resume exactly here next time
            _emit(event="interrupted", iter=it)
            return 130
        if stop_after is not None and it >= stop_after:
            os._exit(137)  # as if killed: no snapshot beyond the periodic ones
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.out.with_name(f".{spec.out.name}.tmp")
    solver.save(tmp)
    os.replace(tmp, spec.out)
    _log("Optimization Done.")
    _emit(event="done", iter=solver.iter, out=str(spec.out))
    return 0


def main(argv=None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads
    # take the cores the working ones need (measured here: 2 threads 1.4-2.7 s/iteration
    # spinning, 0.76 s sleeping, under a load average of 4 on 2 cores). Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from mcl.caffe.train import StageSpec, _stop_with_parent
    ap = argparse.ArgumentParser(description="Worker process of one training stage in the torch engine "
                                             "(used by tools/run_stage.py --engine torch).")
    ap.add_argument("--run", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--stop-after", type=int, help="exit abruptly after this iteration (tests of resuming)")
    a = ap.parse_args(argv)
    spec = StageSpec(Path(a.run).resolve(), a.name, Path(a.init) if a.init else None, Path(a.out).resolve(),
                     engine="torch", device=a.device)
    _stop_with_parent()
    return work(spec, a.stop_after, a.device)
