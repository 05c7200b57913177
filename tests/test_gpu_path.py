"""The torch engine's GPU path, tested where there is no GPU (docs/GPU.md).

What can be shown on a CPU: the cuda settings a stage trains under (asserted on torch's
own flags), the named errors for a device this machine or this PyTorch does not have
(the device count monkeypatched), what the manifest records of the device (the GPU's
facts read through monkeypatched torch.cuda calls and a stand-in nvidia-smi), that a
finished stage keeps its record when DEVICE changes, and that one training step creates
every tensor on the solver's device (run on PyTorch's `meta` device, which holds no data:
a tensor made on the CPU by default shows up as a CPU tensor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, new_run, tool
from torch.overrides import TorchFunctionMode

from mcl.engine import device as dev
from mcl.engine.device import DeviceError, check_device, configure_device, device_facts
from mcl.engine.solver import Solver
from mcl.run import stage as stage_mod
from mcl.records.provenance import engine_record
from mcl.run.stage import StageError, StageSpec
from mcl.run.torch_engine import TorchStage

STAGE = "tools/run_stage.py"


@pytest.fixture
def torch_flags(monkeypatch):
    """Restores torch's global numerics flags and CUBLAS_WORKSPACE_CONFIG after a test sets them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.use_deterministic_algorithms(saved[0])
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
     torch.backends.cudnn.allow_tf32) = saved[1:5]
    torch.set_float32_matmul_precision(saved[5])


def flags() -> dict:
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision()}


def test_cuda_trains_deterministic_in_full_float32_by_default(torch_flags):
    # Start from the opposite of every default, so that each flag is seen being set.
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    configure_device(torch.device("cuda"))  # settable without a GPU: these are process-wide flags
    assert flags() == {"deterministic_algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
                       "matmul_tf32": False, "cudnn_tf32": False, "matmul_precision": "highest"}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS's reproducible workspace


def test_tf32_is_an_opt_in_and_determinism_an_opt_out(torch_flags, monkeypatch):
    configure_device(torch.device("cuda:0"), tf32=True)
    assert flags()["matmul_tf32"] and flags()["cudnn_tf32"] and flags()["matmul_precision"] == "high"
    assert flags()["deterministic_algorithms"]  # TF32 alone leaves the kernels deterministic
    configure_device(torch.device("cuda:0"), deterministic=False)
    assert flags() == {"deterministic_algorithms": False, "cudnn_deterministic": False, "cudnn_benchmark": True,
                       "matmul_tf32": False, "cudnn_tf32": False, "matmul_precision": "highest"}
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other reproducible setting: a user's is kept
    configure_device(torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_the_cpu_leaves_the_process_flags_alone(torch_flags):
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    before = flags()
    configure_device(torch.device("cpu"), tf32=False, deterministic=True)
    assert flags() == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_device_this_machine_lacks_is_named(monkeypatch):
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'gpu': not a device"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError) as err:
        check_device("cuda:1")
    assert "cuda:1" in str(err.value) and "0 CUDA devices are visible" in str(err.value)
    assert "CUDA_VISIBLE_DEVICES=''" in str(err.value)  # the usual reason a GPU machine shows none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == torch.device("cuda") and check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError) as err:
        check_device("cuda:2")
    assert "cuda:2" in str(err.value) and "only 2 CUDA devices visible (cuda:0 .. cuda:1" in str(err.value)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 5-point run with 16 training faces, batch 4 (stage 1: 9 iterations, the others 3)."""
    return new_run(tmp_path_factory.mktemp("gpu_path") / "run", scale=0.00005, batch=4, n_train=16)


def test_the_worker_stops_on_a_gpu_index_past_the_last(small_run, monkeypatch):
    """The torch engine's stage checks the device before building anything (two GPUs seen)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spec = StageSpec(small_run, "stage1", None, small_run / "models/x.raw.caffemodel", "torch", "cuda:3")
    with pytest.raises(StageError, match=r"stage1: --device cuda:3: only 2 CUDA devices visible"):
        TorchStage(spec)


def test_run_stage_names_a_missing_cuda_device(small_run):
    """Through the tool, on this machine's own PyTorch: exit 2 and the device named, no traceback."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    proc = tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "torch", "--device", "cuda:99",
                "--bn-stats", "running", "--out", small_run / "models/nowhere.caffemodel", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--device cuda:99" in proc.stderr and "visible" in proc.stderr and "Traceback" not in proc.stderr
    assert not (small_run / "models/nowhere.caffemodel").exists()


def test_the_manifest_records_the_gpu(monkeypatch, tmp_path):
    """The GPU's facts as torch.cuda and nvidia-smi report them (both stood in for here)."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"NVIDIA H200 #{i}", major=9, minor=0))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\necho 550.54.15\n")  # one line per GPU
    smi.chmod(0o755)
    monkeypatch.setattr(dev.shutil, "which", lambda name: str(smi) if name == "nvidia-smi" else None)
    facts = device_facts(torch.device("cuda"), tf32=True, deterministic=False)
    assert facts == {"device": "cuda", "torch_version": torch.__version__, "deterministic": False, "tf32": True,
                     "gpu_index": 1, "gpu_name": "NVIDIA H200 #1", "gpu_capability": "9.0", "cuda_version": "12.4",
                     "cudnn_version": 90100, "gpu_driver": "550.54.15"}
    record = engine_record("torch", "cuda", facts)
    assert record == {"engine": "torch", **facts}
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)  # no nvidia-smi: the driver is unknown, not guessed
    assert device_facts(torch.device("cuda:0"))["gpu_driver"] is None
    assert engine_record("caffe", "cpu", facts) == {"engine": "caffe", "device": "cpu"}


def test_a_finished_stage_keeps_the_device_it_was_trained_on(small_run):
    """Trained on the CPU, then asked for again with --device cuda:0: kept, and still recorded as
    trained on the CPU (the manifest's entry of the engine's model is not written again)."""
    tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "torch", "--bn-stats", "running")
    doc = json.loads((small_run / "manifest.json").read_text())["artifacts"]
    raw, product = doc["models/bm.raw.caffemodel"], doc["models/bm.caffemodel"]
    try:
        import caffe  # noqa: F401  (whose fillers drew iteration 0 depends on it)
        fillers = "caffe"
    except ImportError:
        fillers = "torch"
    for e in (raw, product):
        assert (e["engine"], e["device"], e["torch_version"]) == ("torch", "cpu", torch.__version__)
        assert (e["tf32"], e["deterministic"], e["fillers"]) == (False, True, fillers)
        assert "gpu_name" not in e
    proc = tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "torch", "--bn-stats", "running",
                "--device", "cuda:0")
    assert "training skipped" in proc.stdout and "device cpu" in proc.stdout, proc.stdout
    after = json.loads((small_run / "manifest.json").read_text())["artifacts"]
    assert after["models/bm.raw.caffemodel"] == raw
    assert after["models/bm.caffemodel"]["device"] == "cpu" and after["models/bm.caffemodel"]["sha256"] == \
        product["sha256"]


def test_tf32_is_refused_where_it_does_not_exist(small_run):
    for extra in (["--engine", "torch"], ["--engine", "caffe"]):
        proc = tool(STAGE, "--run", small_run, "--stage", "stage1", "--tf32", "on", "--bn-stats", "running", *extra,
                    "--out", small_run / "models/tf32.caffemodel", check=False)
        assert proc.returncode == 2 and "--tf32 on" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


class OffDevice(TorchFunctionMode):
    """Every tensor a torch function returns while active: how many, and those not on `device`."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.seen, self.off = device, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.seen += 1
                if t.device.type != self.device:
                    self.off.append((getattr(func, "__name__", repr(func)), str(t.device), tuple(t.shape)))
        return out


def test_the_watch_sees_a_tensor_made_on_the_cpu():
    """The measurement of the next test: a tensor created without a device is caught."""
    with OffDevice("meta") as watch:
        torch.ones(2, device="meta") + 1
        torch.zeros(3)
    assert watch.off == [("zeros", "cpu", (3,))] and watch.seen == 3


@pytest.mark.parametrize("stage", ["stage1", "stage2", "heads"])
def test_every_tensor_of_a_step_follows_the_device(small_run, stage):
    """Stage 1 (fused chains, Eq. 4 groups), stage 2 and the heads (their fixed-layer caches): the
    caches and two training steps on `meta`, every tensor they make there, none on the CPU."""
    solver = Solver(small_run, f"solvers/{stage}_solver.prototxt", device="meta", fillers="torch")
    assert (solver.fixed_prefix is None) == (stage == "stage1")  # the cache is exercised where it exists
    with OffDevice("meta") as watch:
        if solver.fixed_prefix is not None:
            solver.fixed_prefix.build()
        solver.step()
        solver.step()
    assert watch.off == [] and watch.seen > 100
    held = list(solver.net.parameters()) + list(solver.net.buffers()) + solver.sgd.history
    assert {t.device.type for t in held} == {"meta"} and solver.last_losses.device.type == "meta"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the worker would train on this machine's GPU")
@pytest.mark.parametrize("deterministic", ["on", "off"])
def test_the_worker_sets_cublas_workspace_before_torch_loads(small_run, deterministic):
    """CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts: the cuda worker sets it before torch is imported
    (here it then stops at the missing GPU, exit 3, with the variable set only under determinism)."""
    spec = StageSpec(small_run, "stage1", None, small_run / "x.caffemodel", "torch", "cuda:0",
                     deterministic=deterministic == "on").to_json()
    code = ("import os, sys; from mcl.run import worker; assert 'torch' not in sys.modules; "
            f"rc = worker.main(['--spec', {spec!r}]); "
            "print(rc, os.environ.get('CUBLAS_WORKSPACE_CONFIG'))")
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["3", ":4096:8" if deterministic == "on" else "None"], proc.stdout


def test_recomputed_statistics_without_pycaffe_are_refused_before_training(monkeypatch):
    """Where no `caffe` package is installed at all, the torch engine's stage stops before it trains."""
    monkeypatch.setattr(stage_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StageError, match="--bn-stats recomputed: the BatchNorm statistics step runs in Caffe"):
        stage_mod.check_engine_options(engine="torch", device="cuda", bn_stats="recomputed")
    stage_mod.check_engine_options(engine="torch", device="cuda", bn_stats="running")  # needs no Caffe


# ---- parallel jobs: DEVICE=cuda takes a GPU of its own (docs/GPU.md, "Parallel jobs") ----------------

def test_a_job_a_scheduler_gave_one_gpu_takes_cuda_0(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3"}  # the scheduler's choice: the job sees one GPU, as cuda:0
    assert dev.pick_gpu(env, count=1, lock_dir=tmp_path) == ("cuda:0", None)
    assert dev.pick_gpu({}, count=1, lock_dir=tmp_path) == ("cuda:0", None)
    assert list(tmp_path.iterdir()) == []  # nothing to share: no lock taken


def test_jobs_spread_over_the_visible_gpus_one_each_while_one_is_free(tmp_path):
    held = [dev.pick_gpu({}, count=4, lock_dir=tmp_path) for _ in range(4)]
    assert [d for d, _ in held] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    # A fifth job with all four held shares one, round robin by its slot.
    assert dev.pick_gpu({}, count=4, lock_dir=tmp_path, slot=5) == ("cuda:1", None)
    held[2][1].close()  # the job on cuda:2 ends: the kernel lets its lock go
    device, lock = dev.pick_gpu({}, count=4, lock_dir=tmp_path)
    assert device == "cuda:2" and lock is not None
    for _, h in held[:2] + held[3:] + [(device, lock)]:
        h.close()


def test_the_locks_name_the_gpus_outside_the_process(tmp_path):
    """With CUDA_VISIBLE_DEVICES=2,3 the process's cuda:0 is GPU 2: a job holding GPU 2 (seen as its
    own cuda:0 under CUDA_VISIBLE_DEVICES=2) leaves cuda:1 (GPU 3) to the next."""
    _, other = dev.pick_gpu({"CUDA_VISIBLE_DEVICES": "2,3"}, count=2, lock_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-2.lock"]
    device, mine = dev.pick_gpu({"CUDA_VISIBLE_DEVICES": "3,2"}, count=2, lock_dir=tmp_path)
    assert device == "cuda:0" and (tmp_path / "gpu-3.lock").exists()  # GPU 3 is this process's cuda:0
    other.close()
    mine.close()


def test_without_locks_jobs_go_round_robin_by_slot(monkeypatch, tmp_path):
    assert [dev.pick_gpu({}, count=2, slot=s)[0] for s in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # the count PyTorch sees, by default
    assert dev.visible_gpus({}) == ["0", "1", "2"] and dev.visible_gpus({"CUDA_VISIBLE_DEVICES": "5,7"}) == ["5", "7"]
    assert dev.gpu_lock_dir({"MCL_GPU_LOCKS": str(tmp_path)}) == tmp_path
