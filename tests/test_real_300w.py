"""Real 68-point faces (the part of 300-W in the shared data: AFW and HELEN train for training, HELEN
test for testing): the 300-W reader on a tree without the official box files and with subsets absent.

The data are read from MCL_DATA (default ../shared/data beside the checkout). Where the folder is
missing these tests skip and say why; under CI=true a missing folder fails them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from mcl.data.readers import DataError, read_300w

DATA = Path(os.environ.get("MCL_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def w300() -> Path:
    if not (DATA / "300w" / "helen" / "testset").is_dir():
        why = f"real 300-W data not found at {DATA}/300w (set MCL_DATA to the folder holding 300w/)"
        if os.environ.get("CI") == "true":
            pytest.fail(why + "; CI must have it")
        pytest.skip(why)
    return DATA / "300w"


def pts_numbers(path: Path) -> np.ndarray:
    """The 68 coordinate lines of a .pts file, parsed here (not by the reader under test)."""
    rows = [line.split() for line in path.read_text().splitlines()]
    rows = [r for r in rows if len(r) == 2 and r[0][0] in "-.0123456789"]
    return np.asarray(rows, dtype=np.float64)


def test_300w_reader_takes_the_tree_without_box_files(w300):
    train = read_300w(str(w300), "train", "68")
    test = read_300w(str(w300), "common", "68")
    assert (len(train.samples), len(test.samples)) == (337 + 870, 330)
    assert not train.skipped and not test.skipped
    assert train.source["subsets"] == ["afw", "helen_trainset"] and train.source["absent"] == ["lfpw_trainset"]
    assert test.source["subsets"] == ["helen_testset"] and test.source["absent"] == ["lfpw_testset"]
    assert set(test.source["box_source"]) == {"helen_testset"}
    # the derived boxes are the tight box of the points (0-based), and equal the generic lists' boxes,
    # made independently for the shared data (`left right top bottom`, 1-based)
    lines = (w300 / "test_boxes.txt").read_text().split("\n")
    names = (w300 / "test_images.txt").read_text().split("\n")
    listed = {n.strip(): [float(v) for v in b.split()] for n, b in zip(names, lines) if n.strip()}
    for s in test.samples[::7]:
        pts1 = pts_numbers(Path(s.image_path).with_suffix(".pts"))
        np.testing.assert_allclose(s.box, np.r_[pts1.min(0), pts1.max(0)] - 1, atol=1e-9)
        np.testing.assert_allclose(s.landmarks, pts1 - 1, atol=1e-9)
        left, right, top, bottom = listed[s.sample_id]
        np.testing.assert_allclose(s.box, np.array([left, top, right, bottom]) - 1, atol=1e-5)
    with pytest.raises(DataError, match=r"split 'challenging' has none of its subsets here .*ibug"):
        read_300w(str(w300), "challenging", "68")
