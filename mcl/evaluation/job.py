"""One evaluation job: several models and predictions files scored on one split of a run (tools/evaluate.py)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mcl.caffe import speed
from mcl.caffe.forward import load_net
from mcl.data.splits import load_split
from mcl.evaluation import predictions as pf
from mcl.evaluation.evaluate import EvalError, predict_image, score
from mcl.method.stages import deploy_output
from mcl.records import provenance

# ---- an evaluation of several models and predictions files on one split ----------------------

@dataclass(frozen=True)
class ModelSource:
    """A model to evaluate: its weights, its deploy net and the output blob holding the 2n coordinates."""

    name: str
    model: Path
    deploy: Path
    output: str


def parse_model(spec: str, run: Path) -> ModelSource:
    """NAME=CAFFEMODEL[:DEPLOY[:OUTPUT]]; paths relative to the run (absolute ones stay as they are).
    Default deploy nets/deploy.prototxt, default output the one the stage table gives its deploy net (mcl.method.stages.deploy_output: fc6 for pre-BM's)."""
    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        raise EvalError(f"--model {spec!r}: expected NAME=CAFFEMODEL[:DEPLOY[:OUTPUT]]")
    model, _, tail = rest.partition(":")
    deploy, _, output = tail.partition(":")
    deploy_path = Path(run) / (deploy or "nets/deploy.prototxt")
    output = output or deploy_output(deploy_path.stem)
    return ModelSource(name, Path(run) / model, deploy_path, output)


def parse_named_file(spec: str, what: str = "--predictions") -> tuple[str, Path]:
    name, eq, path = spec.partition("=")
    if not eq or not name or not path:
        raise EvalError(f"{what} {spec!r}: expected NAME=FILE")
    return name, Path(path)


@dataclass
class Evaluation:
    doc: dict  # what <out>.json holds
    data: dict  # the split (crops, crop_to_image, ground truth)
    predictions: dict = field(default_factory=dict)  # name -> (N, n, 2) 0-based image coordinates
    inputs: list = field(default_factory=list)  # files the evaluation read (models, predictions files)


def run_evaluation(run: Path, split: str = "test", models=(), prediction_files=(), coords_base: int = 1,
                   speed_repeats: int = 30, limit: int | None = None, log=print) -> Evaluation:
    """Score models (ModelSource) and predictions files ((name, path)) on a run's split.

    Predictions files are read and checked before any model runs, so a bad file
    stops the evaluation before anything is computed or written. Each model's
    result records its provenance (schedule scale, seed, engine, BatchNorm
    statistics) and the test-crop protocol; speed_repeats 0 skips the timing.
    """
    run = Path(run)
    try:
        layout = provenance.layout_of(run)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    names = [m.name for m in models] + [n for n, _ in prediction_files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalError(f"result name(s) used twice: {', '.join(dup)}")
    if not names:
        raise EvalError("nothing to evaluate: give at least one --model or --predictions")
    data = load_split(run, split, limit)
    protocol = provenance.data_protocol(run)
    ev = Evaluation({"layout": layout.name, "split": split, "protocol": protocol, "results": {}}, data)
    n_faces = len(data["data"])
    read = {name: pf.read_predictions(path, n_faces, layout.n_points, coords_base) for name, path in prediction_files}
    results = {}
    for m in models:
        net = load_net(m.deploy, m.model)
        pred = predict_image(net, data, layout, m.output)
        r = score(pred, data, layout)
        r.update(source="model", model=str(m.model), deploy=str(m.deploy), output=m.output,
                 test_crop=protocol["test_crop"], **provenance.trained_with(run, m.model))
        r["speed_ms"], r["speed"] = None, None
        if speed_repeats > 0:
            try:
                sp = speed.time_forward(m.deploy, m.model, repeats=speed_repeats)
            except (speed.SpeedError, OSError, subprocess.SubprocessError) as exc:
                raise EvalError(f"speed of {m.model}: {exc}") from None
            r["speed_ms"] = sp["median_ms"]
            r["speed"] = {k: v for k, v in sp.items() if k != "samples_ms"}
        results[m.name] = r
        ev.predictions[m.name] = pred
        ev.inputs.append(m.model)
        log(f"{m.name:>8}: mean error {100 * r['inter_ocular']['mean_error']:.2f}%  "
            f"failure {100 * r['inter_ocular']['failure_rate']['0.10']:.2f}%"
            + (f"  {r['speed_ms']:.2f} ms/face" if r["speed_ms"] else ""))
    for name, path in prediction_files:
        r = score(read[name], data, layout)
        r.update(source="predictions", predictions_file=str(path), coords_base=coords_base, test_crop=None,
                 schedule_scale=None, seed=None, engine=None, bn_stats=None, stage=None, speed_ms=None, speed=None)
        results[name] = r
        ev.predictions[name] = read[name]
        ev.inputs.append(path)
        log(f"{name:>8}: mean error {100 * r['inter_ocular']['mean_error']:.2f}%  "
            f"failure {100 * r['inter_ocular']['failure_rate']['0.10']:.2f}%  (predictions file)")
    ev.doc["results"] = {n: results[n] for n in names}
    if speed_repeats > 0 and models:
        ev.doc["speed"] = {"threads": 1, "repeats": speed_repeats,
                           "how": f"median of {speed_repeats} forward passes at batch 1, one BLAS thread "
                                  f"(forced), pinned to one core (mcl/caffe/speed.py)"}
    ev.doc["threads"] = "1"
    return ev
