"""`make demo` at a tiny schedule: every artifact docs/DEMO.md promises exists and the summary
holds numbers (the real demo differs only in its schedule and layout)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import MAKE_TINY, make


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    settings = [f"RUN={run}", "SCHEDULE=paper", *MAKE_TINY]
    proc = make("demo", *settings)
    return run, proc.stdout


def test_demo_writes_every_promised_artifact(demo):
    run, _ = demo
    for rel in ("data/manifest.json", "models/bm.caffemodel", "models/bm.raw.caffemodel", "models/wm.caffemodel",
                "models/heads.caffemodel", "models/am.caffemodel", "models/am_deploy.prototxt",
                "models/equal_budget.caffemodel", "eval/test.json", "eval/test.md", "eval/test_ced.png",
                "eval/test_overlays_BM.png", "eval/test_overlays_WM.png", "eval/test_overlays_AM.png",
                "audit/audit.md", "audit/audit.json", "audit/audit_ced.png", "audit/equal_budget.json",
                "audit/occlusion.json", "port/am.onnx", "photo/astronaut.json", "photo/astronaut_landmarks.png",
                "summary.json", "summary.md", "manifest.json"):
        assert (run / rel).exists() and (run / rel).stat().st_size > 0, rel


def test_demo_summary_holds_numbers(demo):
    run, out = demo
    doc = json.loads((run / "summary.json").read_text())
    for name in ("BM", "WM", "AM"):
        m = doc["models"][name]
        assert 0 < m["mean_error"] < 10 and 0 <= m["failure_rate"] <= 1 and m["caffe_ms"] > 0, name
        assert m["bn_stats"] == "recomputed"
    assert doc["onnx"]["median_ms"] > 0
    assert math.isfinite(doc["equal_budget_mean_error"]) and doc["ordering"]
    assert doc["wall_time_s"]["stage 1 (BM)"] > 0
    assert "| AM |" in out and "ONNX Runtime" in out  # the table is printed at the end
    # it ends on a real photo aligned by the in-box 68-point model (trained on real faces)
    assert doc["photo"]["faces"] == 1 and doc["photo"]["points"] == 68
    assert doc["photo"]["model"].endswith("models/mcl-68-300w/mcl-68-300w.onnx")
    assert "Real photo: astronaut.png" in out
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert set(audit["ablations"]) == {"equal_budget", "occlusion"}  # the demo's short audit
