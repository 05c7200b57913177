"""Predictions files scored like models (1-based and 0-based, a one-pixel shift caught, bad
files named), the evaluation's outputs (overlays, provenance of every number, test-crop
protocol), the single-core speed table and the paper's table."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import h5py
import numpy as np
import pytest
from conftest import synthetic_batch, tool, write_hdf5

from mcl.caffe import caffemodel
from mcl.evaluation import summary
from mcl.method.layouts import get_layout
from mcl.records import manifest

METRIC_KEYS = ("mean_error", "failure_rate", "auc", "per_cluster", "per_landmark")


def evaluate(run, *args, check=True):
    return tool("tools/evaluate.py", "--run", run, *args, check=check)


def results(path):
    return json.loads(path.read_text())["results"]


def assert_same_metrics(a, b):
    for norm in ("inter_ocular", "outer_corners"):
        if norm in a:
            for k in METRIC_KEYS:
                assert a[norm][k] == pytest.approx(b[norm][k], rel=1e-9, abs=1e-12), (norm, k)
    np.testing.assert_allclose(a["face_errors"], b["face_errors"], rtol=1e-9)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, caffe):
    """A 5-point run: 12 test faces, its nets, a model with random weights recorded in the
    run's manifest as a stage product (scale, seed, statistics), an assembled model made
    from it, a model from another engine, and a data manifest naming the authors' crops."""
    layout = get_layout(5)
    run = tmp_path_factory.mktemp("pred") / "run"
    for split, n, seed in (("train", 8, 1), ("val", 8, 2), ("test", 12, 3)):
        write_hdf5(run, split, *synthetic_batch(n, layout.n_points, seed))
    tool("tools/make_nets.py", "--run", run, "--layout", 5, "--scale", 0.0002, "--seed", 7, "--batch", 8)
    net = caffe.Net(str(run / "nets/deploy.prototxt"), caffe.TEST)
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "BatchNorm":  # unit statistics: outputs of a sane size
            layer.blobs[0].data[...], layer.blobs[1].data[...], layer.blobs[2].data[...] = 0, 1, 1
    models = run / "models"
    models.mkdir()
    net.save(str(models / "bm.caffemodel"))
    shutil.copy(models / "bm.caffemodel", models / "am.caffemodel")
    shutil.copy(models / "bm.caffemodel", models / "other.caffemodel")
    manifest.record(run, models / "bm.caffemodel", "stage1", {"schedule_scale": 0.0002, "seed": 7, "layout": "5"},
                    [], 1.0, bn_stats="recomputed")
    manifest.record(run, models / "am.caffemodel", "assemble", {"heads": "models/bm.caffemodel"},
                    [models / "bm.caffemodel"], 1.0)
    manifest.record(run, models / "other.caffemodel", "stage1",
                    {"schedule_scale": 0.5, "seed": 2, "layout": "5", "engine": "torch"}, [], 1.0, bn_stats="running")
    (run / "data/manifest.json").write_text(json.dumps(
        {"source": {"dataset": "synth"}, "settings": {"test_crop": "authors", "crop_scale": 1.25, "layout": "5"}}))
    with h5py.File(run / "data/test.h5", "r") as h:
        gt, iod = h["landmarks_image"][...], h["iod_image"][...]
    return run, gt, iod


@pytest.fixture(scope="module")
def written(tiny):
    """The model evaluated once, its predictions written 1-based (default) and 0-based."""
    run, _, _ = tiny
    out = evaluate(run, "--model", "AM=models/am.caffemodel", "--model", "OTHER=models/other.caffemodel",
                   "--write-predictions", run / "p1", "--speed-repeats", 3, "--overlays", 3)
    evaluate(run, "--model", "AM=models/am.caffemodel", "--coords-base", 0, "--write-predictions", run / "p0",
             "--speed-repeats", 0, "--overlays", 0, "--out", run / "eval/zero")
    return run, out


def test_predictions_file_gives_the_metrics_of_the_model_that_wrote_it(tiny, written):
    run, _ = written
    p1, p0 = np.loadtxt(run / "p1/AM.txt"), np.loadtxt(run / "p0/AM.txt")
    assert p1.shape == (12, 10)  # one line per face, x1 y1 ... x5 y5
    np.testing.assert_allclose(p1, p0 + 1, rtol=0, atol=1e-9)  # 1-based = 0-based + 1
    evaluate(run, "--model", "AM=models/am.caffemodel", "--predictions", f"FILE1={run / 'p1/AM.txt'}",
             "--speed-repeats", 0, "--out", run / "eval/one")
    evaluate(run, "--coords-base", 0, "--predictions", f"FILE0={run / 'p0/AM.txt'}", "--speed-repeats", 0,
             "--out", run / "eval/zero_read")
    one = results(run / "eval/one.json")
    assert_same_metrics(one["FILE1"], one["AM"])
    assert_same_metrics(results(run / "eval/zero_read.json")["FILE0"], one["AM"])
    assert one["FILE1"]["source"] == "predictions" and one["FILE1"]["coords_base"] == 1


def test_predictions_are_scored_in_a_run_folder_holding_only_data(tiny, written, tmp_path):
    """Another method's predictions need only the test split: no nets, no models, no speed figure."""
    run, _ = written
    data_only = tmp_path / "data_only"
    shutil.copytree(run / "data", data_only / "data")
    proc = evaluate(data_only, "--predictions", f"AM={run / 'p1/AM.txt'}", "--overlays", 2)
    assert "speed" not in json.loads((data_only / "eval/test.json").read_text())
    scored = results(data_only / "eval/test.json")["AM"]
    assert scored["speed_ms"] is None and scored["source"] == "predictions"
    assert_same_metrics(scored, results(run / "eval/test.json")["AM"])
    assert not (data_only / "nets").exists(), proc.stdout


def test_a_diverged_model_is_shown_as_diverged_never_with_numbers(tiny, written):
    """A model whose weights went NaN (a diverged stage): its report rows say so and hold no figures."""
    run, _ = written
    model = caffemodel.load(run / "models/bm.caffemodel")
    blob = next(lay for lay in model.layer if lay.name == "shape_pred").blobs[0]
    caffemodel.set_blob(blob, np.full(caffemodel.blob_array(blob).shape, np.nan, np.float32))
    caffemodel.save(model, run / "models/nan.caffemodel")
    evaluate(run, "--model", "NAN=models/nan.caffemodel", "--model", "BM=models/bm.caffemodel", "--speed-repeats", 0,
             "--overlays", 0, "--out", run / "eval/nan")
    md = (run / "eval/nan.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| NAN |")]
    assert rows and all("diverged" in line for line in rows[:1])
    assert not any(re.search(r"\| NAN \|[^|]*\| \d+ \| \d", line) for line in rows)  # no mean error shown
    assert any(line.startswith("| BM |") and re.search(r"\| \d+\.\d\d \|", line) for line in md.splitlines())
    doc = {"run": str(run), "layout": "5", "split": "test", "engine": "caffe", "schedule_scale": 0.1, "seed": 0,
           "models": {"BM": {"mean_error": float("nan"), "failure_rate": 1.0, "auc_0.10": 0.0, "bn_stats": "running",
                             "caffe_ms": None}},
           "equal_budget_mean_error": float("nan"), "onnx": None, "ordering": None, "occlusion_held": None,
           "wall_time_s": {}, "files": {}}
    summary_md = summary.markdown(doc)
    assert "| BM | diverged" in summary_md and "| BM + equal budget (control) | diverged" in summary_md
    assert "nan" not in summary_md.lower()


def test_a_one_pixel_shift_is_detected(tiny, written):
    run, gt, iod = tiny
    gt_file = run / "gt_1based.txt"  # the ground truth written 1-based, as a .pts user would
    gt_file.write_text("".join(" ".join(f"{v + 1:.6f}" for v in face.ravel()) + "\n" for face in gt))
    evaluate(run, "--predictions", f"GT={gt_file}", "--speed-repeats", 0, "--out", run / "eval/gt1")
    assert results(run / "eval/gt1.json")["GT"]["inter_ocular"]["mean_error"] == pytest.approx(0, abs=1e-6)
    # The same file read as 0-based: every landmark one pixel off in x and in y.
    evaluate(run, "--coords-base", 0, "--predictions", f"GT={gt_file}", "--predictions",
             f"AM1={run / 'p1/AM.txt'}", "--speed-repeats", 0, "--out", run / "eval/gt0")
    shifted = results(run / "eval/gt0.json")
    assert shifted["GT"]["inter_ocular"]["mean_error"] == pytest.approx(np.mean(np.sqrt(2) / iod), rel=1e-5)
    model = results(run / "eval/test.json")["AM"]["inter_ocular"]["mean_error"]
    assert shifted["AM1"]["inter_ocular"]["mean_error"] != pytest.approx(model, rel=1e-6)


@pytest.mark.parametrize("body,where", [
    ("short", "line 2 holds 9 numbers, expected 10"),
    ("lines", "11 lines of predictions, but the split has 12 faces"),
    ("word", "line 3, field 4: 'abc' is not a number"),
    ("nan", "line 1, field 1: 'nan' is not a finite number"),
])
def test_bad_predictions_files_exit_2_naming_file_and_line(tiny, tmp_path, body, where):
    run, gt, _ = tiny
    rows = [[f"{v + 1:.3f}" for v in face.ravel()] for face in gt]
    if body == "short":
        rows[1] = rows[1][:-1]
    elif body == "lines":
        rows = rows[:-1]
    elif body == "word":
        rows[2][3] = "abc"
    elif body == "nan":
        rows[0][0] = "nan"
    bad = tmp_path / f"bad_{body}.txt"
    bad.write_text("".join(" ".join(r) + "\n" for r in rows))
    out = tmp_path / "out" / "test"
    r = evaluate(run, "--model", "AM=models/am.caffemodel", "--predictions", f"X={bad}", "--out", out, check=False)
    assert r.returncode == 2
    assert str(bad) in r.stderr and where in r.stderr, r.stderr
    assert not out.parent.exists()  # nothing written


def test_evaluation_writes_overlays_and_the_provenance_of_every_number(tiny, written):
    run, log = written
    doc = json.loads((run / "eval/test.json").read_text())
    am, other = doc["results"]["AM"], doc["results"]["OTHER"]
    # AM was assembled from a stage-1 model: it carries that model's scale, seed and statistics.
    assert (am["schedule_scale"], am["seed"], am["engine"], am["bn_stats"]) == (0.0002, 7, "caffe", "recomputed")
    assert (other["schedule_scale"], other["seed"], other["engine"], other["bn_stats"]) == (0.5, 2, "torch", "running")
    assert am["test_crop"] == other["test_crop"] == doc["protocol"]["test_crop"] == "authors"
    assert am["speed_ms"] > 0 and am["speed"]["repeats"] == 3 and am["speed"]["threads"]["OPENBLAS_NUM_THREADS"] == "1"
    md = (run / "eval/test.md").read_text()
    assert "test-crop protocol `authors`" in md
    assert "| AM | model `am.caffemodel` | 0.0002 | 7 | caffe | recomputed | authors |" in md
    assert "| OTHER | model `other.caffemodel` | 0.5 | 2 | torch | running | authors |" in md
    assert manifest.entry(run, run / "eval/test.json")["settings"]["test_crop"] == "authors"
    for name in ("AM", "OTHER"):
        sheet = cv2.imread(str(run / f"eval/test_overlays_{name}.png"))
        assert sheet is not None and sheet.shape[0] >= 2 * 150 and sheet.shape[1] >= 3 * 150  # 2 rows x 3 faces
        b, g, r = (sheet[..., i].astype(int) for i in range(3))
        assert np.any((g > 180) & (r < 100) & (b < 100))  # ground truth drawn green
        assert np.any((r > 200) & (g < 100) & (b < 100))  # predictions drawn red
    assert (run / "eval/test_ced.png").stat().st_size > 0


def test_overlays_pick_the_best_and_the_worst_faces():
    from mcl.evaluation.report import overlay_order
    best, worst = overlay_order(np.array([0.3, 0.1, 0.5, 0.2, 0.4]), 2)
    assert best.tolist() == [1, 3] and worst.tolist() == [2, 4]


def test_speed_table_single_core_for_5_29_68_beside_the_paper(monkeypatch):
    from mcl.caffe import speed
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "8")  # the caller's setting must not reach the timing
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    table = speed.measure_layouts(("5", "29", "68"), repeats=3, warmup=1, caffe_iterations=2)
    assert [r["layout"] for r in table["rows"]] == ["5", "29", "68"]
    for r in table["rows"]:
        assert r["median_ms"] > 0 and r["fps"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["iqr_ms"] >= 0 and r["repeats"] == 3 and len(r["affinity"]) == 1
        assert set(r["threads"].values()) == {"1"}
        assert r["caffe_time"]["forward_ms"] > 0 and r["caffe_time"]["phase"] == "TEST"
    paper_row = table["paper"]
    assert (paper_row["median_ms"], paper_row["fps"], paper_row["layout"]) == (17.5, 57, "68")
    from mcl.evaluation.report import speed_markdown
    assert "17.5" in speed_markdown(table) and "BM/AM deploy, 68 points" in speed_markdown(table)


def test_the_paper_table_holds_spec_10_with_citations():
    from mcl.method import paper
    spec_10 = {"mean_error.aflw": 5.38, "mean_error.cofw": 6.00, "mean_error.ibug": 8.51,
               "speed.ms_per_face": 17.5, "speed.fps": 57, "occlusion.wm_left_eye": 6.60,
               "occlusion.am_left_eye": 6.50, "dan.reported": 7.57, "dan.retrained": 7.97, "dan.weighting": 7.81,
               "perturbation.delta_max": 0.4, "split.aflw.train": 10000, "split.aflw.test": 2995,
               "split.cofw.train": 1345, "split.cofw.test": 507, "split.ibug.train": 3148, "split.ibug.test": 135}
    for key, v in spec_10.items():
        assert paper.value(key) == v, key
    assert all(f.where.startswith("Sec. IV") for f in paper.FIGURES)
    assert paper.mean_error("ibug", "68", "challenging").value == 8.51
    assert paper.mean_error("ibug", "68", "common") is None and paper.mean_error("synth", "68") is None
