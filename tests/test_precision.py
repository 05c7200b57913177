"""The torch engine's opt-in bfloat16 training (PRECISION=bf16, docs/ENGINE.md).

On a tiny run (layout 5, batch 8): bf16 training is deterministic, really runs its
convolutions in bfloat16 yet keeps the losses close to float32's, keeps the BatchNorm
statistics blobs float32 and finite, and is recorded in the stage manifest; it is refused
by name (PrecisionError) where the device has no bfloat16 and with the Caffe engine.
The tests that train in bf16 need the CPU's bfloat16 instructions and skip without them.
"""

from __future__ import annotations

import dataclasses

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, new_run, tool

from mcl.engine import device as dev
from mcl.engine.device import PrecisionError, bf16_support, check_precision
from mcl.engine.solver import Solver, read_model
from mcl.run.stage import StageError, StageSpec
from mcl.run.torch_engine import TorchStage

torch.set_num_threads(1)

STAGE = "tools/run_stage.py"
STEPS = 3
# bfloat16 keeps 8 significant bits (7 stored + the implicit one): each product, and each input a
# convolution reads, is rounded with a relative error up to 2^-8 ~ 0.4% (float32: 2^-24). The
# sums themselves accumulate in float32, so the rounding errors of a layer's K terms largely average
# out; through the net's ~10 layers and 3 steps the loss moves by far less than 10 times 0.4%.
# 5% is loose on purpose: it fails a loss computed in the wrong place, not a rounding.
LOSS_RTOL = 0.05

needs_bf16 = pytest.mark.skipif(bf16_support("cpu") is None,
                                reason="this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-point run, 48 training faces, batch 8 (stage 1: 36 iterations; the tests take a few)."""
    return new_run(tmp_path_factory.mktemp("precision") / "run", scale=0.0002, batch=8, n_train=48)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 5-point run with 16 training faces, batch 4 (stage 1: 9 iterations), for the stage runner."""
    return new_run(tmp_path_factory.mktemp("precision_stage") / "run", scale=0.00005, batch=4, n_train=16)


def train(run, precision: str, steps: int = STEPS) -> tuple[Solver, list[float]]:
    s = Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision=precision)
    losses = []
    for _ in range(steps):
        s.step()
        losses.append(s.loss)
    return s, losses


def run_stage_main(argv) -> int:
    spec = importlib.util.spec_from_file_location("tool_run_stage", ROOT / "tools" / "run_stage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(a) for a in argv])


@needs_bf16
def test_bf16_training_is_deterministic(run):
    a, la = train(run, "bf16")
    b, lb = train(run, "bf16")
    assert la == lb
    ba, bb = a.blobs(), b.blobs()
    assert ba.keys() == bb.keys()
    for name in ba:
        for x, y in zip(ba[name], bb[name]):
            assert x.dtype == np.float32 and np.array_equal(x, y), name
    for ha, hb in zip(a.sgd.history, b.sgd.history):
        assert ha.dtype == torch.float32 and torch.equal(ha, hb)


@needs_bf16
def test_bf16_runs_in_bfloat16_with_float32_weights_and_close_losses(run):
    seen = {}
    s = Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision="bf16")

    def hook(module, inputs, output):
        seen.setdefault("conv11", output.dtype)

    s.net.layer("conv11").register_forward_hook(hook)
    s.step()
    assert seen["conv11"] == torch.bfloat16  # the convolutions compute in bfloat16
    assert all(p.dtype == torch.float32 for p in s.net.parameters())  # the master weights stay float32
    assert all(h.dtype == torch.float32 for h in s.sgd.history)
    fp32, l32 = train(run, "fp32")
    bf16, l16 = train(run, "bf16")
    assert l32 != l16  # bf16 really rounds otherwise
    assert any(not np.array_equal(x, y) for n in fp32.blobs() for x, y in zip(fp32.blobs()[n], bf16.blobs()[n]))
    for x, y in zip(l32, l16):
        assert np.isfinite(y) and abs(y - x) <= LOSS_RTOL * abs(x), (l32, l16)


@needs_bf16
def test_bf16_maps_are_channels_last_and_its_snapshots_resume_to_the_bit(run, tmp_path):
    """On a CPU the bf16 path keeps its weights (so its maps) channels-last, its BatchNorm chains and poolings in
    the engine's kernels on float32 (tests/test_clkernels.py), or PyTorch's where those did not build. A bf16
    snapshot holds the blobs in Caffe's order whatever the memory layout: resumed, the run goes on as if not
    stopped."""
    bf16 = Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision="bf16")
    w16 = bf16.net.layer("conv12").weight
    assert bf16.maps == ("channels-last, mcl kernels" if bf16.fused.kernels else "channels-last")
    assert not w16.is_contiguous() and w16.is_contiguous(memory_format=torch.channels_last)
    seen = {}
    bf16.net.layer("conv12").register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    bf16.step()
    assert seen["out"].is_contiguous(memory_format=torch.channels_last) and seen["out"].shape[1] > 1
    # the blobs as Caffe stores them: the same values the NCHW tensors would give, element by element
    assert np.array_equal(bf16.blobs()["conv12"][0], w16.detach().contiguous().numpy())
    a, _ = train(run, "bf16", steps=4)
    b, _ = train(run, "bf16", steps=2)
    prefix = tmp_path / "snap"
    b.settings = dataclasses.replace(b.settings, snapshot_prefix=str(prefix))
    b.snapshot()
    c = Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision="bf16")
    c.restore(f"{prefix}_iter_2.solverstate")
    for _ in range(2):
        c.step()
    for name, blobs in a.blobs().items():
        for x, y in zip(blobs, c.blobs()[name]):
            assert np.array_equal(x, y), name


@needs_bf16
def test_batchnorm_statistics_stay_float32_after_a_bf16_step(run):
    s, _ = train(run, "bf16", steps=1)
    bns = [lay.name for lay in s.net_param.layer if lay.type == "BatchNorm"]
    assert bns
    blobs = s.blobs()
    for name in bns:
        layer = s.net.layer(name)
        for buf in (layer.mean_sum, layer.var_sum, layer.factor):
            assert buf.dtype == torch.float32
        for a in blobs[name]:
            assert a.dtype == np.float32 and np.isfinite(a).all(), name
        assert blobs[name][2][0] > 0  # the running statistics moved
    s.snapshot()  # a float32 Caffe file, as fp32's
    saved = read_model(s.snapshot_paths()[1])
    assert all(a.dtype == np.float32 for arrays in saved.values() for a in arrays)


@needs_bf16
def test_the_manifest_of_a_bf16_stage_says_bf16(small_run):
    tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "torch", "--precision", "bf16",
         "--bn-stats", "running")
    doc = json.loads((small_run / "manifest.json").read_text())["artifacts"]
    for key in ("models/bm.raw.caffemodel", "models/bm.caffemodel"):
        assert (doc[key]["engine"], doc[key]["device"], doc[key]["precision"]) == ("torch", "cpu", "bf16")
    log = (small_run / "logs" / "stage1.log").read_text()
    # the worker's specification (one JSON object on its command line) and the engine's own line
    assert '"precision": "bf16"' in log and "precision bf16" in log
    # the reports' provenance (mcl.records.provenance) says it, for the model and what is made from it
    from mcl.records import provenance
    made = provenance.trained_with(small_run, small_run / "models/bm.caffemodel")
    assert (made["engine"], made["precision"]) == ("torch", "bf16")
    assert provenance.engine_label(made) == "torch (bf16)"
    assert provenance.engine_label({"engine": "torch", "precision": "fp32"}) == "torch"
    # another precision is another training, as another engine is
    proc = tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "torch", "--bn-stats", "running")
    assert "training skipped" not in proc.stdout, proc.stdout
    doc = json.loads((small_run / "manifest.json").read_text())["artifacts"]
    assert doc["models/bm.raw.caffemodel"]["precision"] == doc["models/bm.caffemodel"]["precision"] == "fp32"


def test_bf16_is_refused_where_the_cpu_lacks_it(run, small_run, monkeypatch, capsys):
    monkeypatch.setattr(dev, "bf16_support", lambda device="cpu": None)
    with pytest.raises(PrecisionError, match=r"avx512_bf16.*PRECISION=fp32"):
        Solver(run, "solvers/stage1_solver.prototxt", fillers="torch", precision="bf16")
    assert isinstance(PrecisionError("x"), ValueError)
    spec = StageSpec(small_run, "stage1", None, small_run / "models/x.raw.caffemodel", "torch", "cpu",
                     precision="bf16")
    with pytest.raises(StageError, match=r"stage1: --precision bf16 on cpu: .*PRECISION=fp32"):
        TorchStage(spec)
    rc = run_stage_main(["--run", small_run, "--stage", "stage1", "--engine", "torch", "--precision", "bf16",
                         "--bn-stats", "running", "--out", small_run / "models/bf16.caffemodel"])
    err = capsys.readouterr().err
    assert rc == 2 and "bfloat16" in err and "PRECISION=fp32" in err and "Traceback" not in err, err
    assert not (small_run / "models/bf16.caffemodel").exists()


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert bf16_support("cuda:0") is None
    with pytest.raises(PrecisionError, match=r"is_bf16_supported\(\) is false.*PRECISION=fp32"):
        check_precision("bf16", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert check_precision("bf16", "cuda:0") == "bf16"
    assert check_precision("fp32", "cuda:0") == "fp32"
    with pytest.raises(PrecisionError, match="not a precision"):
        check_precision("fp16", "cpu")


def test_bf16_is_refused_with_the_caffe_engine(small_run):
    with pytest.raises(PrecisionError, match=r"Caffe has no bfloat16.*PRECISION=fp32"):
        check_precision("bf16", "cpu", engine="caffe")
    proc = tool(STAGE, "--run", small_run, "--stage", "stage1", "--engine", "caffe", "--precision", "bf16",
                "--bn-stats", "running", "--out", small_run / "models/caffe_bf16.caffemodel", check=False)
    assert proc.returncode == 2 and "Caffe has no bfloat16" in proc.stderr and "PRECISION=fp32" in proc.stderr \
        and "Traceback" not in proc.stderr, proc.stderr
    assert not (small_run / "models/caffe_bf16.caffemodel").exists()
