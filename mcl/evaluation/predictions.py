"""Predictions files: landmarks of a split's faces from any method, scored like a model.

Format (that of the authors' released result files): one face per line, in the
order of the split's faces, 2n numbers `x1 y1 x2 y2 ... xn yn` separated by
white space, in original-image pixels. Coordinates are 1-based by default, like
`.pts` files and MATLAB (the centre of the top-left pixel is (1, 1)); files
written 0-based are read with coords_base 0. The split's ground truth
(`landmarks_image` in its HDF5 files) is 0-based: the readers subtract 1 from
1-based datasets, and this module does the same, since a silent one-pixel shift
costs 1-2% of error on a 300-W face.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mcl.evaluation.evaluate import EvalError
from mcl.fileio import atomic_write

COORDS_BASES = (0, 1)
DEFAULT_COORDS_BASE = 1


class PredictionsError(EvalError):
    """A predictions file that cannot be scored; the message names the file (and line)."""


def check_base(coords_base: int) -> int:
    if coords_base not in COORDS_BASES:
        raise PredictionsError(f"coordinate base must be 0 or 1, not {coords_base!r}")
    return coords_base


def read_predictions(path: Path, n_faces: int, n_points: int, coords_base: int = DEFAULT_COORDS_BASE) -> np.ndarray:
    """(n_faces, n_points, 2) 0-based image coordinates from a predictions file."""
    path = Path(path)
    check_base(coords_base)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PredictionsError(f"{path}: not a text file") from None
    except OSError as exc:
        raise PredictionsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # a trailing newline or blank lines at the end
        lines.pop()
    want = 2 * n_points
    rows = []
    for k, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            raise PredictionsError(f"{path}: line {k} is empty (one face per line, {want} numbers each)")
        if len(fields) != want:
            raise PredictionsError(f"{path}: line {k} holds {len(fields)} numbers, expected {want} "
                                   f"(x y for {n_points} landmarks)")
        row = []
        for j, f in enumerate(fields, 1):
            try:
                v = float(f)
            except ValueError:
                raise PredictionsError(f"{path}: line {k}, field {j}: {f!r} is not a number") from None
            if not math.isfinite(v):
                raise PredictionsError(f"{path}: line {k}, field {j}: {f!r} is not a finite number")
            row.append(v)
        rows.append(row)
    if len(rows) != n_faces:
        raise PredictionsError(f"{path}: {len(rows)} lines of predictions, but the split has {n_faces} faces "
                               f"(one line per face, in the split's order)")
    return np.asarray(rows, dtype=np.float64).reshape(n_faces, n_points, 2) - coords_base


def format_predictions(points_img: np.ndarray, coords_base: int = DEFAULT_COORDS_BASE) -> str:
    """The file's text for (N, n, 2) 0-based image coordinates; numbers written to round-trip exactly."""
    check_base(coords_base)
    pts = np.asarray(points_img, dtype=np.float64)
    pts = pts.reshape(len(pts), -1) + coords_base
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in pts)


def write_predictions(path: Path, points_img: np.ndarray, coords_base: int = DEFAULT_COORDS_BASE) -> Path:
    atomic_write(Path(path), format_predictions(points_img, coords_base))
    return Path(path)
