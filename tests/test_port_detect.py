"""tools/predict.py without --box: faces found by OpenCV's Haar cascade and dlib's HOG detector on
pictures written here (synthetic faces pasted into a larger picture), the same landmarks as --box
with the box the JSON reports, a video tracked frame to frame, and bad input refused."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, tool
from test_port import caffe_model, deploy_text

from mcl.data.augment import face_rng
from mcl.data.synth import SynthSettings, generate_face

DLIB_DAT = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Upright, unoccluded synthetic faces drawn at 240 pixels: both detectors find these (seeds 1 and 2
# of generator seed 7; most of the first 30 seeds are found, tilted or occluded ones less often).
FACE = SynthSettings(size=240, max_roll=10, max_yaw=10, occlusion_prob=0.0)
PLACES = ((40, 60), (360, 60))  # top-left corners (x, y) of the faces in a 640 x 360 picture


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


@pytest.fixture(scope="session")
def dlib_installed():
    """dlib (the dlib-bin wheel) and its 68-point model (Debian's libdlib-data), installed when
    missing, as `make setup-peers` installs them; a failure to install fails the tests that need them."""
    if importlib.util.find_spec("dlib") is None:
        proc = subprocess.run([_python(), "-m", "pip", "install", "--quiet", "dlib-bin"], capture_output=True,
                              text=True, timeout=600, check=False)
        if proc.returncode != 0:
            pytest.fail(f"dlib is needed and `pip install dlib-bin` failed:\n{proc.stderr[-2000:]}")
    if not DLIB_DAT.exists():
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
        for cmd in (apt + ["install", "-y", "libdlib-data"], apt + ["update"], apt + ["install", "-y", "libdlib-data"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), check=False)
            if DLIB_DAT.exists():
                break
        if not DLIB_DAT.exists():
            pytest.fail(f"{DLIB_DAT} is needed and `apt-get install libdlib-data` did not provide it:\n"
                        f"{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    proc = subprocess.run([_python(), "-c", "import dlib; print(dlib.__version__)"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"dlib was installed but does not import:\n{proc.stderr[-2000:]}")
    return DLIB_DAT


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 68-point AM-shaped net with random blobs, saved by Caffe and ported to ONNX by tools/port.py
    (as tests/test_port_predict.py makes its model): the detection and tracking logic needs a model,
    not a trained one."""
    import caffe
    caffe.set_mode_cpu()
    root = tmp_path_factory.mktemp("detect_model")
    proto, cm, _ = caffe_model(caffe, root / "models", deploy_text("68", "bm"), seed=5, stem="am_deploy")
    tool("tools/port.py", "export", "--prototxt", proto, "--caffemodel", cm, "--out", root / "port",
         "--formats", "onnx", "--fold", env=ONE_THREAD)
    onnx = root / "port" / f"{cm.stem}.onnx"
    assert onnx.exists()
    return onnx


def faces_picture(path: Path, n: int) -> list[np.ndarray]:
    """n synthetic faces pasted into a 640 x 360 gray picture; each face's tight landmark box."""
    canvas = np.full((360, 640), 128, np.uint8)
    boxes = []
    for i, (x, y) in enumerate(PLACES[:n]):
        img, pts, _ = generate_face(face_rng(7, 2, i + 1), FACE)
        canvas[y:y + FACE.size, x:x + FACE.size] = img
        boxes.append(np.concatenate([pts.min(0), pts.max(0)]) + [x, y, x, y])
    cv2.imwrite(str(path), canvas)
    return boxes


def overlap(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


@pytest.mark.parametrize("detector", ["opencv", "dlib"])
@pytest.mark.parametrize("n", [1, 2])
def test_detected_faces_equal_the_box_prediction(detector, n, model, tmp_path, request):
    if detector == "dlib":
        request.getfixturevalue("dlib_installed")
    picture = tmp_path / "faces.png"
    truth = faces_picture(picture, n)
    out = tmp_path / "found"
    tool("tools/predict.py", picture, "--model", model, "--out", out, "--detector", detector,
         "--box-convention", "synth", env=ONE_THREAD)
    doc = json.loads((out / "faces.json").read_text())
    faces = doc["faces"]
    assert len(faces) == n and doc["box_convention"] == "synth"
    for face in faces:
        assert set(face) >= {"box", "landmarks", "detector"} and face["detector"] == detector
        assert len(face["landmarks"]) == 68 and len(face["box"]) == 4
    # each true face is found once, its box close to the face's own tight landmark box
    for t in truth:
        hits = [f for f in faces if overlap(f["box"], t) > 0.5]
        assert len(hits) == 1, (t, [f["box"] for f in faces])
    assert np.allclose(doc["points"], faces[0]["landmarks"]) and doc["box"] == faces[0]["box"]
    # the same landmarks as --box with the box the JSON reports
    for k, face in enumerate(faces):
        again = tmp_path / f"box{k}"
        tool("tools/predict.py", picture, "--box", *face["box"], "--model", model, "--out", again, env=ONE_THREAD)
        boxed = json.loads((again / "faces.json").read_text())["faces"]
        assert len(boxed) == 1 and boxed[0]["detector"] == "none"
        np.testing.assert_allclose(boxed[0]["landmarks"], face["landmarks"], atol=1e-9)
        name = "faces.pts" if k == 0 else f"faces_{k}.pts"
        pts = [line.split() for line in (out / name).read_text().splitlines()[3:3 + 68]]
        np.testing.assert_allclose(np.asarray(pts, float), np.asarray(face["landmarks"]) + 1.0, atol=1e-3)
    assert (out / "faces_landmarks.png").stat().st_size > 0


def test_video_round_trip_keeps_the_track(model, tmp_path):
    """A 12-frame clip of a face moving right by 3 pixels a frame: 12 frames out, one JSON entry each,
    one detection, then the same track, each box from the landmarks of the frame before."""
    img, _, _ = generate_face(face_rng(7, 2, 1), FACE)
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (480, 320))
    for k in range(12):
        canvas = np.full((320, 480), 128, np.uint8)
        canvas[40:280, 60 + 3 * k:300 + 3 * k] = img
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    writer.release()
    out = tmp_path / "video"
    proc = tool("tools/predict.py", "--video", clip, "--model", model, "--out", out, "--quiet",
                "--box-convention", "synth", env=ONE_THREAD)
    assert "fps" in proc.stdout + proc.stderr
    doc = json.loads((out / "clip.json").read_text())
    frames = doc["frames"]
    assert [f["frame"] for f in frames] == list(range(12)) and doc["detections"] == 1 and doc["fps"] > 0
    assert all(len(f["faces"]) == 1 for f in frames)
    assert frames[0]["faces"][0]["source"] == "detector"
    assert {f["faces"][0]["track"] for f in frames} == {0}
    assert all(f["faces"][0]["source"] == "track" for f in frames[1:])
    # the tracking rule, restated: the first box relative to the tight box of the first landmarks,
    # carried onto the tight box of each frame's landmarks for the next frame
    first = frames[0]["faces"][0]
    lm = np.asarray(first["landmarks"])
    lo, hi = lm.min(0), lm.max(0)
    rel = (np.asarray(first["box"]) - np.concatenate([lo, lo])) / np.concatenate([hi - lo, hi - lo])
    for prev, cur in itertools.pairwise(frames):
        lm = np.asarray(prev["faces"][0]["landmarks"])
        lo, hi = lm.min(0), lm.max(0)
        np.testing.assert_allclose(cur["faces"][0]["box"], np.concatenate([lo, lo]) + rel * np.concatenate(
            [hi - lo, hi - lo]), atol=1e-6)
    cap = cv2.VideoCapture(str(out / "clip_landmarks.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12
    assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip_landmarks.mp4"]


def test_bad_input_is_named_and_writes_nothing(model, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300), 128, np.uint8))
    for args, named in (
            ((blank,), [str(blank), "no face found"]),
            ((blank, "--detector", "none"), [str(blank), "--box"]),
            (("--video", tmp_path / "notes.mp4"), [str(tmp_path / "notes.mp4"), "not a video"]),
            (("--video", tmp_path / "missing.mp4"), [str(tmp_path / "missing.mp4"), "missing"])):
        (tmp_path / "notes.mp4").write_text("not a video\n")
        out = tmp_path / "out"
        proc = tool("tools/predict.py", *args, "--model", model, "--out", out, check=False, env=ONE_THREAD)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and all(s in proc.stderr for s in named), proc.stderr
        assert not out.exists()
        shutil.rmtree(out, ignore_errors=True)
