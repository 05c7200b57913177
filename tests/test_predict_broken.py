"""tools/predict.py on a picture that does not decode whole: named as broken (the file and why),
exit status 2, nothing written. OpenCV decodes a JPEG or PNG cut short without an error (the
missing rows gray), so before, the detector found no face in it and said only that.

The model is a small ONNX graph made here (5 points from a linear map of the crop): what is
tested is the reading of the picture, not the landmarks."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT
from test_real_data import real_data, small_mtfl  # noqa: F401 - the fixture, shared


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((2500, 10)) * 1e-3).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(10, 0.5, np.float32), "b"),
             numpy_helper.from_array(np.array([1, 2500], np.int64), "shape")]
    graph = helper.make_graph([helper.make_node("Reshape", ["data", "shape"], ["flat"]),
                               helper.make_node("Gemm", ["flat", "w", "b"], ["shape_pred"])], "five_points",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 1, 50, 50])],
                              [helper.make_tensor_value_info("shape_pred", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("model") / "five.onnx"
    onnx.save(m, str(path))
    return path


def picture(path, ext: str) -> bytes:
    img = np.random.default_rng(1).integers(0, 255, (160, 140, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def predict(model, out, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/predict.py"), *map(str, args), "--model", str(model),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)


def assert_named_broken(r, path, why: str, out) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"predict: error: {path}: {why}" in r.stderr, r.stderr
    assert "no face found" not in r.stderr and "Traceback" not in r.stderr
    assert not out.exists(), "something was written"


@pytest.mark.parametrize("ext, why", [(".jpg", "unreadable image: broken picture: truncated JPEG"),
                                      (".png", "unreadable image: broken picture: truncated PNG")])
@pytest.mark.parametrize("box", [[], ["--box", 20, 20, 120, 140]], ids=["detector", "box"])
def test_a_picture_cut_short_is_named_broken(model, tmp_path, ext, why, box):
    path = tmp_path / f"cut{ext}"
    whole = picture(path, ext)
    path.write_bytes(whole[: len(whole) // 2])
    assert_named_broken(predict(model, tmp_path / "out", path, *box), path, why, tmp_path / "out")


@pytest.mark.parametrize("content, why", [(b"", "empty image file"),
                                          (b"not a picture at all", "unreadable image")])
def test_an_empty_or_foreign_file_is_named(model, tmp_path, content, why):
    path = tmp_path / "face.jpg"
    path.write_bytes(content)
    assert_named_broken(predict(model, tmp_path / "out", path, "--box", 20, 20, 120, 140), path, why,
                        tmp_path / "out")


def test_a_broken_picture_in_a_list_stops_it_before_anything_is_written(model, tmp_path):
    good, cut = tmp_path / "good.png", tmp_path / "cut.jpg"
    picture(good, ".png")
    whole = picture(cut, ".jpg")
    cut.write_bytes(whole[:-200])
    (tmp_path / "faces.txt").write_text("good.png 20 20 120 140\ncut.jpg 20 20 120 140\n")
    r = predict(model, tmp_path / "out", "--list", tmp_path / "faces.txt")
    assert_named_broken(r, cut, "unreadable image: broken picture: truncated JPEG", tmp_path / "out")
    r = predict(model, tmp_path / "out", good, "--box", 20, 20, 120, 140)  # the whole one alone: written
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.json", "good.pts", "good_landmarks.png"]


def test_a_real_aflw_picture_cut_short_is_named_not_searched_for_a_face(model, real_data, tmp_path):  # noqa: F811
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 0, 1)
    rel = (mtfl / "testing.txt").read_text().split()[0]
    path = tmp_path / "aflw.jpg"
    whole = (mtfl / rel).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    assert_named_broken(predict(model, tmp_path / "out", path), path, "unreadable image: broken picture: truncated JPEG",
                        tmp_path / "out")
