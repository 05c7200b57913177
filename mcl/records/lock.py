"""One writer per run folder: an flock on RUN/.lock, which the kernel releases when its holder dies.

`make` takes it once for its whole run (`python -m mcl.records.lock hold RUN --for MAKE_PID`: a
small process that holds the lock until make is gone, even killed with -9), so the
recipes of one make, in parallel under -j, share it, and exports MCL_RUN_LOCK=RUN to them.
A tool run by hand takes it for its own work (`writer`). A second writer stops at once
with a LockError naming the folder and the process that holds it. Readers (evaluate,
verify, port) take no lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
HELD_ENV = "MCL_RUN_LOCK"  # the run folders whose lock the make that started this process holds
POLL_S = 0.2
RELEASE_S = 2.0  # how long a lock named by a process that has ended may take to be let go


class LockError(OSError):
    """Another process is writing in the run folder."""


def _alive(who: str) -> bool:
    """Whether the process a lock file names ("pid N: command") still runs."""
    try:
        os.kill(int(who.split()[1].rstrip(":")), 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def acquire(run: Path, holder: int | None = None) -> int:
    """The open, locked RUN/.lock (its descriptor), naming `holder` (default this process) inside."""
    run = Path(run).resolve()
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_FILE
    deadline = time.monotonic() + RELEASE_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            # A make that has just ended leaves its holder a moment to notice: only a live writer refuses.
            if _alive(who) or time.monotonic() > deadline:
                who = who or "a process that did not say who it is"
                raise LockError(f"{run}: another writer is at work in this run folder ({who}); wait for it to "
                                "end or stop it, then run this again") from None
            time.sleep(0.05)
            continue
        if _same_file(fd, path):  # else the holder before us removed it as we opened it: again
            break
        os.close(fd)
    pid = holder or os.getpid()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {pid}: {_command_of(pid)}\n".encode(), 0)
    return fd


def release(fd: int, run: Path) -> None:
    """Remove RUN/.lock while still holding it, then let it go (a run folder keeps no lock file)."""
    try:
        if _same_file(fd, Path(run).resolve() / LOCK_FILE):
            os.unlink(Path(run).resolve() / LOCK_FILE)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def writer(run: Path):
    """Hold RUN's lock for the block, unless the make that started this process holds it already."""
    run = Path(run).resolve()
    if any(held and Path(held).resolve() == run for held in os.environ.get(HELD_ENV, "").split(os.pathsep)):
        yield
        return
    fd = acquire(run)
    try:
        yield
    finally:
        release(fd, run)


def hold_for(run: Path, pid: int) -> None:
    """Take the lock, then leave a detached process holding it until `pid` (make) has ended, and with
    it every process of its group where make leads one (a recipe orphaned by `kill -9` of make alone
    still writes in the run folder)."""
    fd = acquire(run, holder=pid)
    try:
        group = pid if os.getpgid(pid) == pid else None
    except ProcessLookupError:
        group = None
    if os.fork():
        os._exit(0)  # the caller's shell returns at once; the lock stays with the child
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    _wait_for(pid)
    while group is not None and _group_alive(group):
        time.sleep(POLL_S)
    release(fd, run)
    os._exit(0)


def _group_alive(pgid: int) -> bool:
    """Whether a process other than this one still belongs to process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for(pid: int) -> None:
    """Return when `pid` has ended: at once through a pidfd (Linux), else by polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
        os.close(pidfd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(POLL_S)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Hold a run folder's writer lock for the life of a process (make's).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="hold RUN/.lock until --for PID has ended")
    h.add_argument("run")
    h.add_argument("--for", dest="pid", type=int, required=True)
    args = ap.parse_args(argv)
    try:
        hold_for(Path(args.run), args.pid)
    except (LockError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
