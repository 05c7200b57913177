"""The BatchNorm statistics step after every stage (mcl/caffe/bnstats.py) in real Caffe.

The run trains on the built-in synthetic faces with a constant learning rate, so
the weights keep moving through the whole (short) stage as they do early in any
real schedule: Caffe's running averages then describe early weights, and the
stage's product must not.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import tool

from mcl.caffe import bnstats, caffemodel
from mcl.run.stage import StageSpec, run_stage


def constant_lr(run, stage):
    path = run / "solvers" / f"{stage}_solver.prototxt"
    path.write_text(re.sub(r"(?m)^stepsize: \d+$", "stepsize: 100000", path.read_text()))


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("bnstats")
    tool("data_prep/prepare.py", "--dataset", "synth", "--layout", 5, "--seed", 3, "--out", run / "data",
         "--n-train", 120, "--n-test", 24, "--copies", 4, "--quiet")
    tool("tools/make_nets.py", "--run", run, "--layout", 5, "--scale", 0.0006, "--seed", 1, "--batch", 16)
    constant_lr(run, "stage1")  # 108 iterations at lr 0.02
    tool("tools/run_stage.py", "--run", run, "--stage", "stage1")
    return run


def ratio(run, stage, model):
    r = bnstats.phase_losses(run, run / "nets" / f"{stage}_train.prototxt", model, batches=4)
    return r["test_phase"] / r["train_phase"]


def test_product_computes_in_test_phase_what_it_learned_in_train_phase(bn_run):
    product, raw = bn_run / "models" / "bm.caffemodel", bn_run / "models" / "bm.raw.caffemodel"
    assert 0.8 < ratio(bn_run, "stage1", product) < 1.25
    assert ratio(bn_run, "stage1", raw) > 1.5  # Caffe's running averages: stale at this length


def test_only_the_batchnorm_blobs_change(bn_run):
    raw = caffemodel.blobs(caffemodel.load(bn_run / "models" / "bm.raw.caffemodel"))
    product = caffemodel.blobs(caffemodel.load(bn_run / "models" / "bm.caffemodel"))
    assert raw.keys() == product.keys()
    bn = [name for name in raw if name.endswith("_bn")]
    assert len(bn) == 9
    for name in raw:
        same = all(np.array_equal(a, b) for a, b in zip(raw[name], product[name]))
        assert same == (name not in bn), name
    for name in bn:  # statistics over 27 batches (one pass over 432 crops), plain mean: factor 27
        assert product[name][2].tolist() == [27.0]


def test_recomputing_is_deterministic(bn_run, tmp_path):
    again = tmp_path / "again.caffemodel"
    tool("tools/bn_stats.py", "--run", bn_run, "--stage", "stage1", "--model", bn_run / "models" / "bm.raw.caffemodel",
         "--out", again)
    assert again.read_bytes() == (bn_run / "models" / "bm.caffemodel").read_bytes()


def test_manifest_records_the_setting(bn_run):
    doc = json.loads((bn_run / "manifest.json").read_text())["artifacts"]
    assert doc["models/bm.caffemodel"]["bn_stats"] == "recomputed"
    assert doc["models/bm.caffemodel"]["bn_batches"] == 27
    assert doc["models/bm.raw.caffemodel"]["bn_stats"] == "running"
    assert "models/bm.raw.caffemodel" in doc["models/bm.caffemodel"]["inputs"]


def test_running_is_caffes_model_bit_for_bit(bn_run, tmp_path):
    """`running` keeps the model exactly as Caffe wrote it, without training again."""
    proc = tool("tools/run_stage.py", "--run", bn_run, "--stage", "stage1", "--bn-stats", "running")
    assert "training skipped" in proc.stdout
    product, raw = bn_run / "models" / "bm.caffemodel", bn_run / "models" / "bm.raw.caffemodel"
    assert product.read_bytes() == raw.read_bytes()
    doc = json.loads((bn_run / "manifest.json").read_text())["artifacts"]
    assert doc["models/bm.caffemodel"]["bn_stats"] == "running"
    # ... and the raw model is what the Caffe runner alone writes from the same solver.
    plain = tmp_path / "plain.caffemodel"
    spec = StageSpec(bn_run, "stage1", None, plain)
    for p in (bn_run / "snapshots").glob("stage1_iter_*"):  # train afresh, not from the last snapshot
        p.unlink()
    run_stage(spec, progress=False)
    assert plain.read_bytes() == raw.read_bytes()
    tool("tools/run_stage.py", "--run", bn_run, "--stage", "stage1")  # back to the default for the other tests


def test_fixed_layers_statistics_are_those_of_the_model_they_start_from(bn_run):
    """Stage 2 under the default `global` reading: conv11..conv32's BatchNorm keeps the
    recomputed statistics of BM through training, and its product recomputes them to the
    same values (same weights, same batches)."""
    constant_lr(bn_run, "stage2")
    tool("tools/run_stage.py", "--run", bn_run, "--stage", "stage2", "--init", bn_run / "models" / "bm.caffemodel",
         "--loss-weights", "uniform")
    bm = caffemodel.blobs(caffemodel.load(bn_run / "models" / "bm.caffemodel"))
    raw = caffemodel.blobs(caffemodel.load(bn_run / "models" / "stage2.raw.caffemodel"))
    product = caffemodel.blobs(caffemodel.load(bn_run / "models" / "stage2.caffemodel"))
    for conv in ("conv11", "conv12", "conv21", "conv22", "conv31", "conv32"):
        for a, b, c in zip(bm[f"{conv}_bn"], raw[f"{conv}_bn"], product[f"{conv}_bn"]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)
    assert not all(np.array_equal(a, b) for a, b in zip(raw["conv41_bn"], bm["conv41_bn"]))
    assert 0.8 < ratio(bn_run, "stage2", bn_run / "models" / "stage2.caffemodel") < 1.25
    doc = json.loads((bn_run / "manifest.json").read_text())["artifacts"]
    assert doc["models/stage2.caffemodel"]["settings"]["frozen_bn"] == "global"


def test_bad_setting_and_missing_model_are_refused(bn_run, tmp_path):
    proc = tool("tools/run_stage.py", "--run", bn_run, "--stage", "stage1", "--bn-stats", "sometimes", check=False)
    assert proc.returncode == 2 and "--bn-stats" in proc.stderr
    missing = tmp_path / "nope.caffemodel"
    proc = tool("tools/bn_stats.py", "--run", bn_run, "--stage", "stage1", "--model", missing, "--out",
                tmp_path / "out.caffemodel", check=False)
    assert proc.returncode == 2 and str(missing) in proc.stderr
    assert not (tmp_path / "out.caffemodel").exists()
