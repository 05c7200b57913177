"""What a run's model was trained with, and how its split was cropped: the one reader of the manifests for that.

A model's own manifest entry says what it was trained with; a model made from
other models (AM from the heads, a stage from its start model) takes what its
input models agree on ("mixed" where they differ, None where nothing is
recorded). The engine is "caffe" unless an entry names another.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mcl.caffe.runfiles import run_layout
from mcl.method.layouts import Layout, get_layout
from mcl.records import manifest, settings

DEFAULT_ENGINE = "caffe"
DEFAULT_TEST_CROP = "ours"  # data prepared before the test-crop setting existed used our box crops
KEYS = ("schedule_scale", "seed", "engine", "precision", "stage", "bn_stats")
DEFAULT_PRECISION = "fp32"  # a trained stage's entry from before the precision was recorded: fp32


def trained_with(run: Path, model: Path) -> dict:
    """Schedule scale, seed, engine, training precision, stage and BatchNorm statistics of a run's model,
    from its manifest."""
    found = _walk(Path(run), Path(model), set())
    out = {k: _agree(found[k]) for k in ("schedule_scale", "seed", "engine", "precision", "stage")}
    out["engine"] = out["engine"] or DEFAULT_ENGINE
    out["precision"] = out["precision"] or DEFAULT_PRECISION
    out["bn_stats"] = found["bn_stats"].pop() if len(found["bn_stats"]) == 1 else None
    return out


def bn_stats_of(run: Path, model: Path) -> str | None:
    """The BatchNorm-statistics setting a run's model was made with (None where unknown or mixed)."""
    return trained_with(run, model)["bn_stats"]


def _walk(run: Path, model: Path, seen: set) -> dict[str, set]:
    found: dict[str, set] = {k: set() for k in KEYS}
    try:
        e = manifest.entry(run, model)
    except (ValueError, OSError):  # a model outside the run, or no manifest
        e = None
    key = str(Path(model).resolve())
    if e is None or key in seen:
        return found
    seen.add(key)
    s = e.get("settings") or {}
    engine = e.get("engine") or s.get("engine")
    if engine:
        found["engine"].add(engine)
        found["precision"].add(e.get("precision") or DEFAULT_PRECISION)
    if e.get("stage"):
        found["stage"].add(e["stage"])
    own_schedule = "schedule_scale" in s
    if own_schedule:
        found["schedule_scale"].add(s["schedule_scale"])
        if "seed" in s:
            found["seed"].add(s["seed"])
    if "bn_stats" in e:
        found["bn_stats"].add(e["bn_stats"])
    if own_schedule and "bn_stats" in e:
        return found
    for name in e.get("inputs", {}):
        if name.endswith(".caffemodel"):
            sub = _walk(run, Path(run) / name if not os.path.isabs(name) else Path(name), seen)
            if not own_schedule:
                for k in ("schedule_scale", "seed", "engine", "precision"):
                    found[k] |= sub[k]
            if "bn_stats" not in e:
                found["bn_stats"] |= sub["bn_stats"]
    return found


def engine_label(r: dict) -> str:
    """The engine a result's model was trained with, and its precision where not fp32: "torch (bf16)"."""
    engine = r.get("engine") or DEFAULT_ENGINE
    precision = r.get("precision") or DEFAULT_PRECISION
    return engine if precision == DEFAULT_PRECISION else f"{engine} ({precision})"


def _agree(values: set):
    if not values:
        return None
    return values.pop() if len(values) == 1 else "mixed"


def data_protocol(run: Path) -> dict:
    """The test-crop protocol (and crop scale, dataset) of a run's split crops, from RUN/data/manifest.json."""
    path = Path(run) / "data" / "manifest.json"
    if not path.exists():
        return {"test_crop": None, "crop_scale": None, "dataset": None, "test_split": None,
                "source": "no data/manifest.json in the run"}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    s = doc.get("settings", {})
    return {"test_crop": s.get("test_crop", DEFAULT_TEST_CROP), "crop_scale": s.get("crop_scale"),
            "dataset": doc.get("source", {}).get("dataset"), "test_split": s.get("test_split"),
            "source": "data/manifest.json"}


# What a manifest entry records of the engine and the device that trained a stage (engine_record):
# the torch engine's facts come from the training process itself (mcl.engine.device.device_facts);
# on cuda the GPU's name, compute capability, CUDA, cuDNN and driver versions (None where unknown).
ENGINE_KEYS = ("engine", "device", "torch_version", "deterministic", "tf32", "fillers", "gpu_index", "gpu_name",
               "gpu_capability", "cuda_version", "cudnn_version", "gpu_driver")


def engine_record(engine: str, device: str, facts: dict | None = None) -> dict:
    """What the run manifest records of the engine that trained a stage; `facts`: the torch worker's report."""
    if engine == "caffe":
        return {"engine": "caffe", "device": "cpu"}
    out = {"engine": "torch", "device": device}
    try:
        out["torch_version"] = version("torch")  # the worker's own report below wins where there is one
    except PackageNotFoundError:
        pass
    out.update({k: v for k, v in (facts or {}).items() if k in ENGINE_KEYS and k != "engine"})
    return out


def recorded_engine(entry: dict) -> dict:
    """The engine record of a manifest entry, as the stage that trained it wrote it."""
    out = {k: entry[k] for k in ENGINE_KEYS if k in entry}
    out.setdefault("engine", DEFAULT_ENGINE)
    if out["engine"] == DEFAULT_ENGINE:
        out.setdefault("device", "cpu")
    return out


def layout_of(run: Path) -> Layout:
    """The run's layout: RUN/run.json's where its nets are generated (it is written with them), else its
    prepared data's (a run folder holding only data can still score predictions files)."""
    run = Path(run)
    if (run / settings.RUN_FILE).exists():
        return run_layout(run)
    data = run / "data" / "manifest.json"
    if data.exists():
        try:
            layout = json.loads(data.read_text()).get("settings", {}).get("layout")
        except ValueError as exc:
            raise ValueError(f"{data}: not valid JSON ({exc})") from None
        if layout is not None:
            return get_layout(str(layout))
    raise ValueError(f"{run}: no {settings.RUN_FILE} or data/manifest.json to tell the run's layout "
                     "(run `make data` or `make nets`)")
