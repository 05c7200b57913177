"""The run manifest: for every artifact of a run, what made it.

`<run>/manifest.json` maps each artifact (path relative to the run) to its
stage, settings, the checksums of its inputs and of itself, the Caffe version,
schedule scale, seed and wall time; a trained stage's entry also says what trained it (engine,
device, and `precision`: fp32, or bf16 for the torch engine's bfloat16 training).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from google.protobuf import text_format

from mcl import __version__
from mcl.caffe import check
from mcl.caffe.proto import caffe_pb2
from mcl.fileio import atomic_write
from mcl.records import settings


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def caffe_version() -> str:
    try:
        return check.caffe_version()
    except Exception as exc:  # recorded, not fatal: the manifest says what it could not learn
        return f"unknown ({exc})"


def record(run: Path, artifact: Path, stage: str, settings: dict, inputs: list[Path], wall_time_s: float,
           **extra) -> dict:
    run = Path(run)
    entry = {
        "stage": stage,
        "settings": settings,
        "inputs": input_checksums(run, inputs),
        "sha256": sha256(artifact),
        "caffe_version": caffe_version(),
        "mcl_version": __version__,
        "python": platform.python_version(),
        "wall_time_s": round(float(wall_time_s), 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    path = run / "manifest.json"
    doc = json.loads(path.read_text()) if path.exists() else {"run": str(run.resolve()), "artifacts": {}}
    doc["artifacts"][_key(run, artifact)] = entry
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return entry


def input_checksums(run: Path, inputs: list[Path]) -> dict[str, str]:
    """Input path (relative to the run where it lies inside it) -> sha256, as an entry records them."""
    root = Path(run).resolve()
    return {str(Path(p).resolve().relative_to(root) if Path(p).resolve().is_relative_to(root) else p): sha256(p)
            for p in inputs}


def entry(run: Path, artifact: Path) -> dict | None:
    """The manifest entry of `artifact`, or None if the run's manifest does not list it."""
    path = Path(run) / "manifest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["artifacts"].get(_key(run, artifact))


def _key(run: Path, artifact: Path) -> str:
    """An artifact's name in the manifest: relative to the run, or absolute when it lies outside."""
    p, root = Path(artifact).resolve(), Path(run).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def is_current(run: Path, artifact: Path, inputs: list[Path]) -> bool:
    """Whether `artifact` is intact and was made from exactly these inputs, as the manifest says."""
    e = entry(run, artifact)
    return (e is not None and Path(artifact).exists() and sha256(artifact) == e["sha256"]
            and e["inputs"] == input_checksums(run, inputs))


def solver_settings(solver_path: Path, stage: str | None = None) -> dict:
    """The settings a stage ran with: its solver's, and the run's from RUN/run.json. `stage`: the row of
    Algorithm 1 it trains as (default: the solver's name, solvers/<stage>_solver.prototxt)."""
    solver_path = Path(solver_path)
    s = text_format.Parse(solver_path.read_text(), caffe_pb2.SolverParameter())
    out = {k: float(f"{getattr(s, k):.7g}") if isinstance(getattr(s, k), float) else getattr(s, k)
           for k in ("base_lr", "max_iter", "stepsize", "gamma", "momentum", "weight_decay", "random_seed", "snapshot")}
    out["lr_policy"] = s.lr_policy
    run = settings.read(solver_path.parent.parent)  # RUN/solvers/<stage>_solver.prototxt, RUN/stage_nets/...
    if run:
        out.update(layout=run["layout"], schedule_scale=run["schedule_scale"], seed=run["seed"], input=run["input"],
                   batch_size=run["batch_size"], schedule=run["schedule"])
        stage = stage or solver_path.name[: -len("_solver.prototxt")]
        stage = "heads" if stage.startswith("head") else stage
        if stage in run["frozen_bn"]:
            out["frozen_bn"] = run["frozen_bn"][stage]
    return out
