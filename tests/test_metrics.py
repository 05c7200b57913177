"""The metrics of METHOD §7 against values computed by hand, the layouts' mirror tables and
inter-ocular rules against the datasets' own documentation, and the test-crop protocols'
geometry (perfect predictions mapped back from either protocol's crops score zero)."""

from __future__ import annotations

import numpy as np
import pytest

from mcl.data.augment import crop_face
from mcl.data.readers import Sample
from mcl.evaluation.evaluate import auc, ced, landmark_errors, metrics, score, to_image
from mcl.method.layouts import get_layout


def faces_5(shifts, d=50.0):
    """5-point faces, eye centres d apart, each face's landmarks all moved by its (dx, dy)."""
    gt = np.array([[100.0, 100.0], [100.0 + d, 100.0], [125.0, 130.0], [105.0, 150.0], [145.0, 150.0]])
    gt = np.repeat(gt[None], len(shifts), axis=0)
    pred = gt + np.asarray(shifts, dtype=np.float64)[:, None, :]
    return pred, gt


# ---- normalisation and failures ----------------------------------------------------------

def test_inter_ocular_normalisation_by_hand():
    layout = get_layout(5)
    pred, gt = faces_5([(3.0, 4.0), (0.0, 1.0)])  # every landmark off by 5 px, then by 1 px
    d = layout.inter_ocular_distance(gt)
    assert d.tolist() == [50.0, 50.0]  # eye centres (1-based 1 and 2) 50 px apart
    e = landmark_errors(pred, gt, d)
    np.testing.assert_allclose(e, [[0.1] * 5, [0.02] * 5])
    m = metrics(e, layout)
    assert m["mean_error"] == pytest.approx((0.1 + 0.02) / 2)
    assert m["faces"] == 2


def test_a_face_exactly_at_ten_percent_is_not_a_failure_and_just_above_is():
    layout = get_layout(5)
    pred, gt = faces_5([(3.0, 4.0), (3.0, 4.0 + 1e-6), (0.0, 4.5)])  # 10%, just above, 9%
    e = landmark_errors(pred, gt, layout.inter_ocular_distance(gt))
    face = e.mean(axis=1)
    assert face[0] == 0.1 and face[1] > 0.1
    m = metrics(e, layout)
    assert m["failure_rate"]["0.10"] == pytest.approx(1 / 3)  # only the face just above 10%
    assert m["failure_rate"]["0.08"] == pytest.approx(3 / 3)  # all three are above 8%


def test_a_face_whose_error_is_not_finite_is_a_failure():
    """A diverged model predicts NaN: its faces fail at every threshold and never reach the CED."""
    layout = get_layout(5)
    errors = np.array([[0.02] * 5, [np.nan] * 5, [np.inf] * 5, [0.5] * 5])
    m = metrics(errors, layout)
    assert m["failure_rate"]["0.10"] == pytest.approx(3 / 4)
    assert m["failure_rate"]["0.08"] == pytest.approx(3 / 4)
    assert m["auc"]["0.10"] == pytest.approx(auc(np.array([0.02, 9, 9, 9]), 0.10))


def test_outer_corner_normalisation_68_points():
    layout = get_layout(68)
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 200, (1, 68, 2))
    gt[0, 36] = [50.0, 80.0]  # 1-based 37: outer corner of the image-left eye
    gt[0, 45] = [130.0, 20.0]  # 1-based 46: outer corner of the image-right eye (80 x 60 -> 100 px)
    pred = gt.copy()
    pred[0, 0] += [6.0, 8.0]  # one landmark off by 10 px
    res = score(pred, {"landmarks_image": gt, "iod_image": layout.inter_ocular_distance(gt)}, layout)
    assert res["outer_corners"]["mean_error"] == pytest.approx(10.0 / 100.0 / 68)
    left, right = gt[0, 36:42].mean(axis=0), gt[0, 42:48].mean(axis=0)  # 1-based 37-42 and 43-48
    assert res["inter_ocular"]["mean_error"] == pytest.approx(10.0 / np.hypot(*(left - right)) / 68)


def test_outer_corner_normalisation_29_points():
    layout = get_layout(29)
    gt = np.zeros((1, 29, 2))
    gt[0, :, 0] = np.arange(29) * 3.0
    gt[0, 8] = [10.0, 10.0]  # 1-based 9 and 10: outer eye corners, 40 px apart
    gt[0, 9] = [50.0, 10.0]
    gt[0, 16] = [20.0, 12.0]  # 1-based 17 and 18: pupils, 25 px apart
    gt[0, 17] = [45.0, 12.0]
    pred = gt + np.array([0.0, 2.0])  # every landmark 2 px off
    res = score(pred, {"landmarks_image": gt, "iod_image": layout.inter_ocular_distance(gt)}, layout)
    assert res["inter_ocular"]["mean_error"] == pytest.approx(2.0 / 25.0)
    assert res["outer_corners"]["mean_error"] == pytest.approx(2.0 / 40.0)


# ---- AUC and CED --------------------------------------------------------------------------------

def test_auc_against_a_trapezoid_computed_by_hand():
    errors = np.array([0.01, 0.03, 0.05, 0.09, 0.2])
    for limit in (0.08, 0.10):
        steps = 1000
        total = 0.0
        for k in range(steps):  # the trapezoid rule over the CED, written out
            x0, x1 = limit * k / steps, limit * (k + 1) / steps
            y0 = sum(e <= x0 for e in errors) / len(errors)
            y1 = sum(e <= x1 for e in errors) / len(errors)
            total += (x1 - x0) * (y0 + y1) / 2
        assert auc(errors, limit) == pytest.approx(total / limit, abs=1e-12)
    # and against the exact area under the step function, sum over faces of (limit - e) / limit / N:
    # the trapezoid rule misses at most half a grid cell per face below the limit, 1 / (2 x 1000 x 5).
    half_cell = 1 / (2 * 1000 * 5)
    assert abs(auc(errors, 0.08) - (0.07 + 0.05 + 0.03) / 0.08 / 5) <= 3 * half_cell * (1 + 1e-9)
    assert abs(auc(errors, 0.10) - (0.09 + 0.07 + 0.05 + 0.01) / 0.10 / 5) <= 4 * half_cell * (1 + 1e-9)


def test_ced_is_monotone_and_ends_at_the_share_within_the_limit():
    errors = np.random.default_rng(3).gamma(2.0, 0.03, 200)
    x, y = ced(errors, 0.15)
    assert x[0] == 0.0 and x[-1] == pytest.approx(0.15)
    assert np.all(np.diff(y) >= 0)
    assert y[-1] == pytest.approx((errors <= 0.15).mean())
    assert y[0] == 0.0


def test_per_cluster_means_5_points():
    layout = get_layout(5)
    e = np.array([[0.01, 0.02, 0.03, 0.04, 0.06],
                  [0.03, 0.04, 0.05, 0.06, 0.10]])
    m = metrics(e, layout)
    # METHOD §8.1 clusters (1-based): {1} left eye, {2} right eye, {3} nose, {4, 5} mouth
    assert m["per_cluster"] == pytest.approx({"left_eye": 0.02, "right_eye": 0.03, "nose": 0.04,
                                              "mouth": (0.04 + 0.06 + 0.06 + 0.10) / 4})
    assert m["per_landmark"] == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.08])


# ---- the layouts' tables, from the datasets' documentation (1-based) ------------------------------

# 300-W 68-point markup (ibug): jaw 1-17, brows 18-22 / 23-27, nose bridge 28-31, nostrils 32-36,
# eyes 37-42 / 43-48, outer lip 49-60, inner lip 61-68; pairs mirror image left and right.
IBUG_PAIRS_1 = [(1, 17), (2, 16), (3, 15), (4, 14), (5, 13), (6, 12), (7, 11), (8, 10),
                (18, 27), (19, 26), (20, 25), (21, 24), (22, 23),
                (32, 36), (33, 35),
                (37, 46), (38, 45), (39, 44), (40, 43), (41, 48), (42, 47),
                (49, 55), (50, 54), (51, 53), (56, 60), (57, 59),
                (61, 65), (62, 64), (66, 68)]
IBUG_SELF_1 = [9, 28, 29, 30, 31, 34, 52, 58, 63, 67]
# COFW (METHOD §11.2, there 0-based): (0,1) (2,3) (4,6) (5,7) (8,9) (10,11) (12,14) (13,15) (16,17) (18,19) (22,23)
COFW_PAIRS_1 = [(1, 2), (3, 4), (5, 7), (6, 8), (9, 10), (11, 12), (13, 15), (14, 16), (17, 18), (19, 20), (23, 24)]
COFW_SELF_1 = [21, 22, 25, 26, 27, 28, 29]
# MTFL: left eye, right eye, nose, left mouth corner, right mouth corner
AFLW_PAIRS_1 = [(1, 2), (4, 5)]
AFLW_SELF_1 = [3]


@pytest.mark.parametrize("name,pairs,alone", [("68", IBUG_PAIRS_1, IBUG_SELF_1), ("29", COFW_PAIRS_1, COFW_SELF_1),
                                              ("5", AFLW_PAIRS_1, AFLW_SELF_1)])
def test_mirror_tables_match_the_datasets_documentation(name, pairs, alone):
    layout = get_layout(name)
    covered = sorted([a for a, _ in pairs] + [b for _, b in pairs] + alone)
    assert covered == list(range(1, layout.n_points + 1))  # the literal lists cover every point once
    mirror_1 = {j + 1: layout.mirror[j] + 1 for j in range(layout.n_points)}
    for a, b in pairs:
        assert (mirror_1[a], mirror_1[b]) == (b, a), (a, b)
    for a in alone:
        assert mirror_1[a] == a, a


@pytest.mark.parametrize("name,left,right,outer", [
    ("5", [1], [2], None),  # the eye centres
    ("29", [17], [18], (9, 10)),  # the pupils; outer eye corners 9, 10
    ("68", [37, 38, 39, 40, 41, 42], [43, 44, 45, 46, 47, 48], (37, 46)),  # eye centres; 0-based 36, 45
])
def test_inter_ocular_rules_match_spec_7(name, left, right, outer):
    layout = get_layout(name)
    assert [sorted(j + 1 for j in g) for g in layout.inter_ocular] == [left, right]
    assert (None if layout.outer_corners is None else tuple(j + 1 for j in layout.outer_corners)) == outer
    pts = np.random.default_rng(1).uniform(0, 100, (layout.n_points, 2))
    a = pts[[j - 1 for j in left]].mean(axis=0)
    b = pts[[j - 1 for j in right]].mean(axis=0)
    assert layout.inter_ocular_distance(pts) == pytest.approx(np.hypot(*(a - b)))


@pytest.mark.parametrize("name,clusters", [
    ("5", {"left_eye": [1], "right_eye": [2], "nose": [3], "mouth": [4, 5]}),
    ("68", {"left_eye": [18, 19, 20, 21, 22, 37, 38, 39, 40, 41, 42],
            "right_eye": [23, 24, 25, 26, 27, 43, 44, 45, 46, 47, 48],
            "nose": list(range(28, 37)), "mouth": list(range(49, 69)),
            "left_contour": [1, 2, 3, 4, 5, 6], "chin": [7, 8, 9, 10, 11],
            "right_contour": [12, 13, 14, 15, 16, 17]}),
    ("29", {"left_eye": [1, 3, 5, 6, 9, 11, 13, 14, 17], "right_eye": [2, 4, 7, 8, 10, 12, 15, 16, 18],
            "nose": [19, 20, 21, 22], "mouth": [23, 24, 25, 26, 27, 28], "chin": [29]}),
])
def test_clusters_match_spec_8(name, clusters):
    layout = get_layout(name)
    assert {c: sorted(j + 1 for j in idx) for c, idx in layout.clusters} == clusters


# ---- crops mapped back: both test-crop protocols ------------------------------------------------------

def _picture_and_face(box):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pts = np.stack([rng.uniform(x1, x2, 5), rng.uniform(y1, y2, 5)], axis=1)
    pts[0], pts[1] = [x1 + 5, y1 + 8], [x2 - 5, y1 + 8]  # distinct eyes: d > 0
    return image, Sample("face.png", "5", pts, np.asarray(box, dtype=np.float64))


@pytest.mark.parametrize("protocol", ["ours", "authors"])
def test_perfect_predictions_mapped_back_score_zero(protocol):
    layout = get_layout(5)
    image, sample = _picture_and_face([30.0, 20.0, 90.0, 70.0])
    cs = crop_face(image, sample, layout, 1.25, protocol)
    perfect = cs.landmarks.reshape(1, -1)  # what a perfect net outputs: the crop coordinates
    back = to_image(perfect, cs.crop_to_image)
    np.testing.assert_allclose(back[0], sample.landmarks, atol=1e-9)
    res = score(back, {"landmarks_image": cs.landmarks_image, "iod_image": cs.iod_image}, layout)
    assert res["inter_ocular"]["mean_error"] == pytest.approx(0.0, abs=1e-10)


def test_the_authors_crop_geometry():
    layout = get_layout(5)
    box = [120.0, 60.0, 180.0, 100.0]  # 60 x 40, centre (150, 80); reaches past the picture's right edge
    image, sample = _picture_and_face(box)
    cs = crop_face(image, sample, layout, 1.25, "authors")
    A = np.linalg.inv(np.vstack([cs.crop_to_image[0], [0, 0, 1]]))[:2]  # picture -> crop
    side = 1.1 * 60.0  # 1.1 x max(w, h)
    centre = np.array([150.0, 80.0, 1.0])
    np.testing.assert_allclose(A @ centre, [24.5, 24.5])  # box centre -> patch centre
    np.testing.assert_allclose(A @ (centre + [side / 2, side / 2, 0]), [24.5 + 24.5, 24.5 + 24.5])  # scale 49/side
    np.testing.assert_allclose(A[:, :2], np.eye(2) * 49.0 / side)
    # Outside the 160-pixel-wide picture the authors' crop is gray 128.
    x_out = int(np.ceil(A[0] @ [160.5, 80.0, 1.0])) + 1
    assert x_out < 40 and np.all(cs.images[0][:, x_out:] == 128)
    ours = crop_face(image, sample, layout, 1.25, "ours")
    B = np.linalg.inv(np.vstack([ours.crop_to_image[0], [0, 0, 1]]))[:2]
    np.testing.assert_allclose(B[:, :2], np.eye(2) * 50.0 / (1.25 * 60.0))  # ours: side -> 50 pixels
    assert not np.all(ours.images[0][:, x_out:] == 128)  # ours repeats the edge pixels instead
