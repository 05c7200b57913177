"""The child process of one training stage (`python -m mcl.run.worker`): one loop for both engines.

An engine is a small object (`mcl.run.caffe_engine.CaffeStage`, `mcl.run.torch_engine.TorchStage`):

  iter, settings            the iteration done; the solver's settings (max_iter, display, snapshot,
                            base_lr, gamma, stepsize, lr_policy)
  restore(state)            resume from a solverstate; raises SnapshotError where it is cut short
  reset()                   a fresh start after restores that failed halfway
  replay(start)             move the data layers past the batches `start` iterations consumed
  start_from(init)          copy weights by layer name; raises ModelError where they do not fit
  prepare()                 work before the first step (the torch engine's fixed-trunk pass)
  facts                     (torch engine, after prepare) what the manifest records of the device:
                            reported to the stage runner as {"event": "engine", ...}
  step()                    one SGD iteration, with the solver's periodic snapshot
  loss                      Eq. 4's total of the last iteration
  snapshot() / save(path)   a snapshot now / the final caffemodel

The stage comes as one argument, `--spec`: the StageSpec as one JSON object (StageSpec.to_json), read
back and checked once here (StageSpec.from_json, validate). The loop speaks to `mcl.run.stage.run_stage` as JSON lines on stdout ({"event": "iter", ...},
"resumed", "init", "engine", "error", "interrupted", "done"); the engine's log goes to stderr. Exit
codes: 0 done, 3 cannot start, 130 interrupted with a snapshot written, 137 for --stop-after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

from mcl.caffe.caffemodel import ModelError
from mcl.engine import CUBLAS_WORKSPACE
from mcl.fileio import DiskFullError, disk_full, durable_replace
from mcl.method.stages import learning_rate
from mcl.run.stage import SnapshotError, StageError, StageSpec, snapshots


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def rate_after(settings, it: int) -> float:
    """The learning rate of the next iteration, as the progress line reports it (METHOD §5.2); base_lr for
    any policy but "step" (our solvers write "step" and "fixed")."""
    policy = "step" if settings.lr_policy == "step" else "fixed"
    return learning_rate(it, settings.base_lr, settings.stepsize, settings.gamma, policy)


def resume(engine, spec: StageSpec) -> int:
    """Restore the newest snapshot that reads back whole; the iteration resumed from (0: none)."""
    failed = False
    for it, state in snapshots(spec):
        try:
            engine.restore(state)
        except SnapshotError as exc:
            engine.log(f"snapshot {state.name} unreadable ({exc}); trying the one before")
            failed = True
            continue
        engine.log(f"Restored solver state from {state}")
        engine.replay(it)
        emit(event="resumed", iter=it, **{"from": str(state)})
        return it
    if failed:  # a restore that failed halfway may have left some blobs behind
        engine.reset()
    return 0


def work(engine, spec: StageSpec, stop_after: int | None = None) -> int:
    start = resume(engine, spec)
    if not start and spec.init is not None:
        try:
            engine.start_from(spec.init)
        except ModelError as exc:
            emit(event="error", message=str(exc))
            return 3
        emit(event="init", **{"from": str(spec.init)})
    engine.prepare()  # before the handlers: a signal here ends the process at once
    facts = getattr(engine, "facts", None)  # the Caffe engine's record needs nothing from here
    if facts:
        emit(event="engine", **facts)

    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sp = engine.settings
    t0 = time.time()
    try:
        while engine.iter < sp.max_iter:
            engine.step()
            it = engine.iter
            if it % sp.display == 0 or it == sp.max_iter:
                emit(event="iter", iter=it, max_iter=sp.max_iter, loss=engine.loss, lr=rate_after(sp, it),
                     elapsed=time.time() - t0, start=start)
            if interrupted:
                if not (sp.snapshot and it % sp.snapshot == 0):  # the step's own snapshot is this one
                    engine.snapshot()  # resume exactly here next time
                emit(event="interrupted", iter=it)
                return 130
            if stop_after is not None and it >= stop_after:
                os._exit(137)  # as if killed: no snapshot beyond the periodic ones
        spec.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = spec.out.with_name(f".{spec.out.name}.tmp")
        try:
            engine.save(tmp)
            durable_replace(tmp, spec.out)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:  # a full disk while snapshotting or saving: named, and the run resumes once freed
        if not disk_full(exc):
            raise
        emit(event="error", message=str(exc if isinstance(exc, DiskFullError) else DiskFullError(spec.out)))
        return 3
    engine.log("Optimization Done.")
    emit(event="done", iter=engine.iter, out=str(spec.out))
    return 0


def open_engine(spec: StageSpec):
    """The engine object of `spec`; each imports its framework (pycaffe or torch) only here, on purpose."""
    if spec.engine == "caffe":
        from mcl.run.caffe_engine import CaffeStage
        return CaffeStage(spec)
    from mcl.run.torch_engine import TorchStage
    return TorchStage(spec)


def stop_with_parent() -> None:
    """SIGTERM this worker (it snapshots and exits) when the tool that started it dies,
    even killed with -9; an orphan would go on training, and writing snapshots under the
    names the next run resumes from, until its next progress line hit a closed pipe."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the tool died before prctl took effect
        sys.exit(130)


def main(argv=None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads
    # take the cores the working ones need (measured here: 2 threads 1.4-2.7 s/iteration
    # spinning, 0.76 s sleeping, under a load average of 4 on 2 cores). Read when torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(description="Worker process of one training stage (used by tools/run_stage.py).")
    ap.add_argument("--spec", required=True,
                    help="the stage's specification, one JSON object (mcl.run.stage.StageSpec.to_json)")
    ap.add_argument("--stop-after", type=int, help="exit abruptly after this iteration (tests of resuming)")
    a = ap.parse_args(argv)
    try:
        spec = StageSpec.from_json(a.spec, validate=False)  # checked below, once CUBLAS's variable is set
        spec = dataclasses.replace(spec, run=spec.run.resolve(), out=spec.out.resolve())
        if spec.device.startswith("cuda") and spec.deterministic:  # read when cuBLAS starts: before torch loads
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        spec.validate()
    except (StageError, ValueError, TypeError, AttributeError) as exc:  # a specification the runner did not write
        emit(event="error", message=f"{type(exc).__name__}: {exc}" if not isinstance(exc, StageError) else str(exc))
        return 3
    stop_with_parent()
    os.chdir(spec.run)
    try:
        engine = open_engine(spec)
    except StageError as exc:  # a device this machine does not have, or a precision it lacks
        emit(event="error", message=str(exc))
        return 3
    return work(engine, spec, a.stop_after)


if __name__ == "__main__":
    sys.exit(main())
