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
