"""The data preparation's worker processes: a map over tasks, and memory they share.

- `parallel_map(fn, tasks, workers, shared)`: fn over tasks, results in task order; in
  this process for one worker, else in a pool of worker processes started from a fork
  server (never forks of the tool, see `_pool_context`).
- `SharedArrays`: named arrays in one anonymous shared-memory file that every worker
  maps, so that tasks write their results straight into it by position (no result
  crosses a pipe); a task reaches the arrays of its map through `shared_arrays()`.
- `chunked`: tasks a few dozen items each, sized for the worker count.
- `WorkerError`: a worker died (killed, out of memory) before finishing its share.

Signals (docs/DATA.md): a worker ignores SIGINT (Ctrl-C reaches the whole process
group; the parent ends the pool), dies on SIGTERM, and ends itself as soon as its
parent is gone, even killed with -9. An exception in the parent (Ctrl-C, SIGTERM
turned into SystemExit, a task's error) kills the workers before it propagates.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection as mp_connection
from multiprocessing import reduction

import cv2
import numpy as np


class WorkerError(RuntimeError):
    """A worker process died (killed, out of memory) before finishing its share."""


class SharedArrays:
    """Named arrays in one anonymous shared memory file (memfd) that the parent creates
    and every worker process maps: workers write their results (the crops) straight into
    it by position, so none crosses a pipe. The file has no name in any file system, so a killed run
    leaves nothing behind; it is handed to a worker as a file descriptor when the
    worker starts (pickling one is only meant for that)."""

    def __init__(self, specs: dict[str, tuple[tuple, str]]):
        self.specs = specs
        self.size = max(1, _layout_of(specs)[1])
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("mcl-crops", os.MFD_CLOEXEC)
        else:  # an unlinked temporary file serves the same purpose elsewhere
            self._file = tempfile.TemporaryFile()
            self.fd = self._file.fileno()
        os.ftruncate(self.fd, self.size)
        self.arrays = _map_arrays(self.fd, specs, self.size)

    def close(self) -> None:
        """Close the descriptor; the arrays stay valid (the mapping keeps the pages)."""
        if self.fd is not None:
            if hasattr(self, "_file"):
                self._file.close()
            else:
                os.close(self.fd)
            self.fd = None

    def __reduce__(self):
        return _attach_shared, (reduction.DupFd(self.fd), self.specs, self.size)


def _layout_of(specs: dict[str, tuple[tuple, str]]) -> tuple[dict[str, int], int]:
    offsets, end = {}, 0
    for name, (shape, dtype) in specs.items():
        offsets[name] = end
        end += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64) * 64  # 64-byte aligned
    return offsets, end


def _map_arrays(fd: int, specs: dict[str, tuple[tuple, str]], size: int) -> dict[str, np.ndarray]:
    buf = mmap.mmap(fd, size)
    offsets, _ = _layout_of(specs)
    return {name: np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)), offset=offsets[name]).reshape(shape)
            for name, (shape, dtype) in specs.items()}


def _attach_shared(dup, specs, size) -> dict[str, np.ndarray]:
    fd = dup.detach()
    try:
        return _map_arrays(fd, specs, size)
    finally:
        os.close(fd)


# The arrays of the running map's SharedArrays: set in this process for the length of a
# one-worker map, or in a worker when it starts.
_SHARED: dict[str, np.ndarray] | None = None


def shared_arrays() -> dict[str, np.ndarray]:
    """The shared arrays of the map the calling task runs under (in a worker or here)."""
    if _SHARED is None:
        raise RuntimeError("no shared arrays: the task runs outside a parallel_map given them")
    return _SHARED


def _init_worker(shared: dict[str, np.ndarray] | None = None) -> None:
    """Start of a worker; `shared`: the parent's SharedArrays, arrived as mapped arrays."""
    # Signals first: whatever follows may block, and a worker must stay killable.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent ends the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_the_tool()
    cv2.setNumThreads(1)  # one worker per core already; a fresh process, so no pool to tear down
    global _SHARED
    _SHARED = shared


def _exit_with_the_tool() -> None:
    """End this worker as soon as the process that started it is gone, even killed with
    -9: a worker holds both ends of its task queue, so it would otherwise wait on it
    forever (and keep the fork server alive, which waits for its clients)."""
    parent = mp.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch():
        mp_connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="mcl-parent-watch", daemon=True).start()


def chunked(items: list, workers: int, most: int = 64) -> list[list]:
    size = max(1, min(most, -(-len(items) // (16 * max(1, workers)))))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _pool_context():
    """Workers are never forks of this process. A fork copies the parent's memory but
    none of its threads: a thread pool the parent had started (OpenCV's, after one
    cvtColor on a picture a few hundred pixels wide, as the COFW reader does, or any
    other library's) is copied with its locks held and its threads gone, and the child's first
    call into it (cv2.setNumThreads in the worker) waits forever. A fork server is a
    fresh interpreter that imported NumPy and OpenCV and has run nothing threaded; it
    forks the workers cheaply. Where there is none, workers are spawned."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # mcl.data.pipeline imports every module whose tasks the workers run (augment, synth).
    ctx.set_forkserver_preload(["numpy", "cv2"] + (["mcl.data.pipeline"] if _server_imports_this_mcl() else []))
    return ctx


def _server_imports_this_mcl() -> bool:
    """Whether the fork server (a `python -c` in the current folder, which heads its
    sys.path) would import this very `mcl` package: then it is loaded once there
    instead of in every worker (0.1 s each). Another checkout's `mcl` must not be."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return os.path.samefile(os.path.join(os.getcwd(), "mcl"), here)
    except OSError:
        return False


def parallel_map(fn, tasks: list, workers: int, shared: SharedArrays | None = None):
    """fn over tasks, results in task order: in this process for one worker, else in a
    pool of worker processes (one small message each way per task; `shared` arrays are
    mapped into each worker). A worker that dies raises WorkerError instead of leaving
    the map waiting; an exception (Ctrl-C, SIGTERM turned into SystemExit, a bad input
    raised by a worker) kills the workers before it propagates."""
    if workers <= 1 or len(tasks) <= 1:
        global _SHARED
        old = cv2.getNumThreads()
        cv2.setNumThreads(1)
        if shared is not None:
            _SHARED = shared.arrays
        try:
            for t in tasks:
                yield fn(t)
        finally:
            cv2.setNumThreads(old)
            _SHARED = None
        return
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=_pool_context(), initializer=_init_worker,
                               initargs=(shared,))
    done = False
    try:
        try:
            yield from pool.map(fn, tasks)
        except BrokenProcessPool:
            raise WorkerError("a worker process died before finishing its share (killed, or out of memory?); "
                              "nothing was written") from None
        done = True
    finally:
        if not done:
            _kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    # Python 3.11 has no public way to end a pool's workers (3.14 adds terminate_workers).
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):
            pass
