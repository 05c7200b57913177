"""`make gpu-check` (benchmarks/gpu_check.py) and `make bench-engine DEVICE=cuda`'s
plan, where there is no GPU.

What a CPU can show: the whole check run on the CPU against itself passes in a process where
neither Caffe nor OpenCV imports (what a GPU machine with only PyTorch, NumPy, h5py and protobuf
has), with every check and the timings in its JSON; a mismatch planted in one run is reported
as a failed check with exit status 1; a device that is not there is a named error, exit 2; the
projection of the paper's schedule, against figures worked out by hand; and that the
benchmark plans no Caffe process for a GPU, and times the torch engine alone.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tool

import bench_engine as bench  # benchmarks/ (pyproject.toml: pytest's pythonpath)
import gpu_check

from mcl.engine import schedule
from mcl.engine.solver import Solver

CHECKS = {"losses", "blobs", "repeatable", "resume", "across devices", "on the device"}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """Environment variables under which `import caffe`, `import cv2` and `import lmdb` fail."""
    block = tmp_path_factory.mktemp("bare") / "block"
    for name in ("caffe", "cv2", "lmdb"):
        (block / name).mkdir(parents=True)
        (block / name / "__init__.py").write_text(f'raise ImportError("{name} is blocked in this test")\n')
    return {"PYTHONPATH": f"{block}:{ROOT}"}


def test_the_blocked_modules_really_fail_to_import(bare):
    for name in ("caffe", "cv2"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                              env={**os.environ, **bare}, check=False)
        assert proc.returncode != 0 and f"{name} is blocked" in proc.stderr


def test_gpu_check_on_the_cpu_against_itself_passes_without_caffe_or_opencv(bare, tmp_path):
    out = tmp_path / "out.json"
    proc = tool("benchmarks/gpu_check.py", "--device", "cpu", "--steps", 3, "--threads", 1, "--json", out, env=bare,
                check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["device"] == "cpu" and doc["steps"] == 3
    got = {(c["stage"], c["name"]): c["passed"] for c in doc["checks"]}
    assert got == {(s, n): True for s in ("stage1", "stage2", "heads") for n in CHECKS}
    for stage in ("stage1", "stage2", "heads"):
        t = doc["timings"][stage]
        assert t["ms_per_iter"] > 0 and t["latency_ms"] > 0 and len(t["latency_all_ms"]) == 3
        assert len(doc["stages"][stage]["losses_device"]) == 3
        # On the CPU against itself the two runs are the same computation: equal losses.
        assert doc["stages"][stage]["losses_device"] == doc["stages"][stage]["losses_reference"]
    assert doc["timings"]["stage1"]["fixed_ms_per_row"] is None  # stage 1 fixes nothing
    assert doc["timings"]["heads"]["fixed_ms_per_row"] > 0 and doc["timings"]["stage2"]["fixed_ms_per_row"] > 0
    assert doc["projection"]["iterations"] == 360000  # 180k + 3 x 60k (Algorithm 1 at the paper's schedule)
    assert "projected paper schedule" in proc.stdout and "18 of 18 checks passed" in proc.stdout


class Planted:
    """Moves every blob of the runs in folders named `role` by 5% after they start (the BatchNorms
    undo most of it: the loss moves by about 1e-3)."""

    def __init__(self, role: str, real):
        self.role, self.real, self.hit = role, real, 0

    def __call__(self, solver: Solver, state):
        solver = self.real(solver, state)
        if solver.run.name.endswith(f"-{self.role}"):
            self.hit += 1
            blobs = {n: [a * np.float32(1.05) for a in arrays] for n, arrays in solver.blobs().items()}
            solver.net.load_caffe_blobs(blobs)
        return solver


@pytest.mark.parametrize(("role", "fails"), [
    ("device", {"losses", "blobs", "repeatable"}),  # the second device run is not moved: it differs from the first
    ("device-again", {"repeatable"}),
])
def test_a_planted_mismatch_fails_its_check_with_exit_1(monkeypatch, tmp_path, role, fails):
    """A tiny stage 1 (5 points, batch 8) whose device run, or second device run, is moved off."""
    torch.set_num_threads(1)
    planted = Planted(role, gpu_check.start)
    monkeypatch.setattr(gpu_check, "start", planted)
    out, text = tmp_path / "out.json", io.StringIO()
    rc = gpu_check.gpu_check("cpu", steps=2, json_path=str(out), layout="5", batch=8, stages=("stage1",), out=text)
    assert rc == 1 and planted.hit == 1, text.getvalue()
    doc = json.loads(out.read_text())
    failed = {c["name"] for c in doc["checks"] if not c["passed"]}
    assert failed == fails and doc["passed"] is False, text.getvalue()
    assert all(f"FAIL {n}:" in text.getvalue() for n in fails) and "FAILED: stage1" in text.getvalue()


def test_a_device_that_is_not_there_is_named_exit_2(monkeypatch, capsys):
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("a machine with 8 GPUs")
    proc = tool("benchmarks/gpu_check.py", "--device", "cuda:7", check=False, timeout=120)
    assert proc.returncode == 2 and "--device cuda:7" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_check.gpu_check("cuda:7", out=io.StringIO()) == 2
    assert "only 2 CUDA devices visible" in capsys.readouterr().err
    assert gpu_check.gpu_check("cpu", steps=1, out=io.StringIO()) == 2  # no step to resume from
    assert "--steps 1" in capsys.readouterr().err


def test_the_projection_of_the_paper_schedule():
    # Worked by hand: 240k iterations (stage 1 + stage 3) at 3 ms, 60k (stage 2) at 2 ms, 60k
    # (heads) at 1 ms, and the fixed pass of stage 2 and the heads over 1,000 rows at 0.01 ms a row:
    # 720,000 + 120,000 + 60,000 + 2 x 10 ms = 900,020 ms = 0.2500056 h.
    p = schedule.project({"stage1": 3.0, "stage2": 2.0, "heads": 1.0},
                         {"stage1": None, "stage2": 0.01, "heads": 0.01}, rows=1000)
    assert p["iterations"] == 360000 and p["total_hours"] == pytest.approx(900020 / 3.6e6)
    assert p["hours"]["stage1"] == pytest.approx(0.2) and "360k iterations" in p["line"]


def test_the_training_rows_agree_with_mcl_data():
    # 3,148 faces (Sec. IV-A-1), 10% for validation: 2,833, 10 augmented copies each.
    assert schedule.TRAINING_ROWS_300W == bench.training_rows() == 28330


# ---- make bench-engine DEVICE=cuda -------------------------------------------------------------------

def test_the_benchmark_plans_no_caffe_for_a_gpu():
    assert bench.plan("cpu")["engines"] == ("caffe", "torch") and bench.plan("cpu")["target"] == bench.TARGET
    for device in ("cuda", "cuda:1"):
        p = bench.plan(device)
        assert p["engines"] == ("torch",) and p["target"] is None and "throughput" in p["measures"]


def test_bench_on_cuda_starts_only_a_torch_child(monkeypatch, tmp_path):
    """compare_engines(device="cuda") starts processes: the first one it starts is recorded, then stopped."""
    started = []

    def popen(argv, **kw):
        started.append(json.loads(argv[-1]))
        raise RuntimeError("stopped here")

    monkeypatch.setattr(bench.subprocess, "Popen", popen)
    for device in ("cuda", "cpu"):
        with pytest.raises(RuntimeError, match="stopped here"):
            bench.compare_engines(layout="5", batch=8, device=device)
    assert [(s["engine"], s["device"]) for s in started] == [("torch", "cuda"), ("caffe", "cpu")]


def test_the_torch_engine_alone_times_throughput_and_latency_without_caffe(bare, tmp_path):
    """The GPU branch run on the CPU (the branch is the same code for any device): no Caffe process."""
    out = tmp_path / "bench.json"
    code = (f"import bench_engine as bench; bench.torch_alone(layout='5', batch=8, threads=1, device='cpu', "
            f"warmup=1, iters=2, json_path={str(out)!r})")
    caffe_only = tmp_path / "block" / "caffe"  # the parent needs OpenCV (mcl.data), not Caffe
    caffe_only.mkdir(parents=True)
    (caffe_only / "__init__.py").write_text('raise ImportError("caffe is blocked in this test")\n')
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'block'}:{ROOT / 'benchmarks'}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "projected paper schedule" in proc.stdout and "Caffe" not in proc.stdout.replace("no Caffe", "")
    assert "target" not in proc.stdout
    res = json.loads(out.read_text())
    for stage in ("stage1", "stage2", "heads"):
        assert res[stage]["torch"] > 0 and res[stage]["latency"] > 0 and len(res[stage]["all"]["latency"]) == 2
        assert "caffe" not in res[stage]
    assert res["engines"] == ["torch"] and res["projection"]["iterations"] == 360000
