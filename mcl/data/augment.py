"""Face crops: the paper's five-step augmentation for training, box crops for val/test.

METHOD §6, in order: (1) in-plane rotations of the face and its landmarks; (2) a tight
box around the rotated landmarks; (3) uniform scaling and translation of that box,
several extents; (4) crop to 50 x 50 gray, horizontal flip with the layout's mirror
permutation; (5) JPEG re-compression at a random quality.

Steps 1-4 are one similarity transform, so every crop is a single `cv2.warpAffine`
from the source picture straight to 50 x 50 (the flip folded into the matrix), and
the 2 x 3 matrix that maps crop coordinates back to the picture (`crop_to_image`) is
kept for the metrics (METHOD §1: errors in original-image coordinates).

Coordinates are 0-based pixel centres. A crop of side `s` centred at `c` covers
[c - s/2, c + s/2], mapped onto crop pixels -0.5 .. 49.5, so crop x = 50/s (x - c) + 24.5.

Randomness: one generator per face, seeded from (seed, AUGMENT_STREAM, face index),
so the output does not depend on how faces are shared among worker processes (those
and the shared memory they write the crops into: `mcl.data.pool`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from mcl.data.pool import SharedArrays, chunked, parallel_map, shared_arrays
from mcl.data.readers import OUTSIDE_TOLERANCE, DataError, Sample, check_in_image, load_image
from mcl.method.layouts import INPUT_SIZE, Layout

CROP = INPUT_SIZE  # METHOD §1: 50 x 50 grayscale face patches
AUGMENT_STREAM = 1  # seed-sequence stream of the augmentation (the synthetic set uses others)


@dataclass(frozen=True)
class AugmentSettings:
    """[interp] The paper gives no numbers for the five steps; these are our defaults,
    recorded in every dataset manifest. Each copy draws its own angle, extent,
    shift, flip and JPEG quality."""

    copies: int = 10  # augmented crops per training face
    angles: tuple[float, ...] = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)  # step 1, degrees
    extents: tuple[float, ...] = (0.9, 1.0, 1.1)  # step 3: box side multipliers
    shift: float = 0.05  # step 3: translation, uniform in +-shift x box side, per axis
    flip_prob: float = 0.5  # step 4
    jpeg_quality: tuple[int, int] = (40, 95)  # step 5: uniform integer quality, inclusive

    def __post_init__(self):
        if self.copies < 1:
            raise ValueError("copies must be at least 1")
        if not self.angles or not self.extents or min(self.extents) <= 0:
            raise ValueError("angles and extents must be non-empty, extents positive")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"JPEG quality range {lo}..{hi} must lie within 1..100")
        if not 0 <= self.flip_prob <= 1 or not 0 <= self.shift < 0.5:
            raise ValueError("flip probability must lie in [0, 1] and shift in [0, 0.5)")


@dataclass
class CropSet:
    """Crops of one split, in writing order. Crop landmark j corresponds to
    landmarks_image[j] (for a flipped crop, the original's mirror[j])."""

    images: np.ndarray  # (N, 50, 50) uint8
    landmarks: np.ndarray  # (N, n, 2) float64, crop pixels
    iod: np.ndarray  # (N,) float64, inter-ocular distance d in the crop (METHOD §7.1)
    crop_to_image: np.ndarray  # (N, 2, 3) float64
    landmarks_image: np.ndarray  # (N, n, 2) float64, original picture, 0-based
    iod_image: np.ndarray  # (N,) float64
    occluded: np.ndarray  # (N, n) uint8 (zeros where the dataset has no flags)
    sample_id: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, order: np.ndarray) -> CropSet:
        return CropSet(self.images[order], self.landmarks[order], self.iod[order], self.crop_to_image[order],
                       self.landmarks_image[order], self.iod_image[order], self.occluded[order],
                       [self.sample_id[i] for i in order])


# ---- geometry ----------------------------------------------------------------------

def apply_affine(A: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (..., n, 2) through 2 x 3 matrices (..., 2, 3)."""
    A = np.asarray(A, dtype=np.float64)[..., None, :, :]  # (..., 1, 2, 3) against (..., n, 2)
    x, y = points[..., 0], points[..., 1]
    return np.stack([A[..., 0, 0] * x + A[..., 0, 1] * y + A[..., 0, 2],
                     A[..., 1, 0] * x + A[..., 1, 1] * y + A[..., 1, 2]], axis=-1)


def invert_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of 2 x 3 matrices (..., 2, 3). Written out (no LAPACK call): BLAS thread
    pools in the worker processes cost more than these few multiplications."""
    a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 0, 2]
    d, e, f = A[..., 1, 0], A[..., 1, 1], A[..., 1, 2]
    det = a * e - b * d
    inv = np.empty_like(A, dtype=np.float64)
    inv[..., 0, 0], inv[..., 0, 1] = e / det, -b / det
    inv[..., 1, 0], inv[..., 1, 1] = -d / det, a / det
    inv[..., 0, 2] = -(inv[..., 0, 0] * c + inv[..., 0, 1] * f)
    inv[..., 1, 2] = -(inv[..., 1, 0] * c + inv[..., 1, 1] * f)
    return inv


def flip_points(points: np.ndarray, layout: Layout, size: int = CROP) -> np.ndarray:
    """Landmarks of the horizontally flipped crop: x -> size-1-x, and point i takes the
    role of point mirror[i] (left and right swap indices)."""
    flipped = points.copy()
    flipped[..., 0] = size - 1 - flipped[..., 0]
    return flipped[..., list(layout.mirror), :]


def flip_image(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def tight_box(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=-2), points.max(axis=-2)
    return np.concatenate([lo, hi], axis=-1)


# Test-crop protocols (METHOD §1). `ours`: a square of side crop_scale x the box's larger
# side mapped onto the whole patch (side s -> 50 pixels), edge pixels repeated outside
# the picture. `authors`: the authors' released demo, read from their binary: side 1.1 x
# the larger side, scale 49/s about the centre, gray (128) outside the picture.
TEST_CROPS = ("ours", "authors")
DEFAULT_TEST_CROP = "ours"
AUTHORS_SIDE = 1.1
AUTHORS_GRAY = 128


def check_test_crop(protocol: str) -> str:
    if protocol not in TEST_CROPS:
        raise ValueError(f"test-crop protocol must be one of {', '.join(TEST_CROPS)}, not {protocol!r}")
    return protocol


def effective_crop_scale(crop_scale: float, protocol: str = DEFAULT_TEST_CROP) -> float:
    """Picture pixels the 50-pixel patch spans, per pixel of the box's larger side."""
    if check_test_crop(protocol) == "authors":
        return AUTHORS_SIDE * CROP / (CROP - 1)
    return crop_scale


def box_crop_affine(box: np.ndarray, crop_scale: float, protocol: str = DEFAULT_TEST_CROP) -> np.ndarray:
    """Picture -> crop for a val/test face: a square centred on the box (METHOD §1: test
    crops use the dataset's boxes), sized by the test-crop protocol (crop_scale is
    ignored by `authors`)."""
    x1, y1, x2, y2 = box
    if check_test_crop(protocol) == "authors":
        s = (CROP - 1) / (max(x2 - x1, y2 - y1) * AUTHORS_SIDE)
    else:
        s = CROP / (max(x2 - x1, y2 - y1) * crop_scale)
    half = (CROP - 1) / 2
    return np.array([[s, 0.0, half - s * (x1 + x2) / 2], [0.0, s, half - s * (y1 + y2) / 2]])


def train_crop_ratio(samples: list[Sample], crop_scale: float) -> float:
    """[interp] Step 3 scales the tight landmark box; to make training crops frame faces
    as the val/test box crops do, the extents multiply this ratio: the median over the
    training faces of (box crop side) / (tight landmark box side)."""
    ratios = []
    for s in samples:
        tb = tight_box(s.landmarks)
        tight = max(tb[2] - tb[0], tb[3] - tb[1])
        if tight > 0:
            ratios.append(max(s.box[2] - s.box[0], s.box[3] - s.box[1]) * crop_scale / tight)
    return float(np.median(ratios)) if ratios else float(crop_scale)


def _source_for_scale(image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The picture to warp from and the picture -> source matrix. A crop that shrinks the
    face more than 2x would alias under bilinear sampling, so the picture is first
    shrunk with area averaging to where the warp's own scale is about 1/2."""
    if scale >= 0.5:
        return image, np.array([[1.0, 0, 0], [0, 1.0, 0]])
    h, w = image.shape
    nw, nh = max(1, round(w * 2 * scale)), max(1, round(h * 2 * scale))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    fx, fy = nw / w, nh / h
    return small, np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])


def _compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A after B, for 2 x 3 matrices (A may be batched, B is one)."""
    lin = np.einsum("...ij,jk->...ik", A[..., :2], B[:, :2])
    return np.concatenate([lin, (np.einsum("...ij,j->...i", A[..., :2], B[:, 2]) + A[..., 2])[..., None]], axis=-1)


def _warp(source: np.ndarray, A: np.ndarray, gray_border: int | None = None) -> np.ndarray:
    if gray_border is not None:
        return cv2.warpAffine(source, A, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=gray_border)
    return cv2.warpAffine(source, A, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _jpeg(crop: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def _finish(A: np.ndarray, flipped: np.ndarray, images: np.ndarray, sample: Sample, layout: Layout,
            ids: list[str]) -> CropSet:
    """Landmarks, d and the inverse matrices of crops made by matrices A (k, 2, 3)."""
    k = len(A)
    pts_img = np.broadcast_to(sample.landmarks, (k,) + sample.landmarks.shape).copy()
    occ = np.zeros((k, layout.n_points), np.uint8)
    if sample.occluded is not None:
        occ[:] = sample.occluded
    mirror = list(layout.mirror)
    pts_img[flipped] = pts_img[flipped][:, mirror]
    occ[flipped] = occ[flipped][:, mirror]
    pts_crop = apply_affine(A, pts_img)
    return CropSet(images, pts_crop, layout.inter_ocular_distance(pts_crop), invert_affine(A), pts_img,
                   layout.inter_ocular_distance(pts_img), occ, ids)


def augment_face(image: np.ndarray, sample: Sample, layout: Layout, settings: AugmentSettings,
                 ratio: float, rng: np.random.Generator) -> CropSet:
    """settings.copies augmented crops of one training face (METHOD §6, steps 1-5)."""
    k = settings.copies
    pts = sample.landmarks
    angle = np.deg2rad(rng.choice(np.asarray(settings.angles, dtype=np.float64), size=k))
    extent = rng.choice(np.asarray(settings.extents, dtype=np.float64), size=k)
    shift = rng.uniform(-settings.shift, settings.shift, size=(k, 2))
    flipped = rng.random(k) < settings.flip_prob
    quality = rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1, size=k)

    # Step 1: rotate (counter-clockwise on screen). The centre of rotation does not
    # matter: step 2's box fixes where the crop lies.
    c, s = np.cos(angle), np.sin(angle)
    R = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], axis=1)  # (k, 2, 2)
    rotated = apply_affine(np.concatenate([R, np.zeros((k, 2, 1))], axis=2), pts)
    # Step 2: tight box of the rotated landmarks. Step 3: scale and translate it.
    tb = tight_box(rotated)
    side = np.maximum(tb[:, 2] - tb[:, 0], tb[:, 3] - tb[:, 1]) * ratio * extent
    centre = (tb[:, :2] + tb[:, 2:]) / 2 + shift * side[:, None]
    scale = CROP / side
    # Step 4: picture -> crop, the flip folded in as x -> 49 - x.
    A = np.empty((k, 2, 3))
    A[:, :, :2] = scale[:, None, None] * R
    A[:, :, 2] = scale[:, None] * -centre + (CROP - 1) / 2
    A[flipped, 0, :] *= -1
    A[flipped, 0, 2] += CROP - 1

    source, to_source = _source_for_scale(image, float(scale.min()))
    A_src = _compose(A, invert_affine(to_source))
    images = np.empty((k, CROP, CROP), np.uint8)
    for i in range(k):
        images[i] = _jpeg(_warp(source, A_src[i]), quality[i])  # step 5
    ids = [f"{sample.sample_id}#{i:02d}" for i in range(k)]
    return _finish(A, flipped, images, sample, layout, ids)


def box_crop(image: np.ndarray, box, crop_scale: float, protocol: str = DEFAULT_TEST_CROP) -> tuple[np.ndarray, np.ndarray]:
    """(the 50 x 50 uint8 crop, picture -> crop matrix (2, 3)) of the face in `box`: the val/test crop
    (crop_face's pixels; the predictor's whole cost per face, without a CropSet's landmark arithmetic)."""
    A = box_crop_affine(box, crop_scale, protocol)
    source, to_source = _source_for_scale(image, float(A[0, 0]))
    return _warp(source, _compose(A, invert_affine(to_source)), AUTHORS_GRAY if protocol == "authors" else None), A


def crop_face(image: np.ndarray, sample: Sample, layout: Layout, crop_scale: float,
              protocol: str = DEFAULT_TEST_CROP) -> CropSet:
    """The val/test crop of one face: its box, no augmentation, under a test-crop protocol."""
    crop, A = box_crop(image, sample.box, crop_scale, protocol)
    return _finish(A[None], np.zeros(1, bool), crop[None], sample, layout, [sample.sample_id])


# ---- many faces, in parallel -----------------------------------------------------------

@dataclass(frozen=True)
class CropJob:
    """What every worker needs to crop faces; small, sent with each chunk."""

    layout: Layout
    seed: int
    augment: AugmentSettings | None  # None: box crops (val/test)
    ratio: float = 1.0  # train_crop_ratio, for augmentation
    crop_scale: float = 1.25
    skip_bad: bool = False
    tolerance: float = OUTSIDE_TOLERANCE
    test_crop: str = DEFAULT_TEST_CROP  # protocol of box crops (val/test)

    @property
    def copies(self) -> int:
        return self.augment.copies if self.augment else 1


def face_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


_ARRAYS = ("images", "landmarks", "iod", "crop_to_image", "landmarks_image", "iod_image", "occluded")


def _specs(n: int, n_points: int) -> dict[str, tuple[tuple, str]]:
    shapes = ((n, CROP, CROP), (n, n_points, 2), (n,), (n, 2, 3), (n, n_points, 2), (n,), (n, n_points))
    dtypes = ("uint8", "float64", "float64", "float64", "float64", "float64", "uint8")
    return {name: (shape, dtype) for name, shape, dtype in zip(_ARRAYS, shapes, dtypes)}


def _crop_chunk(args: tuple[CropJob, int, list[tuple[int, Sample]]]) -> tuple[int, list[tuple[int, dict]]]:
    """Crop the faces of one chunk into rows of the map's shared arrays (face at position
    p fills rows p*copies ...); return how many faces it handled and the skipped positions."""
    job, first, chunk = args
    k = job.copies
    out = shared_arrays()
    skipped = []
    for pos, (index, sample) in enumerate(chunk, first):
        try:
            image = load_image(sample)
            check_in_image(sample, image, job.tolerance)
        except DataError as err:
            if not job.skip_bad:
                raise
            skipped.append((pos, {"id": sample.sample_id, "reason": str(err)}))
            continue
        if job.augment is None:
            cs = crop_face(image, sample, job.layout, job.crop_scale, job.test_crop)
        else:
            cs = augment_face(image, sample, job.layout, job.augment, job.ratio,
                              face_rng(job.seed, AUGMENT_STREAM, index))
        rows = slice(pos * k, (pos + 1) * k)
        for name in _ARRAYS:
            out[name][rows] = getattr(cs, name)
    return len(chunk), skipped


def crop_samples(indexed: list[tuple[int, Sample]], job: CropJob, workers: int = 1,
                 progress=None) -> tuple[CropSet, list[dict]]:
    """Crops of many faces (augmented when job.augment is set), in the order given.
    `indexed` pairs each sample with its face index, the seed of its generator.
    Workers write into shared memory by position, so order and bytes do not depend
    on the worker count; skipped faces (skip_bad) leave no rows."""
    k = job.copies
    shared = SharedArrays(_specs(len(indexed) * k, job.layout.n_points))
    out = shared.arrays
    bad: list[tuple[int, dict]] = []
    tasks = [(job, start, chunk) for start, chunk in _starts(chunked(indexed, workers))]
    try:
        for n, skipped in parallel_map(_crop_chunk, tasks, workers, shared):
            bad += skipped
            if progress is not None:
                progress.update(n)
    finally:
        shared.close()
    keep = np.ones(len(indexed), bool)
    keep[[pos for pos, _ in bad]] = False
    if keep.all():
        result = CropSet(*(out[name] for name in _ARRAYS))
    else:
        rows = (np.flatnonzero(keep)[:, None] * k + np.arange(k)).ravel()
        result = CropSet(*(out[name][rows] for name in _ARRAYS))
    suffixes = [f"#{i:02d}" for i in range(k)] if job.augment else [""]
    result.sample_id = [indexed[p][1].sample_id + sfx for p in np.flatnonzero(keep) for sfx in suffixes]
    return result, [info for _, info in bad]


def _starts(chunks: list[list]) -> list[tuple[int, list]]:
    out, start = [], 0
    for c in chunks:
        out.append((start, c))
        start += len(c)
    return out
