"""Readers: right 0-based coordinates from each real format, and bad input named clearly."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
from fixtures_data import write_300w, write_cofw_v73, write_generic, write_mtfl, write_pts_crlf

from mcl.data.readers import (
    DataError,
    check_in_image,
    load_image,
    mtfl_box,
    read_300w,
    read_cofw,
    read_generic,
    read_mtfl,
    read_pts,
)
from mcl.method.layouts import AFLW5, COFW29, derive_from_68

# ---- 300-W --------------------------------------------------------------------------

def test_300w_train_split_is_afw_helen_lfpw_with_0_based_points(tmp_path):
    truth = write_300w(str(tmp_path), per_subset=2)
    res = read_300w(str(tmp_path), "train", "68")
    ids = [s.sample_id for s in res.samples]
    assert ids == ["afw/image_0000.jpg", "afw/image_0001.jpg", "helen/trainset/image_0000.jpg",
                   "helen/trainset/image_0001.jpg", "lfpw/trainset/image_0000.png", "lfpw/trainset/image_0001.png"]
    for s in res.samples:
        pts1, gt1 = truth[s.sample_id]
        np.testing.assert_allclose(s.landmarks, pts1 - 1.0, atol=1e-6)  # 1-based on disk
        np.testing.assert_allclose(s.box, gt1 - 1.0, atol=1e-9)  # bb_ground_truth, not bb_detector
        assert s.occluded is None and s.layout == "68"
    assert res.skipped == []


@pytest.mark.parametrize("split,folders", [("challenging", ["ibug"]), ("common", ["helen/testset", "lfpw/testset"]),
                                           ("full", ["helen/testset", "lfpw/testset", "ibug"])])
def test_300w_test_splits(tmp_path, split, folders):
    write_300w(str(tmp_path), per_subset=1)
    res = read_300w(str(tmp_path), split, "68")
    assert [s.sample_id.rsplit("/", 1)[0] for s in res.samples] == folders


def test_300w_lfpw_test_image_is_not_mistaken_for_the_train_one(tmp_path):
    truth = write_300w(str(tmp_path), per_subset=1)
    test = read_300w(str(tmp_path), "common", "68").samples[1]
    assert test.image_path.endswith(os.path.join("lfpw", "testset", "image_0000.png"))
    np.testing.assert_allclose(test.landmarks, truth["lfpw/testset/image_0000.png"][0] - 1, atol=1e-6)


def test_300w_derives_5_points_from_68(tmp_path):
    truth = write_300w(str(tmp_path), per_subset=1)
    s = read_300w(str(tmp_path), "challenging", "5").samples[0]
    want = derive_from_68(truth["ibug/image_0000.jpg"][0] - 1.0, AFLW5)
    np.testing.assert_allclose(s.landmarks, want, atol=1e-6)
    assert s.landmarks.shape == (5, 2) and s.layout == "5"


def test_pts_reader_tolerates_crlf_and_blank_lines(tmp_path):
    pts = np.array([[1.5, 2.25], [3.0, 4.0], [5.125, 6.5]])
    write_pts_crlf(str(tmp_path / "a.pts"), pts)
    np.testing.assert_array_equal(read_pts(str(tmp_path / "a.pts")), pts)


def test_load_image_gives_grayscale_uint8(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    s = read_300w(str(tmp_path), "challenging", "68").samples[0]
    img = load_image(s)
    assert img.dtype == np.uint8 and img.shape == (80, 96)
    want = cv2.cvtColor(cv2.imread(s.image_path), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(img, want)


# ---- COFW ---------------------------------------------------------------------------

def test_cofw_v73_reader(tmp_path):
    ref = write_cofw_v73(str(tmp_path / "COFW_train_color.mat"), "train", n=3)
    res = read_cofw(str(tmp_path), "train", "29")
    assert [s.sample_id for s in res.samples] == [f"COFW_train_color.mat#{i:04d}" for i in (1, 2, 3)]
    for i, s in enumerate(res.samples):
        phi = ref["phis"][i]
        np.testing.assert_allclose(s.landmarks[:, 0], phi[0:29] - 1)
        np.testing.assert_allclose(s.landmarks[:, 1], phi[29:58] - 1)
        np.testing.assert_array_equal(s.occluded, phi[58:87].astype(np.uint8))
        left, top, w, h = ref["boxes"][i]
        np.testing.assert_allclose(s.box, [left - 1, top - 1, left - 1 + w, top - 1 + h])
        img = ref["images"][i]
        assert s.image.shape == img.shape[:2]  # transposed back to (H, W)
        want = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(s.image, want)
    # the pupils (17, 18 1-based) give d
    assert COFW29.inter_ocular == ((16,), (17,))


def test_cofw_test_split_keys(tmp_path):
    write_cofw_v73(str(tmp_path / "COFW_test_color.mat"), "test", n=2)
    assert len(read_cofw(str(tmp_path), "test", "29").samples) == 2


def test_cofw_non_hdf5_file_is_named(tmp_path):
    (tmp_path / "COFW_train_color.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(DataError, match=r"COFW_train_color\.mat: not a MATLAB v7\.3"):
        read_cofw(str(tmp_path), "train", "29")


# ---- MTFL ---------------------------------------------------------------------------

def test_mtfl_reader_leading_spaces_backslashes_x_then_y(tmp_path):
    want = write_mtfl(str(tmp_path), n=3)
    text = (tmp_path / "training.txt").read_text()
    assert text.splitlines()[1].startswith(" lfw_5590\\")
    res = read_mtfl(str(tmp_path), "train", "5")
    assert [s.sample_id for s in res.samples] == [rel for rel, _ in want]
    for s, (rel, pts) in zip(res.samples, want):
        np.testing.assert_allclose(s.landmarks, pts)
        assert os.path.isfile(s.image_path)
        # Box rule: square, centred on the landmarks' tight box, 2.2 x its larger side.
        x1, y1, x2, y2 = s.box
        assert x2 - x1 == pytest.approx(y2 - y1)
        lo, hi = pts.min(0), pts.max(0)
        assert x2 - x1 == pytest.approx(2.2 * max(hi - lo))
        np.testing.assert_allclose([(x1 + x2) / 2, (y1 + y2) / 2], (lo + hi) / 2)
    assert len(read_mtfl(str(tmp_path), "test", "5").samples) == 3


def test_mtfl_box_contains_landmarks():
    pts = np.array([[10.0, 10], [30, 10], [20, 20], [12, 30], [28, 30]])
    x1, y1, x2, y2 = mtfl_box(pts)
    assert x1 < pts[:, 0].min() and x2 > pts[:, 0].max() and y1 < pts[:, 1].min() and y2 > pts[:, 1].max()


def test_mtfl_short_line_names_file_and_line(tmp_path):
    write_mtfl(str(tmp_path), n=2)
    with open(tmp_path / "training.txt", "a") as f:
        f.write(" lfw_5590\\Person_0000.jpg 1 2 3\n")
    with pytest.raises(DataError, match=r"training\.txt:3: expected an image path and 10 coordinates"):
        read_mtfl(str(tmp_path), "train", "5")


# ---- generic --------------------------------------------------------------------------

def test_generic_reader_left_right_top_bottom(tmp_path):
    want = write_generic(str(tmp_path), n=3)
    res = read_generic(str(tmp_path), "train", "68")
    for s, (rel, pts1, lrtb) in zip(res.samples, want):
        assert s.sample_id == rel
        np.testing.assert_allclose(s.landmarks, pts1 - 1, atol=1e-6)
        left, right, top, bottom = lrtb
        np.testing.assert_allclose(s.box, np.array([left, top, right, bottom]) - 1, atol=1e-3)


def test_generic_zero_based(tmp_path):
    want = write_generic(str(tmp_path), n=1)
    s = read_generic(str(tmp_path), "train", "68", base=0).samples[0]
    np.testing.assert_allclose(s.landmarks, want[0][1], atol=1e-6)


# ---- bad input: one message per case, naming the file ------------------------------------

def test_missing_image_file(tmp_path):
    write_300w(str(tmp_path), per_subset=2)
    os.remove(tmp_path / "afw" / "image_0001.jpg")
    with pytest.raises(DataError, match=r"afw/image_0001\.jpg: missing image file \(entry 2 of .*bounding_boxes_afw"):
        read_300w(str(tmp_path), "train", "68")


def test_300w_without_box_files_takes_the_tight_box_of_the_points(tmp_path):
    """A tree without the official bounding_boxes_*.mat: every face's box is the tight box of its 68
    points (300-W's definition of bb_ground_truth), for layout 68 and for the 5 points derived from them."""
    truth = write_300w(str(tmp_path), per_subset=3)
    shutil.rmtree(tmp_path / "Bounding Boxes")
    for layout in ("68", "5"):
        res = read_300w(str(tmp_path), "train", layout)
        assert len(res.samples) == 9 and not res.skipped
        for s in res.samples:
            pts1, _gt = truth[s.sample_id]
            np.testing.assert_allclose(s.box, np.concatenate([pts1.min(0), pts1.max(0)]) - 1, atol=1e-5)
        assert set(res.source["box_source"]) == {"afw", "helen_trainset", "lfpw_trainset"}
        assert all("tight box" in v for v in res.source["box_source"].values())
    # with the box files, the boxes are the files' (the fixture writes bb_ground_truth = the tight box too,
    # so the official files' boxes and the derived ones agree to the file's precision)
    truth = write_300w(str(tmp_path / "official"), per_subset=1)
    res = read_300w(str(tmp_path / "official"), "train", "68")
    assert all(v.endswith(".mat") for v in res.source["box_source"].values())


def test_300w_partial_tree_counts_and_records_its_subsets(tmp_path):
    write_300w(str(tmp_path), per_subset=2)
    shutil.rmtree(tmp_path / "Bounding Boxes")
    shutil.rmtree(tmp_path / "lfpw")
    shutil.rmtree(tmp_path / "ibug")
    train = read_300w(str(tmp_path), "train", "68")
    assert len(train.samples) == 4  # afw 2 + helen train 2
    assert train.source["subsets"] == ["afw", "helen_trainset"] and train.source["absent"] == ["lfpw_trainset"]
    common = read_300w(str(tmp_path), "common", "68")
    assert [s.sample_id.split("/image")[0] for s in common.samples] == ["helen/testset"] * 2
    assert common.source["absent"] == ["lfpw_testset"]
    with pytest.raises(DataError, match=r"split 'challenging' has none of its subsets here \(looked for .*ibug\)"):
        read_300w(str(tmp_path), "challenging", "68")


def test_300w_box_file_without_its_pictures_is_named(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    shutil.rmtree(tmp_path / "ibug")
    with pytest.raises(DataError, match=r"ibug: missing picture folder of subset ibug \(its box file is "
                                        r".*bounding_boxes_ibug\.mat\)"):
        read_300w(str(tmp_path), "challenging", "68")


def test_unreadable_image(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    (tmp_path / "ibug" / "image_0000.jpg").write_bytes(b"this is not a jpeg")
    s = read_300w(str(tmp_path), "challenging", "68").samples[0]
    with pytest.raises(DataError, match=r"ibug/image_0000\.jpg: unreadable image"):
        load_image(s)


def test_pts_with_wrong_point_count(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    pts = read_pts(str(tmp_path / "ibug" / "image_0000.pts"))
    write_pts_crlf(str(tmp_path / "ibug" / "image_0000.pts"), pts[:67])
    with pytest.raises(DataError, match=r"ibug/image_0000\.pts: has 67 points, expected 68"):
        read_300w(str(tmp_path), "challenging", "68")


def test_pts_header_disagrees_with_body(tmp_path):
    write_pts_crlf(str(tmp_path / "x.pts"), np.zeros((5, 2)), n_declared=6)
    with pytest.raises(DataError, match=r"x\.pts: n_points says 6 but 5 points follow"):
        read_pts(str(tmp_path / "x.pts"))


def test_pts_bad_number_names_line(tmp_path):
    (tmp_path / "y.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3 four\n}\n")
    with pytest.raises(DataError, match=r"y\.pts:5: expected two numbers"):
        read_pts(str(tmp_path / "y.pts"))


def test_nan_landmark(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    pts = read_pts(str(tmp_path / "ibug" / "image_0000.pts"))
    pts[4, 1] = np.nan
    write_pts_crlf(str(tmp_path / "ibug" / "image_0000.pts"), pts)
    with pytest.raises(DataError, match=r"ibug/image_0000\.pts: landmark 5 is not a finite number"):
        read_300w(str(tmp_path), "challenging", "68")


def test_out_of_image_landmark(tmp_path):
    write_300w(str(tmp_path), per_subset=1)
    pts = read_pts(str(tmp_path / "ibug" / "image_0000.pts"))
    pts[9] = [500.0, 40.0]
    write_pts_crlf(str(tmp_path / "ibug" / "image_0000.pts"), pts)
    s = read_300w(str(tmp_path), "challenging", "68").samples[0]
    with pytest.raises(DataError, match=r"ibug/image_0000\.jpg: landmark 10 at \(499\.00, 39\.00\) lies outside "
                                        r"the 96x80 image"):
        check_in_image(s, load_image(s))


def test_degenerate_box(tmp_path):
    write_generic(str(tmp_path), n=2)
    lines = (tmp_path / "train_boxes.txt").read_text().splitlines()
    lines[1] = "30 30 10 50"  # left == right
    (tmp_path / "train_boxes.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_boxes\.txt:2: empty or degenerate face box"):
        read_generic(str(tmp_path), "train", "68")


def test_skip_bad_lists_each_skipped_sample_with_its_reason(tmp_path):
    write_300w(str(tmp_path), per_subset=2)
    os.remove(tmp_path / "afw" / "image_0001.jpg")
    pts = read_pts(str(tmp_path / "helen" / "trainset" / "image_0000.pts"))
    write_pts_crlf(str(tmp_path / "helen" / "trainset" / "image_0000.pts"), pts[:10])
    res = read_300w(str(tmp_path), "train", "68", skip_bad=True)
    assert len(res.samples) == 4
    assert [s["id"] for s in res.skipped] == ["afw/image_0001.jpg", "helen/trainset/image_0000.jpg"]
    assert "missing image file" in res.skipped[0]["reason"]
    assert "has 10 points, expected 68" in res.skipped[1]["reason"]
