"""The models in the box (models/, mcl/port/inbox.py): their ONNX equals their Caffe model, their cards'
errors are recomputed here from the committed ONNX on every test face, and tools/predict.py uses them
without --model on a real photo.

The errors are recomputed through the predictor a user runs (the picture read, the face cropped from
its annotated box, the ONNX forward, the points mapped back), with the normalising distance computed
here from the annotations: the eye centres for 5 points, the outer eye corners (points 37 and 46) for
68. The test data are read from MCL_DATA (default ../shared/data beside the checkout); where the folder
is missing the error tests skip and say why, and under CI=true they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tool

from mcl.data.readers import load_image, read_300w, read_mtfl
from mcl.data.writers import network_input
from mcl.evaluation.evaluate import to_image
from mcl.port.engines import caffe_forward, onnx_forward
from mcl.port.inbox import IN_BOX, default_onnx, load_card, model_dir
from mcl.port.predict import Predictor
from mcl.port.quantize import int8_path, torch_int8_path

DATA = Path(os.environ.get("MCL_DATA", ROOT.parent / "shared" / "data"))


def data_folder(sub: str) -> Path:
    if not (DATA / sub).is_dir():
        why = f"real data not found at {DATA / sub} (set MCL_DATA to the folder holding mtfl/ and 300w/)"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)
    return DATA / sub


@pytest.mark.parametrize("layout", sorted(IN_BOX))
def test_in_box_model_files_and_card(layout):
    folder = model_dir(layout)
    name = IN_BOX[layout]
    card = load_card(layout)
    assert card["name"] == name and card["layout"] == layout
    for f in ("deploy.prototxt", f"{name}.caffemodel", f"{name}.onnx", f"{name}.onnx.json", "MODEL_CARD.md"):
        assert (folder / f).is_file(), f"{folder / f} missing"
    assert (folder / f"{name}.caffemodel").stat().st_size < 8 * 2**20  # a few MB
    assert "research" in card["terms"] and "commercial" in card["terms"]
    assert card["terms"] in (folder / "MODEL_CARD.md").read_text()
    onnx_card = json.loads((folder / f"{name}.onnx.json").read_text())
    assert onnx_card["box_convention"] == card["box_convention"]


@pytest.mark.parametrize("layout", sorted(IN_BOX))
def test_in_box_onnx_equals_caffe(layout, caffe):
    """The committed ONNX against the committed caffemodel in Caffe, on 8 seeded gray patches."""
    folder, name = model_dir(layout), IN_BOX[layout]
    x = network_input(np.random.default_rng(7).integers(0, 256, (8, 50, 50)).astype(np.uint8))
    ref = caffe_forward((folder / "deploy.prototxt").read_text(), (folder / f"{name}.caffemodel").read_bytes(),
                        x, ["shape_pred"])["shape_pred"]
    got = onnx_forward((folder / f"{name}.onnx").read_bytes(), x, ["shape_pred"])["shape_pred"]
    assert ref.shape == (8, 2 * int(layout))
    np.testing.assert_allclose(got.reshape(ref.shape), ref, atol=1e-4)


_CROPS: dict = {}  # (layout, faces) -> the predictor's crops of them, shared by the fp32 and int8 tests


def mean_error(layout: str, samples, norm_points: tuple[int, int], int8: bool | str = False) -> float:
    """Mean over faces of the mean point-to-point error / the distance between two annotated points, each
    face cropped by the predictor a user runs, the forwards batched. `int8`: the in-box int8 model (ONNX
    Runtime's; "torch": PyTorch's)."""
    onnx = default_onnx(layout)
    model = (torch_int8_path(onnx) if int8 == "torch" else int8_path(onnx)) if int8 else onnx
    predictor = Predictor.from_onnx(model)
    key = (layout, len(samples), predictor.crop_scale, predictor.test_crop)
    if key not in _CROPS:
        _CROPS[key] = [predictor.crop(load_image(s), s.box) for s in samples]
    crops = _CROPS[key]
    x = np.concatenate([c[0] for c in crops])
    out = np.concatenate([predictor.session.run([predictor.output], {predictor.input_name: x[i:i + 256]})[0]
                          for i in range(0, len(x), 256)])
    pred = to_image(out, np.concatenate([c[1] for c in crops]))
    errors = []
    for p, s in zip(pred, samples):
        gt = s.landmarks
        d = np.linalg.norm(gt[norm_points[0]] - gt[norm_points[1]])
        errors.append(np.linalg.norm(p - gt, axis=1).mean() / d)
    return float(np.mean(errors))


def test_in_box_5_point_model_aflw_error_equals_its_card():
    aflw = read_mtfl(str(data_folder("mtfl")), "test", "5").samples
    assert len(aflw) == 2995
    card = load_card("5")["errors"]["test"]["models"]["AM"]
    assert card["faces"] == 2995
    assert mean_error("5", aflw, (0, 1)) == pytest.approx(card["mean_error"], abs=1e-5)


def test_in_box_68_point_model_helen_error_equals_its_card():
    helen = read_300w(str(data_folder("300w")), "common", "68").samples
    assert len(helen) == 330
    card = load_card("68")["errors"]["test"]["models"]["AM"]
    assert card["faces"] == 330
    assert mean_error("68", helen, (36, 45)) == pytest.approx(card["mean_error_outer_corners"], abs=1e-5)


@pytest.mark.parametrize("layout", sorted(IN_BOX))
def test_in_box_int8_model_files_and_card(layout):
    onnx = default_onnx(layout)
    q = int8_path(onnx)
    assert q == onnx.with_name(f"{IN_BOX[layout]}.int8.onnx") and q.is_file()
    assert q.stat().st_size < onnx.stat().st_size / 3  # int8 weights: a quarter of fp32's, and a little more
    card = json.loads(q.with_name(q.name + ".json").read_text())
    fp32 = json.loads(onnx.with_name(onnx.name + ".json").read_text())
    assert card["precision"] == "int8" and card["fp32_model"] == onnx.name and card["file"] == q.name
    for key in ("layout", "crop_scale", "test_crop", "box_convention", "dataset"):
        assert card[key] == fp32[key], key
    assert card["sha256"] == hashlib.sha256(q.read_bytes()).hexdigest()
    cost = card["quantization"]["cost"]
    assert cost["split"] == "test" and cost["faces"] == load_card(layout)["errors"]["test"]["models"]["AM"]["faces"]
    assert abs(cost["relative_change"]) <= 0.01  # the bar: at most 1% relative on the test faces


def test_in_box_int8_5_point_model_costs_what_its_card_says_on_aflw():
    """The int8 model through the predictor on AFLW's 2995 faces: the card's int8 error, within 1% of fp32's."""
    aflw = read_mtfl(str(data_folder("mtfl")), "test", "5").samples
    q = int8_path(default_onnx("5"))
    cost = json.loads(q.with_name(q.name + ".json").read_text())["quantization"]["cost"]
    int8, fp32 = mean_error("5", aflw, (0, 1), int8=True), mean_error("5", aflw, (0, 1))
    assert fp32 == pytest.approx(cost["mean_error_fp32"], abs=1e-5)
    assert int8 == pytest.approx(cost["mean_error_int8"], abs=1e-5)
    assert abs(int8 - fp32) / fp32 <= 0.01


@pytest.mark.parametrize("layout", sorted(IN_BOX))
def test_in_box_torch_int8_model_costs_what_its_card_says(layout):
    """The PyTorch int8 model (TorchScript) through the predictor on the card's test faces (AFLW, HELEN test):
    the error its card states (AFLW), within 1% of fp32's."""
    t = torch_int8_path(default_onnx(layout))
    card = json.loads(t.with_name(t.name + ".json").read_text())
    assert card["format"] == "torchscript" and card["sha256"] == hashlib.sha256(t.read_bytes()).hexdigest()
    cost = card["quantization"]["cost"]
    if layout == "5":
        faces, norm = read_mtfl(str(data_folder("mtfl")), "test", "5").samples, (0, 1)
    else:
        faces, norm = read_300w(str(data_folder("300w")), "common", "68").samples, (36, 45)
    assert cost["faces"] == len(faces)
    int8, fp32 = mean_error(layout, faces, norm, int8="torch"), mean_error(layout, faces, norm)
    if layout == "5":  # (the 68-point card's cost is taken on the run's crops with their own normaliser)
        assert int8 == pytest.approx(cost["mean_error_int8"], abs=1e-5)
    assert int8 != fp32 and abs(int8 - fp32) / fp32 <= 0.01


def test_in_box_int8_68_point_model_within_1_percent_on_helen():
    helen = read_300w(str(data_folder("300w")), "common", "68").samples
    int8, fp32 = mean_error("68", helen, (36, 45), int8=True), mean_error("68", helen, (36, 45))
    assert int8 != fp32 and abs(int8 - fp32) / fp32 <= 0.01


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    """scikit-image's astronaut photo (public domain, NASA): one face."""
    import cv2
    import skimage.data
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


@pytest.mark.parametrize("layout", ["68", "5"])
def test_predict_without_model_uses_the_in_box_model(astronaut, tmp_path, layout):
    args = [str(astronaut), "--out", str(tmp_path)] + (["--layout", layout] if layout != "68" else [])
    tool("tools/predict.py", *args)
    doc = json.loads((tmp_path / "astronaut.json").read_text())
    assert Path(doc["model"]).resolve() == default_onnx(layout).resolve()
    assert len(doc["faces"]) == 1
    face = doc["faces"][0]
    pts = np.asarray(face["landmarks"])
    assert pts.shape == (int(layout), 2)
    x1, y1, x2, y2 = face["box"]
    # the astronaut's face lies about x 175-270, y 75-170 in the 512 x 512 photo (looked at)
    assert 160 < x1 < x2 < 290 and 60 < y1 < y2 < 190
    # inside the box, within 8% of its side: the box is the detector's mapped onto the training faces'
    # (the tight box of the 68 points, as its median over training faces), so points may reach just past it
    m = 0.08 * (x2 - x1)
    assert ((pts[:, 0] >= x1 - m) & (pts[:, 0] <= x2 + m) & (pts[:, 1] >= y1 - m) & (pts[:, 1] <= y2 + m)).all()


def test_predict_without_model_for_a_layout_with_none_in_the_box(astronaut, tmp_path):
    r = tool("tools/predict.py", str(astronaut), "--layout", "29", "--out", str(tmp_path), check=False)
    assert r.returncode == 2 and "no in-box model for layout 29" in r.stderr


@pytest.mark.parametrize("layout", ["68", "5"])
def test_predict_int8_uses_the_in_box_int8_model(astronaut, tmp_path, layout):
    """--int8 (ONNX Runtime's) and --int8 torch (PyTorch's): the in-box int8 models, named in the output, their
    points within 2% of the box side of fp32's."""
    lay = ["--layout", layout] if layout != "68" else []
    tool("tools/predict.py", str(astronaut), "--out", str(tmp_path / "fp32"), *lay)
    tool("tools/predict.py", str(astronaut), "--out", str(tmp_path / "int8"), "--int8", *lay)
    tool("tools/predict.py", str(astronaut), "--out", str(tmp_path / "torch"), "--int8", "torch", *lay)
    fp32, int8, pt = (json.loads((tmp_path / k / "astronaut.json").read_text()) for k in ("fp32", "int8", "torch"))
    assert Path(int8["model"]).resolve() == int8_path(default_onnx(layout)).resolve()
    assert Path(pt["model"]).resolve() == torch_int8_path(default_onnx(layout)).resolve()
    a, b, c = (np.asarray(d["faces"][0]["landmarks"]) for d in (fp32, int8, pt))
    side = fp32["faces"][0]["box"][2] - fp32["faces"][0]["box"][0]
    assert 0 < np.abs(a - b).max() < 0.02 * side and 0 < np.abs(a - c).max() < 0.02 * side


def test_predict_int8_without_an_int8_model_is_a_named_error(astronaut, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(default_onnx("68").read_bytes())
    r = tool("tools/predict.py", str(astronaut), "--model", str(model), "--int8", "--out", str(tmp_path / "o"),
             check=False)
    assert r.returncode == 2 and "m.int8.onnx: missing" in r.stderr and "tools/port.py int8" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, why", [(b"", "not a TorchScript model"), (b"PK\x03\x04 cut short", "not a TorchScript")])
def test_a_broken_torchscript_model_is_named(astronaut, tmp_path, content, why):
    """--model with a .pt file PyTorch cannot load: exit 2, the file named, nothing written."""
    model = tmp_path / "m.int8.pt"
    model.write_bytes(content)
    r = tool("tools/predict.py", str(astronaut), "--model", str(model), "--out", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and f"{model}: {why}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
