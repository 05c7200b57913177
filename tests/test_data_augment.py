"""Augmentation (METHOD §6) and the synthetic set: flips, crop geometry, seeding."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import scipy.io

from mcl.data.augment import (
    CROP,
    AugmentSettings,
    CropJob,
    apply_affine,
    augment_face,
    box_crop_affine,
    crop_face,
    crop_samples,
    face_rng,
    flip_image,
    flip_points,
    train_crop_ratio,
)
from mcl.data.pool import SharedArrays, chunked, parallel_map, shared_arrays
from mcl.data.readers import Sample, read_300w
from mcl.data.synth import TEMPLATE, generate_face, write_synth_300w
from mcl.method.layouts import AFLW5, IBUG68, LAYOUTS

FIVE = np.array([[70.0, 80.0], [130.0, 78.0], [101.0, 112.0], [78.0, 140.0], [124.0, 142.0]])


def dots_image(points, values, size=200, radius=6):
    img = np.zeros((size, size), np.uint8)
    for (x, y), v in zip(points, values):
        cv2.circle(img, (int(round(x)), int(round(y))), radius, int(v), -1)
    return img


def five_point_sample(values=(250, 120, 180, 90, 60)):
    box = np.concatenate([FIVE.min(0), FIVE.max(0)])
    return Sample("dots", "5", FIVE.copy(), box, None, image=dots_image(FIVE, values))


def bilinear(img, x, y):
    return cv2.getRectSubPix(img.astype(np.float32), (1, 1), (float(x), float(y)))[0, 0]


# ---- flips ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_flipping_twice_is_the_identity(name):
    layout = LAYOUTS[name]
    pts = np.random.default_rng(0).uniform(0, 49, (layout.n_points, 2))
    np.testing.assert_allclose(flip_points(flip_points(pts, layout), layout), pts, rtol=0, atol=1e-12)
    img = np.random.default_rng(1).integers(0, 256, (CROP, CROP), dtype=np.uint8)
    np.testing.assert_array_equal(flip_image(flip_image(img)), img)
    assert not np.array_equal(flip_image(img), img)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_flipped_points_land_on_mirrored_positions_with_swapped_indices(name):
    layout = LAYOUTS[name]
    pts = np.random.default_rng(2).uniform(0, 49, (layout.n_points, 2))
    flipped = flip_points(pts, layout)
    for i, j in enumerate(layout.mirror):
        np.testing.assert_allclose(flipped[j], [CROP - 1 - pts[i, 0], pts[i, 1]])


def test_flipped_crop_keeps_left_eye_on_the_image_left():
    # Left eye drawn bright (250), right eye dim (120). After a flip the crop's
    # landmark 0 (left eye = image left) must sit on the dim blob and stay left of 1.
    sample = five_point_sample()
    ratio = 2.0
    for flip, want_left in ((0.0, 250), (1.0, 120)):
        st = AugmentSettings(copies=1, angles=(0.0,), extents=(1.0,), shift=0.0, flip_prob=flip,
                             jpeg_quality=(100, 100))
        crops = augment_face(sample.image, sample, AFLW5, st, ratio, face_rng(0, 1, 0))
        lm, img = crops.landmarks[0], crops.images[0]
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert abs(bilinear(img, *lm[0]) - want_left) < 12
        if flip:
            np.testing.assert_array_equal(crops.landmarks_image[0], FIVE[list(AFLW5.mirror)])
            plain = augment_face(sample.image, sample, AFLW5, AugmentSettings(
                copies=1, angles=(0.0,), extents=(1.0,), shift=0.0, flip_prob=0.0, jpeg_quality=(100, 100)),
                ratio, face_rng(0, 1, 0))
            # the picture is the mirror image (JPEG at 100 leaves at most small differences)
            assert np.abs(flip_image(plain.images[0]).astype(int) - img).mean() < 1.0


# ---- crop geometry --------------------------------------------------------------------

def test_landmarks_follow_the_pixels_through_all_five_steps():
    values = (250, 240, 230, 220, 210)
    sample = five_point_sample(values)
    st = AugmentSettings(copies=40, jpeg_quality=(60, 95))
    crops = augment_face(sample.image, sample, AFLW5, st, 2.0, face_rng(3, 1, 7))
    assert len(crops) == 40
    for img, lm in zip(crops.images, crops.landmarks):
        assert all(bilinear(img, x, y) > 120 for x, y in lm)  # every landmark on its dot
        assert lm.min() > -0.5 and lm.max() < CROP - 0.5


def test_mapping_crop_coordinates_back_reproduces_the_original_landmarks():
    img, pts, occ = generate_face(face_rng(5, 2, 0))
    box = np.concatenate([pts.min(0), pts.max(0)])
    sample = Sample("s", "68", pts, box, occ, image=img)
    crops = augment_face(img, sample, IBUG68, AugmentSettings(copies=30), 1.25, face_rng(5, 1, 0))
    back = apply_affine(crops.crop_to_image, crops.landmarks)
    assert np.abs(back - crops.landmarks_image).max() < 1e-3
    mirror = list(IBUG68.mirror)
    flipped = [i for i in range(30) if not np.allclose(crops.landmarks_image[i], pts)]
    assert 5 < len(flipped) < 25  # flip_prob 0.5
    for i in range(30):
        want = pts[mirror] if i in flipped else pts
        np.testing.assert_array_equal(crops.landmarks_image[i], want)
        np.testing.assert_array_equal(crops.occluded[i], occ[mirror] if i in flipped else occ)
    # d is a distance: the crop's is the image's times the crop scale
    scale = np.linalg.norm(np.linalg.inv(crops.crop_to_image[:, :, :2]), axis=1)[:, 0]
    np.testing.assert_allclose(crops.iod, crops.iod_image * scale, rtol=1e-9)
    np.testing.assert_allclose(crops.iod_image, IBUG68.inter_ocular_distance(pts))


def test_box_crop_centres_the_box_and_keeps_the_mapping():
    box = np.array([30.0, 40.0, 110.0, 100.0])
    A = box_crop_affine(box, 1.25)
    np.testing.assert_allclose(apply_affine(A, np.array([[70.0, 70.0]])), [[24.5, 24.5]])
    assert A[0, 0] == pytest.approx(CROP / (80 * 1.25))
    img, pts, occ = generate_face(face_rng(6, 2, 0))
    sample = Sample("t", "68", pts, np.concatenate([pts.min(0), pts.max(0)]), occ, image=img)
    crops = crop_face(img, sample, IBUG68, 1.25)
    np.testing.assert_array_equal(crops.landmarks_image[0], pts)
    assert np.abs(apply_affine(crops.crop_to_image, crops.landmarks) - pts).max() < 1e-3


def test_large_pictures_are_shrunk_before_warping_and_keep_exact_geometry():
    # A face 8x larger than the crop takes the area-averaging path; geometry stays exact.
    big = cv2.resize(five_point_sample((250, 240, 230, 220, 210)).image, (1600, 1600),
                     interpolation=cv2.INTER_NEAREST)
    pts = (FIVE + 0.5) * 8 - 0.5
    sample = Sample("big", "5", pts, np.concatenate([pts.min(0), pts.max(0)]), None, image=big)
    crops = augment_face(big, sample, AFLW5, AugmentSettings(copies=8, jpeg_quality=(95, 95)), 2.0, face_rng(0, 1, 1))
    assert np.abs(apply_affine(crops.crop_to_image, crops.landmarks) - crops.landmarks_image).max() < 1e-3
    for img, lm in zip(crops.images, crops.landmarks):
        assert all(bilinear(img, x, y) > 120 for x, y in lm)


def test_train_crop_ratio_matches_box_crops():
    img, pts, occ = generate_face(face_rng(7, 2, 0))
    box = np.concatenate([pts.min(0), pts.max(0)]) + [-10, -10, 10, 10]
    sample = Sample("r", "68", pts, box, occ, image=img)
    ratio = train_crop_ratio([sample], 1.2)
    st = AugmentSettings(copies=1, angles=(0.0,), extents=(1.0,), shift=0.0, flip_prob=0.0)
    aug = augment_face(img, sample, IBUG68, st, ratio, face_rng(0, 1, 0))
    test = crop_face(img, sample, IBUG68, 1.2)
    # same framing: same scale (the centre differs only by box vs tight-box centre)
    assert aug.iod[0] == pytest.approx(test.iod[0], rel=1e-9)


# ---- seeding and workers ----------------------------------------------------------------

def test_same_seed_gives_the_same_crops_with_1_and_2_workers():
    samples = []
    for i in range(10):
        img, pts, occ = generate_face(face_rng(11, 2, i))
        samples.append((i, Sample(f"f{i}", "68", pts, np.concatenate([pts.min(0), pts.max(0)]), occ, image=img)))
    job = CropJob(layout=IBUG68, seed=11, augment=AugmentSettings(copies=4), ratio=1.25)
    a, _ = crop_samples(samples, job, workers=1)
    b, _ = crop_samples(samples, job, workers=2)
    c, _ = crop_samples(samples[3:], job, workers=2)  # a face's crops do not depend on its neighbours
    assert len(a) == 40 and a.sample_id == b.sample_id
    for name in ("images", "landmarks", "crop_to_image", "occluded"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.images[12:], c.images)
    other, _ = crop_samples(samples, CropJob(layout=IBUG68, seed=12, augment=AugmentSettings(copies=4), ratio=1.25))
    assert not np.array_equal(a.landmarks, other.landmarks)


def test_a_one_worker_map_lends_its_shared_arrays_to_its_tasks_while_it_runs():
    shared = SharedArrays({"x": ((4,), "int64")})

    def square(i):
        shared_arrays()["x"][i] = i * i
        return i

    try:
        assert list(parallel_map(square, [0, 1, 2, 3], 1, shared)) == [0, 1, 2, 3]
    finally:
        shared.close()
    assert shared.arrays["x"].tolist() == [0, 1, 4, 9]
    with pytest.raises(RuntimeError, match="no shared arrays"):
        shared_arrays()
    assert [len(c) for c in chunked(list(range(100)), 2)] == [4] * 25


def test_augment_settings_are_checked():
    with pytest.raises(ValueError, match="JPEG quality"):
        AugmentSettings(jpeg_quality=(50, 120))
    with pytest.raises(ValueError, match="copies"):
        AugmentSettings(copies=0)


# ---- the synthetic set -------------------------------------------------------------------

def test_template_follows_the_mirror_table():
    mirror = list(IBUG68.mirror)
    np.testing.assert_allclose(TEMPLATE[mirror] * [-1, 1, 1], TEMPLATE, atol=1e-12)
    d = np.linalg.norm(TEMPLATE[:, None, :2] - TEMPLATE[None, :, :2], axis=-1) + np.eye(68)
    assert d.min() > 0.01  # 68 distinct points
    left = IBUG68.cluster("left_eye")
    assert (TEMPLATE[list(left), 0] < 0).all()  # "left" is image left


def test_synthetic_faces_are_seeded_and_varied():
    a = generate_face(face_rng(0, 2, 3))
    b = generate_face(face_rng(0, 2, 3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    faces = [generate_face(face_rng(0, 2, i)) for i in range(30)]
    pts = np.stack([f[1] for f in faces])
    assert (pts >= 0).all() and (pts <= 159).all()
    occluded = np.stack([f[2] for f in faces])
    assert 0 < occluded.any(axis=1).sum() < 30  # some faces occluded, not all
    iod = IBUG68.inter_ocular_distance(pts)
    assert iod.max() / iod.min() > 1.3  # scale varies
    roll = np.degrees(np.arctan2(*(pts[:, 45] - pts[:, 36])[:, ::-1].T))
    assert roll.std() > 5  # in-plane rotation varies


def test_synthetic_faces_are_drawn_where_the_landmarks_are():
    # Brows and lips darker than the cheek; the jaw edge strong on some faces and weak on
    # others (the hard landmarks the loss weighting should find).
    lips, brows, jaw = [], [], []
    for i in range(60):
        img, pts, occ = generate_face(face_rng(21, 2, i))
        if occ.any():
            continue
        cheek = bilinear(img, *(pts[3] * 0.6 + pts[30] * 0.4))
        lips.append(cheek - bilinear(img, *pts[48:60].mean(0)))
        brows.append(cheek - np.mean([bilinear(img, *p) for p in pts[18:21]]))
        out = (pts[4] - pts[27:36].mean(0)) / np.linalg.norm(pts[4] - pts[27:36].mean(0))
        jaw.append(abs(bilinear(img, *(pts[4] - 3 * out)) - bilinear(img, *(pts[4] + 3 * out))))
    assert len(lips) > 25
    assert np.mean(np.array(lips) > 10) > 0.75 and np.mean(np.array(brows) > 20) > 0.9
    assert np.min(jaw) < 12 and np.max(jaw) > 40


def test_synthetic_set_round_trips_through_the_300w_reader(tmp_path):
    root = str(tmp_path / "raw")
    write_synth_300w(root, n_train=6, n_test=3, seed=9, workers=1)
    mat = scipy.io.loadmat(os.path.join(root, "Bounding Boxes", "bounding_boxes_ibug.mat"))
    name, det, gt = mat["bounding_boxes"][0][2][0][0]
    assert name[0] == "synth_00008.png" and det.shape == (1, 4) and gt.shape == (1, 4)
    train = read_300w(root, "train", "68").samples
    test = read_300w(root, "challenging", "68").samples
    assert len(train) == 6 and len(test) == 3
    assert [s.sample_id.split("/")[0] for s in train] == ["afw", "afw", "helen", "helen", "lfpw", "lfpw"]
    for i, s in enumerate(train + test):
        img, pts, occ = generate_face(face_rng(9, 2, i))
        np.testing.assert_allclose(s.landmarks, pts, atol=1e-6)
        np.testing.assert_array_equal(s.occluded, occ)
        np.testing.assert_array_equal(cv2.imread(s.image_path, cv2.IMREAD_GRAYSCALE), img)
        np.testing.assert_allclose(s.box, np.concatenate([pts.min(0), pts.max(0)]), atol=1e-6)
    five = read_300w(root, "train", "5").samples[0]
    assert five.landmarks.shape == (5, 2) and five.occluded.shape == (5,)


def test_synthetic_bytes_do_not_depend_on_workers(tmp_path):
    for w in (1, 2):
        write_synth_300w(str(tmp_path / f"w{w}"), n_train=6, n_test=2, seed=4, workers=w)
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "w1")
                   for d, _, fs in os.walk(tmp_path / "w1") for f in fs)
    assert len(files) == 8 * 3 + 4 + 1
    for rel in files:
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel
