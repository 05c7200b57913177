"""Writing files so that nothing half-written ever carries a final name, even after a power cut.

The order is the one POSIX needs for a rename to be durable: the bytes are written
under a temporary name in the same folder and fsynced, the file is renamed over its
final name, and then the folder is fsynced, so after a crash the final name holds
either the old file or the whole new one. A full disk (ENOSPC) is a named error
(`DiskFullError`: the path and the free space) and leaves nothing under a final name.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


class DiskFullError(OSError):
    """No space left while writing `path`; the message names it and the space still free."""

    def __init__(self, path: str | os.PathLike):
        folder = Path(path).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        super().__init__(errno.ENOSPC, "no space left on device")
        self.filename = str(path)
        self.message = (f"{path}: no space left on device ({free / 2 ** 20:.1f} MiB free in {folder}); "
                        "nothing was written under a final name: free some space and run it again")

    def __str__(self) -> str:
        return self.message


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename (or a new name) in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync a file, or every file and folder below a folder (a dataset before it takes its name)."""
    path = Path(path)
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_file(Path(root) / name)
            fsync_dir(root)
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Give `tmp` (written by someone else: Caffe, h5py, matplotlib) its final name, durably."""
    try:
        fsync_tree(tmp)
        os.replace(tmp, final)
        fsync_dir(Path(final).parent)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFullError(final) from None
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename over `path`, fsync the folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if disk_full(exc):
            raise DiskFullError(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if disk_full(exc):
            raise DiskFullError(path) from None
        raise
