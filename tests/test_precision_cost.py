"""benchmarks/precision_cost.py: one model trained at two precisions, compared face by face on the same
test faces. On the shared tiny run (tests/conftest.py): a candidate that is the reference's own model
costs exactly nothing on every face (difference 0, not beyond noise, within both targets); a candidate
whose model is another one (BM with its raw running BatchNorm statistics) differs by the mean of the
two models' per-face errors as tools/evaluate.py scores them; the precision comes from each run's
manifest; bad input (a missing model, runs whose data differ) exits 2 naming the file, writing nothing.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import tool

COST = "benchmarks/precision_cost.py"


@pytest.fixture(scope="module")
def pair(tiny_run, tmp_path_factory):
    _, run = tiny_run
    root = tmp_path_factory.mktemp("precision_cost")
    ref, cand = root / "ref", root / "cand"
    shutil.copytree(run, ref)
    shutil.copytree(run, cand)
    return ref, cand


def test_the_same_model_costs_nothing(pair, tmp_path):
    ref, cand = pair
    out = tmp_path / "same"
    proc = tool(COST, "--reference", ref, "--candidate", cand, "--splits", "test,val", "--out", out)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["reference"]["precision"] == doc["candidate"]["precision"] == "fp32"
    for split in ("test", "val"):
        s = doc["splits"][split]
        assert s["difference_points"] == 0 and s["standard_error_points"] == 0
        assert not s["beyond_noise"] and s["within_train_target"] and s["within_inference_target"]
        assert s["reference_mean_error"] == s["candidate_mean_error"] > 0
    assert "| test | 6 |" in proc.stdout and out.with_suffix(".md").read_text() == proc.stdout


def test_another_model_differs_by_its_per_face_errors(pair, tmp_path):
    ref, cand = pair
    other = cand / "models/other.caffemodel"
    shutil.copy(cand / "models/bm.raw.caffemodel", other)
    shutil.copy(ref / "models/bm.caffemodel", ref / "models/other.caffemodel")  # the reference: BM itself
    out = tmp_path / "other"
    tool(COST, "--reference", ref, "--candidate", cand, "--model", "models/other.caffemodel", "--out", out)
    got = json.loads(out.with_suffix(".json").read_text())["splits"]["test"]
    # The same two models through tools/evaluate.py, its per-face errors paired by hand.
    ev = tmp_path / "ev"
    tool("tools/evaluate.py", "--run", ref, "--model", f"bm={ref / 'models/bm.caffemodel'}",
         "--model", f"raw={other}", "--speed-repeats", 0, "--overlays", 0, "--out", ev)
    res = json.loads(ev.with_suffix(".json").read_text())
    faces = {name: np.asarray(r["face_errors"]) for name, r in res["results"].items()}
    d = faces["raw"] - faces["bm"]
    assert d.any(), "the two models should differ"
    assert got["difference_points"] == pytest.approx(100 * d.mean(), abs=1e-9)
    assert got["standard_error_points"] == pytest.approx(100 * d.std(ddof=1) / np.sqrt(len(d)), abs=1e-9)


def test_bad_input_is_named_and_nothing_is_written(pair, tmp_path):
    ref, cand = pair
    out = tmp_path / "bad"
    proc = tool(COST, "--reference", ref, "--candidate", cand, "--model", "models/none.caffemodel", "--out", out,
                check=False)
    assert proc.returncode == 2 and "models/none.caffemodel: missing" in proc.stderr
    other = tmp_path / "otherdata"
    shutil.copytree(cand, other)
    manifest = json.loads((other / "data/manifest.json").read_text())
    manifest["files"] = {"changed": "0" * 64}
    (other / "data/manifest.json").write_text(json.dumps(manifest))
    proc = tool(COST, "--reference", ref, "--candidate", other, "--out", out, check=False)
    assert proc.returncode == 2 and "data differ" in proc.stderr and "data/manifest.json" in proc.stderr
    assert not list(tmp_path.glob("bad*"))
