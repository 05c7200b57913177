"""Where `import caffe` fails: the torch engine, verify, the port and the predictor still run.

Caffe's files are read through one protobuf-only layer (mcl.caffe.proto); pycaffe is
imported only where something runs in Caffe. Every command here runs with a `caffe`
package first on PYTHONPATH whose import raises, so a module that imports pycaffe on
these paths fails the test. The BatchNorm statistics step runs in Caffe, so the stage
keeps Caffe's running statistics (BN_STATS=running).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """(env, folder): an environment where `import caffe` raises ImportError."""
    folder = tmp_path_factory.mktemp("nocaffe")
    pkg = folder / "block" / "caffe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise ImportError("caffe is blocked in this test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder / "block"), str(ROOT)]))
    return env, folder


def run(env, *args, check=True):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_import_caffe_really_fails_there(blocked):
    env, _ = blocked
    proc = run(env, "-c", "import caffe", check=False)
    assert proc.returncode != 0 and "caffe is blocked" in proc.stderr
    proc = run(env, "-c", "from mcl.caffe.proto import caffe_pb2, SOURCE; print(SOURCE)")
    assert "built-in subset" in proc.stdout


def test_torch_engine_verify_port_and_predictor_run_without_caffe(blocked):
    env, folder = blocked
    r = folder / "run"
    run(env, ROOT / "data_prep/prepare.py", "--dataset", "synth", "--layout", "5", "--n-train", "16", "--n-test", "4",
        "--copies", "2", "--synth-size", "100", "--seed", "2", "--quiet", "--out", r / "data")
    run(env, ROOT / "tools/make_nets.py", "--run", r, "--layout", "5", "--scale", "0.00005", "--batch", "4")
    proc = run(env, ROOT / "tools/run_stage.py", "--run", r, "--stage", "stage1", "--engine", "torch",
               "--bn-stats", "running")
    assert (r / "models/bm.caffemodel").stat().st_size > 0, proc.stdout
    log = (r / "logs/stage1.log").read_text()
    assert "initial weights from" in log and "Optimization Done." in log
    entry = json.loads((r / "manifest.json").read_text())["artifacts"]["models/bm.caffemodel"]
    assert entry["engine"] == "torch" and entry["settings"]["schedule_scale"] == 0.00005

    proc = run(env, ROOT / "tools/verify.py", "--run", r)
    assert "intact" in proc.stdout

    out = folder / "port"
    run(env, ROOT / "tools/port.py", "export", "--prototxt", r / "nets/deploy.prototxt", "--caffemodel",
        r / "models/bm.caffemodel", "--out", out, "--reference", "opencv", "--run", r)
    assert (out / "bm.onnx").stat().st_size > 0

    import cv2
    face = folder / "face.png"
    cv2.imwrite(str(face), np.full((80, 80), 128, np.uint8))
    run(env, ROOT / "tools/predict.py", face, "--box", "10", "10", "70", "70", "--model", out / "bm.onnx",
        "--out", folder / "pred")
    doc = json.loads((folder / "pred" / "face.json").read_text())
    points = np.asarray(doc["points"], dtype=float)
    assert doc["layout"] == "5" and points.shape == (5, 2) and np.all(np.isfinite(points))
    assert (folder / "pred" / "face.pts").read_text().count("\n") >= 5


def test_every_torch_stage_type_trains_without_caffe(blocked):
    """Stage 1 and pre-BM from the engine's own seeded fillers (recorded as such), stage 2 (its fixed
    layers' cache), stage 3 and the joint heads from the model before them, all with BN_STATS=running.
    With `recomputed` (the default) the statistics step needs Caffe: a named error after training that
    keeps the engine's model, which the same command with `running` then finishes without training again."""
    env, folder = blocked
    r = folder / "stages"
    run(env, ROOT / "data_prep/prepare.py", "--dataset", "synth", "--layout", "5", "--n-train", "16", "--n-test", "4",
        "--copies", "2", "--synth-size", "100", "--seed", "2", "--quiet", "--out", r / "data")
    run(env, ROOT / "tools/make_nets.py", "--run", r, "--layout", "5", "--scale", "0.00005", "--batch", "4")

    def stage(name, *more, check=True):
        return run(env, ROOT / "tools/run_stage.py", "--run", r, "--stage", name, "--engine", "torch", *more,
                   check=check)

    proc = stage("stage1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "--bn-stats recomputed" in proc.stderr and "runs in Caffe" in proc.stderr and "--bn-stats running" in \
        proc.stderr, proc.stderr[-3000:]
    assert (r / "models/bm.raw.caffemodel").exists() and not (r / "models/bm.caffemodel").exists()
    proc = stage("stage1", "--bn-stats", "running")
    assert "training skipped" in proc.stdout, proc.stdout
    m = r / "models"
    stage("stage2", "--init", m / "bm.caffemodel", "--loss-weights", "uniform", "--bn-stats", "running")
    assert "Fixed layers" in (r / "logs/stage2.log").read_text()  # stage 2's cache ran, on the engine alone
    stage("stage3", "--init", m / "stage2.caffemodel", "--loss-weights", "uniform", "--bn-stats", "running")
    stage("heads", "--init", m / "wm.caffemodel", "--loss-weights", "uniform", "--bn-stats", "running")
    stage("pre_bm", "--bn-stats", "running")
    doc = json.loads((r / "manifest.json").read_text())["artifacts"]
    for product in ("bm", "stage2", "wm", "heads", "pre_bm"):
        e = doc[f"models/{product}.caffemodel"]
        assert (e["engine"], e["device"], e["bn_stats"]) == ("torch", "cpu", "running"), product
        assert (m / f"{product}.caffemodel").stat().st_size > 0
    # Iteration 0 of the stages that start from fillers: the engine's own, drawn with the solver's seed.
    assert doc["models/bm.caffemodel"]["fillers"] == doc["models/pre_bm.caffemodel"]["fillers"] == "torch"
    assert "fillers" not in doc["models/stage2.caffemodel"]  # it starts from BM's weights
    assert "initial weights from torch's fillers" in (r / "logs/stage1.log").read_text()
