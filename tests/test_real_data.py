"""Real faces (MTFL -> AFLW, net_rest): the readers on the real folders, bad real input named, the
extra test splits (net_rest whole and reduced as AFLW was), the paper report's verdicts, and a tiny
`make paper` end to end on a few hundred real faces.

The data are read from MCL_DATA (default ../shared/data beside the checkout). Where the folder is
missing these tests skip and say why; under CI=true a missing folder fails them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make, tool
from test_port_detect import dlib_installed  # noqa: F401 - the session fixture, shared

from mcl.data.extra import nearest_offset, prepare_extra, reduce_nearest
from mcl.data.readers import DataError, Sample, load_image, read_mtfl

DATA = Path(os.environ.get("MCL_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def real_data() -> Path:
    if not (DATA / "mtfl" / "training.txt").exists():
        why = f"real data not found at {DATA} (set MCL_DATA to the folder holding mtfl/ and net_rest/)"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)
    return DATA


def small_mtfl(real: Path, dst: Path, n_train: int, n_test: int, step: int = 1) -> Path:
    """An MTFL folder of n_train training faces (every step-th line: training.txt lists LFW first, then
    the web faces) and the first n_test test faces of the real one, each picture a link to the real
    one, so that a test may replace one picture without touching the others."""
    dst.mkdir(parents=True)
    for name, n, every in (("training.txt", n_train, step), ("testing.txt", n_test, 1)):
        lines = (real / "mtfl" / name).read_text().splitlines()[::every][:n]
        for line in lines:
            rel = line.split()[0]
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (dst / rel).exists():
                (dst / rel).symlink_to(real / "mtfl" / rel)
        (dst / name).write_text("\n".join(lines) + "\n")
    return dst


def small_net_rest(real: Path, dst: Path, n: int) -> Path:
    dst.mkdir(parents=True)
    (dst / "net_7876").symlink_to(real / "net_rest" / "net_7876")
    (dst / "testing.txt").write_text("\n".join((real / "net_rest" / "testing.txt").read_text().splitlines()[:n]) + "\n")
    return dst


# ---- the readers on the real folders ---------------------------------------------------------------

def test_readers_count_the_real_faces(real_data):
    assert len(read_mtfl(str(real_data / "mtfl"), "train").samples) == 10000
    assert len(read_mtfl(str(real_data / "mtfl"), "test").samples) == 2995
    rest = read_mtfl(str(real_data / "net_rest"), "test")
    assert len(rest.samples) == 2022 and not rest.skipped


# ---- bad real input stays a named error ------------------------------------------------------------

def test_truncated_jpeg_is_named_not_decoded_gray(real_data, tmp_path):
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 0, 1)
    first = (mtfl / "testing.txt").read_text().split()
    whole = (mtfl / first[0]).read_bytes()
    (mtfl / first[0]).unlink()
    (mtfl / first[0]).write_bytes(whole[: len(whole) // 2])
    face = read_mtfl(str(mtfl), "test").samples[0]
    with pytest.raises(DataError, match=r"AFLW/.*\.jpg: unreadable image: broken picture: truncated JPEG"):
        load_image(face)
    (mtfl / first[0]).write_bytes(b"this is not a picture")
    with pytest.raises(DataError, match=r"AFLW/.*\.jpg: unreadable image"):
        load_image(face)


@pytest.mark.parametrize("line, message", [
    ("AFLW/x.jpg 1 2 3 4 5 6 7 8 9", r"testing\.txt:1: expected an image path and 10 coordinates .* found 10 fields"),
    # 14 fields: one coordinate missing from an MTFL line would shift an attribute into the points
    ("AFLW/x.jpg 1 2 3 4 5 6 7 8 9 1 2 1 3", r"testing\.txt:1: .* found 14 fields"),
    ("AFLW/nowhere.jpg 30 50 40 32 48 30 30 40 55 55 1 2 2 3", r"testing\.txt:1: missing image file .*nowhere\.jpg"),
])
def test_bad_annotation_lines_are_named(real_data, tmp_path, line, message):
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 0, 0)
    (mtfl / "AFLW").mkdir()
    (mtfl / "AFLW" / "x.jpg").symlink_to(real_data / "mtfl" / (real_data / "mtfl" / "testing.txt").read_text().split()[0])
    (mtfl / "testing.txt").write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        read_mtfl(str(mtfl), "test")


def test_prepare_skips_and_lists_a_truncated_picture(real_data, tmp_path):
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 24, 6)
    first = (mtfl / "training.txt").read_text().split()[0]
    whole = (mtfl / first).read_bytes()
    (mtfl / first).unlink()
    (mtfl / first).write_bytes(whole[: len(whole) // 3])
    args = ["--dataset", "mtfl", "--data-root", mtfl, "--copies", "1", "--quiet", "--workers", "2"]
    proc = tool("data_prep/prepare.py", *args, "--out", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "truncated JPEG" in proc.stderr and first in proc.stderr
    assert not (tmp_path / "bad").exists()
    tool("data_prep/prepare.py", *args, "--skip-bad", "--out", tmp_path / "ok")
    doc = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert [s["id"] for s in doc["skipped"]] == [first] and "truncated JPEG" in doc["skipped"][0]["reason"]


# ---- the reduction to 80 px, as the AFLW pictures were made --------------------------------------

def test_nearest_offsets_of_the_data_readme():
    # data README: 0.4375 for 250 -> 80 (LFW) and 150 -> 80 (AFLW); whole ratios land on pixel corners
    assert nearest_offset(250, 80) == pytest.approx(0.4375)
    assert nearest_offset(150, 80) == pytest.approx(0.4375)
    assert nearest_offset(400, 80) == 0.0 and nearest_offset(160, 80) == 0.0


def test_reduced_picture_shows_the_pixel_the_point_names(tmp_path):
    import cv2
    img = np.zeros((216, 160), np.uint8)
    img[100:102, 60:62] = 255  # a 2 x 2 dot at (60.5, 100.5)
    cv2.imwrite(str(tmp_path / "p.png"), img)
    s = Sample("p.png", "5", np.array([[60.5, 100.5]] * 5), np.array([0.0, 0.0, 159.0, 215.0]),
               image_path=str(tmp_path / "p.png"))
    r = reduce_nearest(s, 160, 80)
    small = load_image(r)
    assert small.shape == (108, 80)
    assert r.landmarks[0].tolist() == [30.25, 50.25]
    assert small[50, 30] == 255 and small.sum() == 255  # one pixel of the four kept, where the point maps


def test_extra_splits_of_net_rest(real_data, tmp_path):
    """net_rest cropped as the run's test split, whole and reduced to 80 px: same faces, same order."""
    run = tmp_path / "run"
    tool("data_prep/prepare.py", "--dataset", "mtfl", "--data-root", small_mtfl(real_data, tmp_path / "mtfl", 20, 4),
         "--copies", "1", "--quiet", "--out", run / "data")
    rest = small_net_rest(real_data, tmp_path / "net_rest", 12)
    tool("data_prep/extra_test.py", "--run", run, f"net_rest={rest}", f"net_rest_80={rest}:80", "--quiet")
    from mcl.data.splits import load_split
    full, small = load_split(run, "net_rest"), load_split(run, "net_rest_80")
    assert len(full["data"]) == len(small["data"]) == 12
    # 400 px pictures reduce by 5, 160 px ones by 2: the eye distance shrinks by exactly that
    ratio = full["iod_image"] / small["iod_image"]
    assert set(np.round(ratio, 6)) <= {5.0, 2.0}
    doc = json.loads((run / "data" / "net_rest_80.manifest.json").read_text())
    assert doc["source"]["reduce_width"] == 80 and doc["counts"]["faces"] == 12
    with pytest.raises(DataError, match="extra split name 'test'"):
        prepare_extra(run, "test", str(rest))


# ---- the report's verdicts, on predictions files whose differences are known ----------------------

def test_report_verdicts_on_known_differences(tmp_path):
    """Five predictions files made from the ground truth with known per-face errors; the paired
    verdicts of paper_report must come out as worked out by hand below."""
    from conftest import synthetic_batch, write_hdf5

    from mcl.data.splits import load_split
    from mcl.evaluation.job import run_evaluation
    from mcl.evaluation.paper_report import CONTROL, paired_claims
    from mcl.evaluation.predictions import write_predictions

    run = tmp_path / "run"
    write_hdf5(run, "test", *synthetic_batch(40, 5, 3))
    (run / "data" / "manifest.json").write_text(json.dumps({"source": {"dataset": "mtfl"}, "settings": {"layout": "5"}}))
    data = load_split(run, "test")
    gt, d = data["landmarks_image"].reshape(40, 5, 2), data["iod_image"]
    alternate = np.where(np.arange(40) % 2 == 0, 0.01, 0.03)  # mean 0.02, spread 0.01 either way
    errors = {"BM": np.full(40, 0.03), "WM": np.full(40, 0.02), "AM": alternate, CONTROL: np.full(40, 0.015),
              "dlib (box)": np.full(40, 0.12)}
    files = []
    for name, e in errors.items():  # every point moved right by e * d: the face's mean error is exactly e
        pred = gt + np.stack([e * d, np.zeros(40)], axis=1)[:, None, :]
        files.append((name, write_predictions(tmp_path / f"{len(files)}.txt", pred)))
    ev = run_evaluation(run, "test", (), files, speed_repeats=0, log=lambda s: None)
    claims = {c["claim"]: c for c in paired_claims({n: np.asarray(r["face_errors"])
                                                    for n, r in ev.doc["results"].items()})}
    # WM - BM = -0.01 on every face: no spread, beyond any noise
    assert claims["WM < BM"]["mean_difference"] == pytest.approx(-0.01)
    assert claims["WM < BM"]["verdict"] == "holds beyond the test faces' noise"
    # AM - WM = -0.01, +0.01 alternating: mean 0
    assert claims["AM < WM"]["mean_difference"] == pytest.approx(0.0, abs=1e-12)
    assert claims["AM < WM"]["verdict"] == "not beyond the test faces' noise"
    # AM - BM = -0.02, 0 alternating: mean -0.01, sd 0.01013 (n - 1), SE 0.0016 < 0.005
    assert claims["AM < BM"]["verdict"] == "holds beyond the test faces' noise"
    assert claims["AM < BM"]["standard_error"] == pytest.approx(0.0016013, rel=1e-3)
    # AM - control = -0.005, +0.015 alternating: mean +0.005 > 2 SE (0.0032): reversed
    assert claims[f"AM < {CONTROL}"]["verdict"] == "reversed beyond the test faces' noise"
    assert claims[f"WM < {CONTROL}"]["verdict"] == "reversed beyond the test faces' noise"
    # no face above 10%: the failure claim has nothing to tell apart
    assert claims["AM's failure rate < BM's"]["verdict"] == "not beyond the test faces' noise"
    assert claims["AM < dlib (box)"]["mean_difference"] == pytest.approx(-0.10)
    assert claims["WM < BM"]["paper"]["where"].startswith("Sec. IV-C-4")


# ---- a tiny `make paper` on real faces, end to end --------------------------------------------------

def test_tiny_paper_on_real_faces(real_data, dlib_installed, tmp_path):  # noqa: F811
    """`make paper` on 240 MTFL training faces, 120 AFLW and 40 net_rest faces, at a tiny schedule with
    two seeds: every stage, the control, the extra splits, the peers, the curve, the sweep and the report."""
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 240, 120, step=37)  # LFW and web faces both
    small_net_rest(real_data, tmp_path / "net_rest", 40)
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    tiny = [f"DATASET=mtfl", f"DATA_ROOT={mtfl}", f"RUN={run}", "SCHEDULE=paper", "SCALE=0.0002", "BATCH=8",
            "BN_BATCHES=4", "DATA_OPTS=--copies 2 --quiet", "PAPER_SEEDS=1 2", "PAPER_SEED_SCHEDULE=paper",
            f"PAPER_SWEEP={sweep}"]
    make("paper", *tiny)
    doc = json.loads((run / "paper" / "report.json").read_text())
    assert list(doc["splits"]) == ["test", "net_rest", "net_rest_80"]
    test = doc["splits"]["test"]["results"]
    assert {"BM", "WM", "AM", "BM + equal budget", "dlib (box)", "dlib (detector)"} <= set(test)
    assert test["AM"]["inter_ocular"]["faces"] == 120 and test["AM"]["engine"] == "torch"
    assert doc["splits"]["net_rest_80"]["results"]["AM"]["inter_ocular"]["faces"] == 40
    assert doc["paper"]["figures"][0]["value"] == 5.38 and doc["paper"]["figures"][1]["value"] == 5.60
    assert {c["key"] for c in doc["splits"]["test"]["claims"]} >= {"wm_vs_bm", "am_vs_wm", "am_vs_equal_budget"}
    assert doc["sweep"]["seeds"] == [1, 2] and "am_vs_wm" in doc["sweep"]["claims"]
    assert doc["resolution"]["full"] == "net_rest" and doc["resolution"]["reduced"] == "net_rest_80"
    assert doc["schedule_stages"]["stage1"]["max_iter"] == 36 and doc["training_wall_s"] > 0
    assert len(doc["curve"]["points"]) == 12  # stage 1's snapshots, every 3 of 36 iterations
    assert any(k.endswith("testing.txt") for k in doc["data"])
    md = (run / "paper" / "report.md").read_text()
    assert "5.38" in md and "5.60" in md and "lost" in md and "What the 80 x 80 pictures cost" in md
    for png in ("ced_test.png", "ced_net_rest.png", "curves.png"):
        assert (run / "paper" / png).stat().st_size > 10_000
    again = make("paper", *tiny)  # a finished paper does nothing more
    assert "run_stage.py" not in again.stdout and "paper_report.py" not in again.stdout
