"""Writing files so that nothing half-written ever carries a final name, even after a power cut.

The order is the one POSIX needs for a rename to be durable: the bytes are written
under a temporary name in the same folder and fsynced, the file is renamed over its
final name, and then the folder is fsynced, so after a crash the final name holds
either the old file or the whole new one. A full disk (ENOSPC) is a named error
(`DiskFullError`: the path and the free space) and leaves nothing under a final name.
A file written here gets the mode a plain `open()` would give it (0666 less the umask),
not the 0600 of its temporary name.
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


def _proc_umask() -> int | None:
    """The process's umask as Linux reports it (/proc/self/status, kernels since 4.7), None elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """Elsewhere the umask can only be read by setting it and setting it back, which another thread
    creating a file at that moment would see: done once, on import, not at every write."""
    mask = _proc_umask()
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def file_mode() -> int:
    """The mode `open()` would give a new file now: 0666 less the umask."""
    mask = _proc_umask()
    return 0o666 & ~(_UMASK_AT_IMPORT if mask is None else mask)


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


def _set_mode(fd: int) -> None:
    """mkstemp's 0600 would otherwise become the output's mode, unreadable to the user's group."""
    try:
        os.fchmod(fd, file_mode())
    except PermissionError:  # a filesystem without modes (FAT, some network mounts): written all the same
        pass


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
            _set_mode(fh.fileno())
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
