"""A run's prepared splits read back: the HDF5 files Caffe's list file names, as arrays for evaluation.

Each file is checked as the writers promise (mcl.data.writers.check_hdf5: shapes and
finite values): a wrong shape would abort Caffe, a NaN would turn every metric into
NaN without a word.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from mcl.data.readers import DataError
from mcl.data.writers import check_hdf5


class SplitError(ValueError):
    """A split that cannot be read back (missing, empty, without the datasets evaluation needs)."""


def split_files(run: Path, split: str) -> list[Path]:
    """The HDF5 files of a split, from the list file Caffe reads (paths relative to the run)."""
    listing = Path(run) / "data" / f"{split}.txt"
    if not listing.exists():
        raise SplitError(f"{listing}: list file of split {split!r} missing (run `make data`)")
    files = [Path(run) / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not files:
        raise SplitError(f"{listing}: split {split!r} is empty")
    for f in files:
        if not f.exists():
            raise SplitError(f"{listing}: lists {f}, which does not exist")
    return files


def load_split(run: Path, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    keys = ("data", "crop_to_image", "landmarks_image", "iod_image")
    parts: dict[str, list] = {k: [] for k in keys}
    files = split_files(run, split)
    for f in files:
        with h5py.File(f, "r") as h:
            missing = [k for k in keys if k not in h]
            if missing:
                raise SplitError(f"{f}: lacks dataset(s) {', '.join(missing)} needed for evaluation")
            _check_file(f, keys)
            for k in keys:
                parts[k].append(h[k][...])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if len(out["data"]) == 0:
        raise SplitError(f"split {split!r} of {run} holds no faces")
    if limit is not None:
        out = {k: v[:limit] for k, v in out.items()}
    return out


def _check_file(path: Path, keys) -> None:
    try:
        check_hdf5(path, keys)
    except DataError as exc:
        raise SplitError(str(exc)) from None
