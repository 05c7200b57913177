"""The reproducibility audit: the ablations' own transforms on hand-made fixtures, and
`make audit` on a tiny run writing every section of the report with numbers."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
from conftest import MAKE_TINY, ROOT, make

from mcl.evaluation import audit
from mcl.method.layouts import get_layout

# ---- perturbation weights (Section IV-C-2) ---------------------------------------------------


@pytest.mark.parametrize("n", [5, 29, 68])
def test_perturbation_moves_half_the_landmarks_up_and_keeps_the_eq5_mean(n):
    rng = np.random.default_rng(n)
    u = rng.uniform(0.6, 1.4, n)
    u = u * n / u.sum()  # an Eq. 5 vector: mean 1
    w, plus = audit.perturb_weights(u, 0.3, seed=7)
    assert len(plus) == n // 2 and len(set(plus)) == n // 2
    assert w.mean() == pytest.approx(1.0)
    minus = [j for j in range(n) if j not in plus]
    raw = u.copy()
    raw[plus] += 0.3
    raw[minus] -= 0.3
    np.testing.assert_allclose(w, raw * (1.0 / raw.mean()))  # nothing clipped here: only the rescale
    again, plus_again = audit.perturb_weights(u, 0.3, seed=7)
    assert plus_again == plus and np.array_equal(again, w)
    assert audit.perturb_weights(u, 0.3, seed=8)[1] != plus


def test_perturbation_keeps_weights_positive():
    u = np.array([0.1, 0.2, 1.5, 2.2])
    w, plus = audit.perturb_weights(u, 0.4, seed=0)
    assert (w > 0).all() and w.mean() == pytest.approx(u.mean())


# ---- occlusion (Section IV-D) -----------------------------------------------------------------


def test_occlusion_fills_exactly_the_tight_left_eye_box():
    layout = get_layout(5)  # left_eye = landmark 1 alone; put a 2-point cluster to the test with 68 below
    n = 10
    data = {"data": np.full((n, 1, 50, 50), 0.5, np.float32),
            "landmarks": np.tile(np.array([[10.2, 12.7, 30, 12, 20, 25, 14, 35, 28, 35]], np.float32), (n, 1))}
    out, faces, boxes = audit.occlude(data, layout, seed=1)
    assert len(faces) == 3  # 30% of 10
    for i in range(n):
        img = out["data"][i, 0]
        if i in faces:
            # one landmark at (10.2, 12.7): the box is column 10..11, row 12..13
            assert (img[12:14, 10:12] == 0.0).all()
            mask = np.ones_like(img, bool)
            mask[12:14, 10:12] = False
            assert (img[mask] == 0.5).all()
        else:
            assert (img == 0.5).all()
    assert (data["data"] == 0.5).all()  # the input split is untouched


def test_occlusion_box_covers_the_68_point_left_eye_with_its_brow():
    layout = get_layout(68)
    pts = np.full((1, 68, 2), 40.0)
    # left eye cluster per METHOD §8.3 (1-based 18-22 brow, 37-42 eye): spread them in a known box
    left = [j - 1 for j in list(range(18, 23)) + list(range(37, 43))]
    pts[0, left] = np.linspace([5.5, 8.0], [17.0, 21.2], len(left))
    data = {"data": np.ones((1, 1, 50, 50), np.float32), "landmarks": pts.reshape(1, -1)}
    out, faces, boxes = audit.occlude(data, layout, seed=0, fraction=1.0)
    assert boxes.tolist() == [[5, 8, 17, 22]]
    img = out["data"][0, 0]
    assert (img[8:23, 5:18] == 0).all() and img.sum() == 50 * 50 - 15 * 13


# ---- make audit on a tiny run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    run = tmp_path_factory.mktemp("audit") / "run"
    settings = [f"RUN={run}", *MAKE_TINY]
    make("-j2", "audit", *settings)
    return run, settings


def test_audit_json_holds_every_ablation_with_numbers(audited):
    run, _ = audited
    doc = json.loads((run / "audit" / "audit.json").read_text())
    assert set(doc) >= {"settings", "models", "ablations"}
    assert set(doc["ablations"]) == {"pre_bm", "perturbation", "single_head", "simplified_am",
                                     "weighting_simplified_am", "occlusion", "equal_budget"}
    s = doc["settings"]
    assert (s["dataset"], s["layout"], s["schedule_scale"], s["seed"], s["engine"]) == ("synth", "5", 0.0002, 3, "caffe")
    assert s["interpretations"]["bn_stats (BatchNorm statistics of each stage's product)"] == "recomputed"
    assert {"BM", "WM", "AM", "BM (running)", "WM (running)", "AM (running)"} <= set(doc["models"])
    for name, ab in doc["ablations"].items():
        assert "paper" in ab and isinstance(ab["direction_held"], bool), name
        errors = [v for v in _means(ab["numbers"])]
        assert errors and all(np.isfinite(e) and e > 0 for e in errors), name
    assert len(doc["ablations"]["perturbation"]["numbers"]) == 5  # WM and four deltas
    assert doc["ablations"]["occlusion"]["paper"]["figures"]["occlusion.am_left_eye"]["value"] == 6.50
    assert doc["speed"]["paper"]["median_ms"] == 17.5 and len(doc["speed"]["rows"]) == 3


def _means(obj):
    if isinstance(obj, dict):
        if "inter_ocular" in obj:
            yield obj["inter_ocular"]["mean_error"]
        else:
            for v in obj.values():
                yield from _means(v)


def test_audit_report_has_every_section_filled(audited):
    run, _ = audited
    md = (run / "audit" / "audit.md").read_text()
    for title in ("pre-BM vs BM", "Robustness of weighting", "Shape prediction layers", "Simplified AM",
                  "Weighting Simplified AM", "Partially occluded faces", "Equal-budget control", "Speed",
                  "Settings and readings"):
        assert f"## {title}" in md, title
    assert "not expected here" in md  # synthetic faces: directions, not the paper's numbers
    assert md.count("**Held**") + md.count("**Did not hold**") == 7
    assert "Not run" not in md and not re.search(r"\|\s*nan\s*\|", md, re.I)
    assert re.search(r"\| BM \+ equal budget \| recomputed \| \d+\.\d\d \|", md)
    for png in ("audit_ced.png", "audit_overlays_BM.png", "audit_overlays_WM.png", "audit_overlays_AM.png"):
        assert (run / "audit" / png).stat().st_size > 1000, png


def test_each_ablation_is_a_make_target_and_nothing_reruns(audited):
    run, settings = audited
    files = [run / "audit" / f"{name}.json" for name in ("audit",) + audit.ABLATIONS]
    for f in files:  # each its own target, finished, so nothing to do
        assert subprocess.run(["make", "-q", str(f), *settings], cwd=ROOT).returncode == 0, f.name
    (run / "audit" / "occlusion.json").unlink()
    plan = subprocess.run(["make", "-n", "audit", *settings], cwd=ROOT, capture_output=True, text=True).stdout
    assert "ablation occlusion" in plan and "run_stage.py" not in plan  # only what is missing


# ---- the equal-budget verdict: paired per-face differences --------------------------------------


def test_paired_difference_against_hand_computed_values():
    b = np.array([0.10, 0.20, 0.30, 0.40])
    a = b - np.array([0.01, 0.02, 0.01, 0.02])  # differences -0.01, -0.02, -0.01, -0.02
    p = audit.paired(a, b)
    # mean -0.015; sample sd of (-0.01, -0.02, -0.01, -0.02) = 0.005773..., / sqrt(4) = 0.0028867...
    assert p["mean_difference"] == pytest.approx(-0.015)
    assert p["standard_error"] == pytest.approx(0.0057735 / 2, rel=1e-4)
    assert p["better"] and not p["worse"]  # 0.015 > 2 * 0.00289
    noisy = audit.paired(b + np.array([0.01, -0.01, 0.01, -0.012]), b)
    assert not noisy["better"] and not noisy["worse"]


def test_ordering_is_claimed_only_where_the_control_supports_it():
    yes = {"better": True, "worse": False}
    no = {"better": False, "worse": False}
    full = {"WM vs BM": yes, "AM vs WM": yes, "WM vs BM + equal budget": yes, "AM vs BM + equal budget": yes}
    assert "supported" in audit.ordering_verdict(full) and "not" not in audit.ordering_verdict(full)
    more_training = dict(full, **{"WM vs BM + equal budget": no, "AM vs BM + equal budget": no})
    assert "reflects more training" in audit.ordering_verdict(more_training)
    nothing = {k: no for k in full}
    assert audit.ordering_verdict(nothing).startswith("no BM > WM > AM ordering is supported")
    assert audit.ordering_verdict(nothing).endswith("neither WM nor AM beats BM trained for as many more iterations")
    # The demo's case: only AM's steps are beyond noise; the verdict names which model beats the control.
    am_only = dict(nothing, **{"AM vs WM": yes, "AM vs BM + equal budget": yes})
    verdict = audit.ordering_verdict(am_only)
    assert verdict.startswith("no BM > WM > AM ordering is supported") and "AM vs WM, AM vs BM + equal budget" in verdict
    assert verdict.endswith("AM beats BM trained for as many more iterations, WM does not")
    partial = dict(full, **{"WM vs BM + equal budget": no})
    assert audit.ordering_verdict(partial).endswith("the ordering is not supported as a whole")


def test_a_diverged_model_is_never_evidence():
    """NaN compares False either way round: the result must say not held and name the model."""
    layout = get_layout(68)
    nan = {"inter_ocular": {"mean_error": float("nan")}}
    ok = {"inter_ocular": {"mean_error": 0.08}}
    res = audit._result({"BM": ok, "pre-BM": nan}, "BM better", True, "pre_bm", layout)
    assert res["direction_held"] is False and res["not_finite"] == ["pre-BM"]
    fine = audit._result({"BM": ok, "pre-BM": ok}, "BM better", True, "pre_bm", layout)
    assert fine["direction_held"] is True and fine["not_finite"] == []
