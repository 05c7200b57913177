"""RUN/run.json: the settings a run's nets and solvers were generated with, written once as JSON.

tools/make_nets.py writes it beside nets/ and solvers/; everything that needs a
run's layout, schedule, scale, seed, input or batch reads it here (the comment
headers of the generated files say the same for people; nothing parses them).
What each stage was trained with (engine, device, precision, BatchNorm statistics,
warm-up) is per stage, in the run manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from mcl import __version__
from mcl.caffe.runfiles import RUN_FILE
from mcl.fileio import atomic_write


def write(run: Path, settings: dict) -> Path:
    """Write RUN/run.json (left untouched where it already says the same)."""
    path = Path(run) / RUN_FILE
    text = json.dumps({**settings, "mcl_version": __version__}, indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)
    return path


def read(run: Path) -> dict | None:
    """The run's settings, or None for a run folder made before run.json existed."""
    path = Path(run) / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
