"""tools/peers.py: dlib's 68-point model on a run's test split gives predictions files that
tools/evaluate.py scores; a missing model is named and leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
from conftest import tool
from test_port_detect import ONE_THREAD, dlib_installed  # noqa: F401 - the session fixture, shared

from mcl.data import splits


def test_peers_predictions_are_scored_by_evaluate(tiny_run, dlib_installed, tmp_path):  # noqa: F811
    base, _ = tiny_run  # prepared data of the 5-point synthetic set: what the peer needs
    out = tmp_path / "peers"
    proc = tool("tools/peers.py", "--run", base, "--out", out, env=ONE_THREAD)
    assert "dlib (box)" in proc.stdout and "dlib (detector)" in proc.stdout
    data = splits.load_split(base, "test")
    n = len(data["data"])
    doc = json.loads((out / "peers.json").read_text())
    assert doc["faces"] == n and doc["layout"] == "5" and "commercial" in doc["terms"]
    assert 0 <= doc["detector"]["found"] <= n
    for variant in ("box", "detector"):
        rows = [line.split() for line in (out / f"dlib_{variant}.txt").read_text().splitlines()]
        assert len(rows) == n and all(len(r) == 10 for r in rows)  # 5 points, x y each
        pred = np.asarray(rows, float).reshape(n, 5, 2) - 1.0  # 1-based on disk
        # the peer lands on the faces: each point within a box side of the truth
        gt = data["landmarks_image"].reshape(n, 5, 2)
        side = gt.max(1) - gt.min(1)
        assert np.all(np.abs(pred - gt) < 2 * side.max(1)[:, None, None])
        ev = tmp_path / f"eval_{variant}"
        tool("tools/evaluate.py", "--run", base, "--predictions", f"dlib={out / f'dlib_{variant}.txt'}",
             "--out", ev, "--speed-repeats", "0", env=ONE_THREAD)
        scored = json.loads(ev.with_suffix(".json").read_text())["results"]["dlib"]
        d = data["iod_image"]
        own = (np.linalg.norm(pred - gt, axis=-1).mean(1) / d).mean()  # METHOD §7.2, restated
        np.testing.assert_allclose(scored["inter_ocular"]["mean_error"], own, rtol=1e-6)
        np.testing.assert_allclose(doc["results"][f"dlib ({variant})"]["inter_ocular"]["mean_error"], own, rtol=1e-6)


def test_missing_dlib_model_is_named(tiny_run, dlib_installed, tmp_path):  # noqa: F811
    base, _ = tiny_run
    missing = tmp_path / "nowhere" / "shape_predictor_68_face_landmarks.dat"
    out = tmp_path / "peers"
    proc = tool("tools/peers.py", "--run", base, "--model", missing, "--out", out, check=False, env=ONE_THREAD)
    assert proc.returncode == 2 and str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    proc = tool("tools/peers.py", "--run", base, "--model", empty, "--out", out, check=False, env=ONE_THREAD)
    assert proc.returncode == 2 and str(empty) in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
