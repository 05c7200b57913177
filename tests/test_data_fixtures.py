"""The dataset fixtures of fixtures_data.py look like the real files."""

from __future__ import annotations

import h5py
import scipy.io

# The writers lived here before fixtures_data.py; test_data_readers.py still imports them from here.
from fixtures_data import write_300w, write_cofw_v73


def test_300w_fixture_has_the_official_nesting(tmp_path):
    write_300w(str(tmp_path), per_subset=2)
    mat = scipy.io.loadmat(str(tmp_path / "Bounding Boxes" / "bounding_boxes_ibug.mat"))
    name, det, gt = mat["bounding_boxes"][0][1][0][0]
    assert name[0] == "image_0001.jpg"
    assert det.shape == (1, 4) and gt.shape == (1, 4)
    raw = (tmp_path / "ibug" / "image_0001.pts").read_bytes()
    assert b"\r\n" in raw and b"\r\n\r\n" in raw


def test_cofw_fixture_is_a_v73_mat_file(tmp_path):
    path = str(tmp_path / "COFW_train_color.mat")
    ref = write_cofw_v73(path, "train", n=2)
    assert open(path, "rb").read(10) == b"MATLAB 7.3"
    with h5py.File(path, "r") as f:
        assert f["phisTr"].shape == (87, 2) and f["bboxesTr"].shape == (4, 2)
        first = f[f["IsTr"][0, 0]]
        assert first.shape == ref["images"][0].T.shape  # (3, W, H)
    try:
        scipy.io.loadmat(path)
        raise AssertionError("scipy.io.loadmat must not read a v7.3 file")
    except NotImplementedError:
        pass
