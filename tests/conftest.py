"""Shared fixtures and helpers: real Caffe, small data written in the formats the nets read,
the repository's tools run as a user runs them, the tiny run several test files share, and
the process-tree helpers of the kill and signal tests.

The dataset writers of the data tests (300-W, COFW, MTFL, generic) are in fixtures_data.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Change one bit of a file, at `where` (a fraction of its length)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


# ---- the repository's own tools, as a user runs them --------------------------------------------

PY = sys.executable


def tool(script, *args, check: bool = True, timeout: float | None = 600, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    """Run `script` (a path relative to the repository: tools/run_stage.py, data_prep/prepare.py)
    with this interpreter, extra environment variables in `env`; with `check`, a non-zero exit
    fails the test with the output's tails. The default timeout is pytest-timeout's limit per test."""
    proc = subprocess.run([PY, str(ROOT / script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else dict(os.environ, **env))
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def make(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`make <args>` in the repository (extra environment variables in `env`); with `check`, a
    failure fails the test with the output's tails."""
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          env=None if env is None else dict(os.environ, **env))
    if check and proc.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}")
    return proc


# The settings of the end-to-end `make` tests: the built-in synthetic faces, 5 points, a tiny
# schedule (stage 1: 36 iterations, the others 12), batch 8.
MAKE_TINY = ["DATASET=synth", "LAYOUT=5", "SCALE=0.0002", "BATCH=8", "SEED=3",
             "DATA_OPTS=--n-train 60 --n-test 16 --copies 2 --quiet"]


def new_run(path: Path, layout=5, scale=0.0002, batch=8, source="hdf5", n_train=96) -> Path:
    """A run folder with small synthetic train/val/test splits (n_train, 24, 24 faces) and its nets
    (scale 0.0002: stage 1 runs 36 iterations, a snapshot every 3). `layout`: a Layout or its name."""
    from mcl.method.layouts import get_layout
    layout = get_layout(layout) if isinstance(layout, (int, str)) else layout
    for split, n, seed in (("train", n_train, 1), ("val", 24, 2), ("test", 24, 3)):
        write_hdf5(path, split, *synthetic_batch(n, layout.n_points, seed))
    if source == "lmdb":
        write_lmdb(path, "train", *synthetic_batch(n_train, layout.n_points, 1))
    tool("tools/make_nets.py", "--run", path, "--layout", layout.name, "--scale", scale, "--seed", 1, "--batch", batch,
         "--source", source)
    return path


# ---- the tiny run that test_verify, test_corpus and test_faults share ------------------------------

# A synthetic set of 24 + 6 faces in the 5-point layout, 2 crops per training face.
PREPARE = ["--dataset", "synth", "--layout", "5", "--n-train", "24", "--n-test", "6", "--copies", "2",
           "--synth-size", "100", "--seed", "3", "--quiet", "--force"]
# Schedule scale 0.0001: stage 1 runs 18 iterations (a snapshot after each), the others 6.
NETS = ["--layout", "5", "--scale", "0.0001", "--seed", "1", "--batch", "4"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(base, run), built once per session through the tools themselves. base: prepared data
    and the run's nets, what stage 1 starts from. run: base after stage 1 (BM), the Eq. 5
    weights and a joint heads stage from BM. Callers copy what they change."""
    root = tmp_path_factory.mktemp("tiny_run")
    base, run = root / "base", root / "run"
    tool("data_prep/prepare.py", *PREPARE, "--out", base / "data")
    tool("tools/make_nets.py", "--run", base, *NETS)
    shutil.copytree(base, run)
    tool("tools/run_stage.py", "--run", run, "--stage", "stage1")
    tool("tools/compute_weights.py", "--run", run, "--model", run / "models/bm.caffemodel", "--eq", 5,
         "--out", run / "loss_weights/bm_eq5.json")
    tool("tools/run_stage.py", "--run", run, "--stage", "heads", "--init", run / "models/bm.caffemodel",
         "--loss-weights", "uniform")
    return base, run


# ---- files and processes ---------------------------------------------------------------------

def tree(folder) -> dict[str, bytes]:
    """{path relative to `folder`: contents} of every file below it."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, folder)] = Path(p).read_bytes()
    return out


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """The process's start time (telling it from a later one with the same id); None if it is
    gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every process below `pid` (workers, fork server, tracker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = start_time(child)
            todo.append(child)
    return out


def still_running(procs: dict[int, str]) -> list[int]:
    """Those of `procs` (from `descendants`) that are still the same live processes."""
    return [pid for pid, start in procs.items() if start is not None and start_time(pid) == start]


def wait_ended(procs: dict[int, str], seconds: float) -> list[int]:
    """Wait up to `seconds` for `procs` to end; those still running then."""
    deadline = time.time() + seconds
    while still_running(procs) and time.time() < deadline:
        time.sleep(0.05)
    return still_running(procs)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, as the port's comparisons and benchmarks run."""
    import torch  # here, not at the top: most tests never load torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
