"""Shared fixtures: real Caffe, small data written in the formats the nets read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def caffe():
    import caffe as _caffe
    _caffe.set_mode_cpu()
    return _caffe


@pytest.fixture(scope="session")
def caffe_tool():
    from mcl.caffe.check import caffe_tool as find
    return find()


def run_caffe(tool, *args, cwd=None, timeout=600):
    """Run the caffe tool; return its combined log text. Fails the test with the log on error."""
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"caffe {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def synthetic_batch(n_samples: int, n_points: int, seed: int):
    """Learnable toy faces: a bright square whose position is the landmarks' offset."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n_samples, 50, 50), dtype=np.uint8)
    base = rng.uniform(15, 35, size=(n_points, 2))
    offsets = rng.uniform(-8, 8, size=(n_samples, 2))
    for i, (dx, dy) in enumerate(offsets):
        x, y = int(25 + dx), int(25 + dy)
        images[i, y - 4:y + 4, x - 4:x + 4] = 230
    points = base[None] + offsets[:, None, :]  # (N, n, 2) crop pixels
    iod = np.full(n_samples, 20.0) + rng.uniform(-2, 2, n_samples)
    return images, points.astype(np.float32), iod.astype(np.float32)


def normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) - 128.0) * 0.0078125)[:, None]


def write_hdf5(run: Path, split: str, images, points, iod) -> Path:
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    n = len(images)
    crop_to_image = np.tile(np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]), (n, 1, 1))  # crops at half size
    with h5py.File(data / f"{split}.h5", "w") as f:
        f["data"] = normalise(images)
        f["landmarks"] = points.reshape(n, -1)
        f["inv_iod"] = (1.0 / iod).astype(np.float32)
        f["crop_to_image"] = crop_to_image
        f["landmarks_image"] = points.astype(np.float64) * 2.0 + np.array([10.0, 20.0])
        f["iod_image"] = iod.astype(np.float64) * 2.0
    (data / f"{split}.txt").write_text(f"data/{split}.h5\n")
    return data / f"{split}.txt"


def write_lmdb(run: Path, split: str, images, points, iod) -> None:
    from mcl.caffe.proto import caffe_pb2
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, make in ((f"{split}_lmdb", "image"), (f"{split}_targets_lmdb", "target")):
        env = lmdb.open(str(data / name), map_size=1 << 28)
        with env.begin(write=True) as txn:
            for i in range(len(images)):
                d = caffe_pb2.Datum()
                if make == "image":
                    d.channels, d.height, d.width = 1, 50, 50
                    d.data = images[i].tobytes()
                else:
                    vals = np.concatenate([points[i].ravel(), [1.0 / iod[i]]]).astype(np.float32)
                    d.channels, d.height, d.width = len(vals), 1, 1
                    d.float_data.extend(vals.tolist())
                txn.put(f"{i:08d}".encode(), d.SerializeToString())
        env.close()
