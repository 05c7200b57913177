"""tools/predict.py on the pictures of a test split gives the evaluation's numbers: the same
crop (bit for bit), the same points in the picture, the same errors, without Caffe."""

from __future__ import annotations

import importlib.util
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_port import caffe_model, deploy_text

from mcl.caffe import forward
from mcl.data import splits
from mcl.data.readers import read_dataset, read_pts
from mcl.evaluation import evaluate
from mcl.method.layouts import get_layout


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=["ours", "authors"])
def run(tmp_path_factory, request):
    """A tiny synthetic run (under each test-crop protocol): prepared data, a deploy net with
    random blobs, its port."""
    import caffe
    caffe.set_mode_cpu()
    root = tmp_path_factory.mktemp("predict")
    proc = subprocess.run([sys.executable, "data_prep/prepare.py", "--dataset", "synth", "--data-root",
                           str(root / "raw"), "--out", str(root / "run" / "data"), "--n-train", "4", "--n-test", "4",
                           "--copies", "1", "--formats", "hdf5", "--workers", "1", "--quiet",
                           "--test-crop", request.param],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proto, model, _ = caffe_model(caffe, root / "run" / "models", deploy_text("68", "bm"), seed=21, stem="am_deploy")
    am = root / "run" / "models" / "am.caffemodel"
    model.rename(am)
    assert load_tool("port").main(["export", "--prototxt", str(proto), "--caffemodel", str(am), "--out",
                                   str(root / "run" / "port"), "--formats", "onnx", "--fold",
                                   "--run", str(root / "run")]) == 0
    return root, proto, am


def test_predictor_gives_the_evaluations_numbers(run):
    from mcl.port.predict import Predictor, read_gray
    root, proto, am = run
    layout = get_layout("68")
    data = splits.load_split(root / "run", "test")
    res = evaluate.evaluate_model(forward.load_net(proto, am), data, layout)
    caffe_crop = forward.predict(forward.load_net(proto, am), data["data"], ["shape_pred"])["shape_pred"]
    caffe_points = evaluate.to_image(caffe_crop, data["crop_to_image"])

    predictor = Predictor.from_onnx(root / "run" / "port" / "am.onnx")
    # crop scale and protocol from the card, which has them from the run's data manifest
    protocol = json.loads((root / "run" / "data" / "manifest.json").read_text())["settings"]["test_crop"]
    assert predictor.crop_scale == 1.25 and predictor.layout.name == "68" and predictor.test_crop == protocol
    _, test = read_dataset("synth", str(root / "raw"), "68", "challenging")
    assert len(test.samples) == len(data["data"]) == 4
    points = []
    for i, sample in enumerate(test.samples):
        x, crop_to_image = predictor.crop(read_gray(sample.image_path), sample.box)
        assert np.array_equal(x, data["data"][i:i + 1])  # the evaluation's crop, bit for bit
        np.testing.assert_allclose(crop_to_image[0], data["crop_to_image"][i], rtol=1e-12)
        points.append(predictor.predict(read_gray(sample.image_path), sample.box))
    points = np.stack(points)
    np.testing.assert_allclose(points, caffe_points, atol=1e-3)  # ONNX Runtime vs Caffe, in picture pixels
    gt = data["landmarks_image"].reshape(len(points), layout.n_points, 2)
    face = evaluate.landmark_errors(points, gt, data["iod_image"]).mean(axis=1)
    np.testing.assert_allclose(face, res["face_errors"], rtol=1e-5)
    np.testing.assert_allclose(face.mean(), res["inter_ocular"]["mean_error"], rtol=1e-5)


def test_predict_tool_writes_json_pts_and_picture(run, tmp_path, capsys):
    root, proto, am = run
    _, test = read_dataset("synth", str(root / "raw"), "68", "challenging")
    s = test.samples[0]
    tool = load_tool("predict")
    out = tmp_path / "pred"
    assert tool.main([s.image_path, "--box", *map(str, s.box), "--model", str(root / "run" / "port" / "am.onnx"),
                      "--out", str(out)]) == 0
    stem = s.image_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    record = json.loads((out / f"{stem}.json").read_text())
    pts = np.asarray(record["points"])
    assert pts.shape == (68, 2) and record["points_base"] == 0
    np.testing.assert_allclose(read_pts(str(out / f"{stem}.pts")), pts + 1.0, atol=1e-6)
    assert (out / f"{stem}_landmarks.png").stat().st_size > 0
    # a list of faces, and bad input
    listing = tmp_path / "faces.txt"
    listing.write_text("".join(f"{t.image_path} {' '.join(map(str, t.box))}\n" for t in test.samples[:2]))
    assert tool.main(["--list", str(listing), "--model", str(root / "run" / "port" / "am.onnx"),
                      "--out", str(tmp_path / "many")]) == 0
    assert len(list((tmp_path / "many").glob("*.pts"))) == 2
    capsys.readouterr()
    assert tool.main([s.image_path, "--box", "10", "10", "5", "5", "--model",
                      str(root / "run" / "port" / "am.onnx"), "--out", str(tmp_path / "bad")]) == 2
    assert "degenerate face box" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_int8_model_of_a_port_with_its_card_and_cost(run, tmp_path):
    """tools/port.py int8: <name>.int8.onnx beside the port, its card keeps the port's crop and layout and states
    the calibration and the cost on the run's test faces; the predictor runs it; a port without a card is named."""
    from mcl.port.predict import Predictor, read_gray
    from mcl.port.quantize import int8_path
    root, proto, am = run
    onnx = root / "run" / "port" / "am.onnx"
    port = load_tool("port")
    assert port.main(["int8", "--onnx", str(onnx), "--prototxt", str(proto), "--caffemodel", str(am),
                      "--run", str(root / "run")]) == 0
    q = int8_path(onnx)
    assert q.name == "am.int8.onnx" and q.is_file()
    card, fp32_card = (json.loads(p.with_name(p.name + ".json").read_text()) for p in (q, onnx))
    assert (card["layout"], card["crop_scale"], card["test_crop"]) == (fp32_card["layout"], fp32_card["crop_scale"],
                                                                      fp32_card["test_crop"])
    calib = card["quantization"]["calibration"]
    assert calib["split"] == "val" and calib["faces"] == len(splits.load_split(root / "run", "val")["data"]) >= 1
    cost = card["quantization"]["cost"]
    assert cost["faces"] == 4 and cost["mean_error_int8"] > 0 and np.isfinite(cost["relative_change"])
    _, test = read_dataset("synth", str(root / "raw"), "68", "challenging")
    sample = test.samples[0]
    a = Predictor.from_onnx(onnx).predict(read_gray(sample.image_path), sample.box)
    b = Predictor.from_onnx(q).predict(read_gray(sample.image_path), sample.box)
    assert a.shape == b.shape == (68, 2) and 0 < np.abs(a - b).max() < 0.05 * (sample.box[2] - sample.box[0])
    # the PyTorch int8 model beside it (TorchScript), its card the same fields with its own method and cost
    t = q.with_name("am.int8.pt")
    tcard = json.loads(t.with_name(t.name + ".json").read_text())
    assert tcard["format"] == "torchscript" and tcard["file"] == t.name and tcard["layout"] == card["layout"]
    assert "PyTorch" in tcard["quantization"]["method"] and tcard["quantization"]["cost"]["faces"] == 4
    assert tcard["sha256"] == hashlib.sha256(t.read_bytes()).hexdigest()
    c = Predictor.from_onnx(t).predict(read_gray(sample.image_path), sample.box)
    assert c.shape == (68, 2) and 0 < np.abs(a - c).max() < 0.05 * (sample.box[2] - sample.box[0])
    # a port without its card: named, exit 2, nothing written
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(onnx.read_bytes())
    proc = subprocess.run([sys.executable, "tools/port.py", "int8", "--onnx", str(bare), "--prototxt", str(proto),
                           "--caffemodel", str(am), "--run", str(root / "run")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "bare.onnx.json: missing" in proc.stderr
    assert not int8_path(bare).exists()
