"""`make verify` (tools/verify.py): every checksum of a run recomputed, each changed or
missing file named; and a stage that refuses a changed input instead of training on it.

On a copy of the tiny run (conftest.tiny_run: data, nets, BM, Eq. 5 weights, heads)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import flip_byte, make, tool


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    _, built = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(built, copy)
    return copy


def verify(run: Path) -> subprocess.CompletedProcess:
    return tool("tools/verify.py", "--run", run, check=False)


def test_an_intact_run_verifies(run):
    r = verify(run)
    assert r.returncode == 0, r.stderr
    assert "intact" in r.stdout and r.stderr == ""
    doc = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert {"models/bm.caffemodel", "loss_weights/bm_eq5.json", "models/heads.caffemodel"} <= set(doc)


@pytest.mark.parametrize("rel", ["data/train_000.h5", "models/bm.caffemodel", "models/heads.raw.caffemodel",
                                 "loss_weights/bm_eq5.json", "data/val_lmdb/data.mdb"])
def test_a_changed_byte_is_caught_and_named(run, rel):
    flip_byte(run / rel)
    r = verify(run)
    assert r.returncode == 2
    assert f"{run / rel}: differs from the manifest" in r.stderr
    assert "NOT intact" in r.stderr


def test_missing_files_are_named(run):
    (run / "loss_weights/bm_eq5.json").unlink()
    (run / "data/test_000.h5").unlink()
    r = verify(run)
    assert r.returncode == 2
    assert f"{run / 'loss_weights/bm_eq5.json'}: missing (artifact of weights-eq5)" in r.stderr
    assert f"{run / 'data/test_000.h5'}: missing" in r.stderr
    assert "2 missing" in r.stderr


def test_a_run_without_manifest_is_refused(tmp_path):
    r = verify(tmp_path)
    assert r.returncode == 2 and f"{tmp_path / 'manifest.json'}: missing" in r.stderr


def test_prepared_data_alone_verifies(run):
    """After `make data`, before any stage: the data manifest is checked."""
    (run / "manifest.json").unlink()
    r = verify(run)
    assert r.returncode == 0 and "intact" in r.stdout, r.stderr
    flip_byte(run / "data/train_lmdb/data.mdb")
    r = verify(run)
    assert r.returncode == 2 and f"{run / 'data/train_lmdb/data.mdb'}: differs" in r.stderr


def test_make_verify(run):
    ok = make("-s", "verify", f"RUN={run}", check=False)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    flip_byte(run / "models/bm.caffemodel")
    bad = make("-s", "verify", f"RUN={run}", check=False)
    assert bad.returncode != 0 and f"{run / 'models/bm.caffemodel'}: differs" in bad.stderr


@pytest.mark.parametrize("rel", ["models/bm.caffemodel", "loss_weights/bm_eq5.json", "data/train_000.h5"])
def test_a_stage_refuses_a_changed_input(run, rel):
    """Stage 2 from BM with the Eq. 5 weights, after one of them (or the training data)
    changed since the manifest recorded it: refused, nothing trained, nothing written."""
    if rel.endswith(".json"):  # still valid JSON, one weight changed by 1e-6
        doc = json.loads((run / rel).read_text())
        doc["weights"][0] += 1e-6
        (run / rel).write_text(json.dumps(doc, indent=2) + "\n")
    else:
        flip_byte(run / rel)
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage2", "--init", run / "models/bm.caffemodel",
             "--loss-weights", run / "loss_weights/bm_eq5.json", check=False)
    assert r.returncode == 2, r.stderr
    assert f"{run / rel}" in r.stderr and "refusing to train" in r.stderr and "Traceback" not in r.stderr
    assert not (run / "models/stage2.caffemodel").exists() and not (run / "models/stage2.raw.caffemodel").exists()
    assert not list((run / "snapshots").glob("stage2*"))
