"""The built-in synthetic face set: drawn faces with exact 68-point ground truth.

A face is a 3-D point template in the 300-W 68-point order (made left-right symmetric
through `Layout.mirror`, the one table of mirror pairs), varied per face in identity
(proportions) and expression (mouth open, smile, brows, eye opening), turned in depth
(yaw, pitch), rolled in the image plane, scaled and placed, and then drawn: jaw and
forehead outline as the skin region, brows, eyes (sclera, iris, lids), nose bridge
and base with nostrils, lips and open mouth. Every landmark is a vertex of what is
drawn, at sub-pixel precision, so the ground truth is exact.

What makes some landmarks harder than others, on purpose (per-landmark loss
weighting needs differences to act on): the jaw contour has a soft edge of random
width and a random, sometimes very low, contrast against the background and the neck;
occluders (blobs, bars, boxes with texture) hide parts of some faces and flag the
landmarks they cover; illumination gradients, blur, noise and background clutter.

The set is written in the 300-W layout (pictures, 1-based .pts, bounding_boxes_*.mat)
and read back by the same 300-W reader as real data; occlusion flags go into a
sidecar `<stem>.occ` beside each .pts, which the 300-W reader picks up when present.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from mcl import __version__
from mcl.data.augment import face_rng
from mcl.data.pool import chunked, parallel_map
from mcl.data.readers import W300_SUBSET_DIRS, write_pts
from mcl.method.layouts import IBUG68

SYNTH_STREAM = 2  # seed-sequence stream of the generator (augmentation uses 1)
TRAIN_SUBSETS = ("afw", "helen_trainset", "lfpw_trainset")
TEST_SUBSET = "ibug"  # the synthetic test faces form the "challenging" split
BOX_DIR = "Bounding Boxes"
STAMP = "synth.json"
_SHIFT = 4  # cv2 drawing with 4 fractional bits: vertices at 1/16 pixel
_AA = cv2.LINE_AA


@dataclass(frozen=True)
class SynthSettings:
    size: int = 160  # square pictures, pixels
    face_scale: tuple[float, float] = (0.18, 0.28)  # half face width / picture size
    max_roll: float = 40.0  # degrees, in-plane (normal, sd 15, clipped)
    max_yaw: float = 30.0  # degrees, turn in depth
    max_pitch: float = 12.0
    occlusion_prob: float = 0.35  # share of faces with one or two occluders


# ---- the template ------------------------------------------------------------------

def _template() -> np.ndarray:
    """(68, 3) x right, y down, z towards the camera; unit = half the face width."""
    P = np.zeros((68, 3))
    phi = np.pi * np.arange(17) / 16
    c, s = np.cos(phi), np.sin(phi)
    P[0:17] = np.stack([-np.sign(c) * np.abs(c) ** 0.8, -0.35 + 1.35 * s ** 1.2, 0.1 + 0.5 * s], 1)  # jaw
    t = np.linspace(0, 1, 5)
    P[17:22] = np.stack([-0.85 + 0.67 * t, -0.6 - 0.12 * np.sin(np.pi * (0.15 + 0.75 * t)), 0.5 + 0.3 * t], 1)
    P[27:31] = np.stack([np.zeros(4), [-0.42, -0.26, -0.1, 0.06], [0.85, 0.95, 1.05, 1.2]], 1)  # bridge
    P[31:36] = np.stack([[-0.2, -0.1, 0, 0.1, 0.2], [0.18, 0.22, 0.25, 0.22, 0.18], [0.9, 1.0, 1.05, 1.0, 0.9]], 1)
    cx, cy = -0.4, -0.33
    P[36:42] = [[cx - 0.19, cy, 0.5], [cx - 0.07, cy - 0.075, 0.65], [cx + 0.07, cy - 0.075, 0.68],
                [cx + 0.19, cy, 0.65], [cx + 0.07, cy + 0.06, 0.68], [cx - 0.07, cy + 0.06, 0.65]]
    mouth = [[-0.3, 0.56], [-0.18, 0.5], [-0.07, 0.47], [0, 0.48], [0.07, 0.47], [0.18, 0.5], [0.3, 0.56],
             [0.18, 0.64], [0.08, 0.67], [0, 0.675], [-0.08, 0.67], [-0.18, 0.64],
             [-0.24, 0.56], [-0.09, 0.545], [0, 0.545], [0.09, 0.545], [0.24, 0.56],
             [0.09, 0.575], [0, 0.575], [-0.09, 0.575]]
    P[48:68, :2] = mouth
    P[48:68, 2] = 0.85 - 0.5 * P[48:68, 0] ** 2
    # The right side (and the right brow, right eye) from the left through the mirror table.
    mirror = np.asarray(IBUG68.mirror)
    right = [j for j in range(68) if mirror[j] != j and P[mirror[j], 0] < 0 and not P[j].any()]
    P[right] = P[mirror[right]] * [-1, 1, 1]
    return (P + P[mirror] * [-1, 1, 1]) / 2  # exactly symmetric


TEMPLATE = _template()
_PHI = np.pi * np.arange(15) / 14
FOREHEAD = np.stack([np.cos(_PHI), -0.35 - 1.05 * np.sin(_PHI), 0.1 + 0.45 * np.sin(_PHI)], 1)  # right ear -> left ear

_BROWS = list(range(17, 27))
_LOWER_LIP = [55, 56, 57, 58, 59, 65, 66, 67]
_CORNERS = [48, 54, 60, 64]


def _shape(rng: np.random.Generator) -> np.ndarray:
    """One face's 3-D landmarks: identity and expression applied to the template."""
    P = TEMPLATE.copy()
    P[:, 0] *= rng.uniform(0.9, 1.1)  # face width
    below = P[:, 1] > -0.35
    P[below, 1] = -0.35 + (P[below, 1] + 0.35) * rng.uniform(0.9, 1.12)  # face length
    eyes = slice(36, 48)
    ecen = np.repeat([P[36:42].mean(0), P[42:48].mean(0)], 6, axis=0)
    P[eyes, :2] = ecen[:, :2] + (P[eyes, :2] - ecen[:, :2]) * rng.uniform(0.85, 1.15)
    P[eyes, 1] = ecen[:, 1] + (P[eyes, 1] - ecen[:, 1]) * rng.uniform(0.4, 1.3)  # eye opening
    P[eyes, 0] += np.sign(P[eyes, 0]) * rng.uniform(-0.05, 0.05)  # eye spacing
    P[31:36, 1] += rng.uniform(-0.05, 0.08)  # nose length
    P[48:68, 0] *= rng.uniform(0.85, 1.15)  # mouth width
    P[48:68, 1] += rng.uniform(-0.04, 0.06)
    # Expression: mouth open, smile, brows.
    opening = rng.uniform(0.04, 0.25) if rng.random() < 0.5 else rng.uniform(0.0, 0.02)
    P[_LOWER_LIP, 1] += opening
    P[[60, 64], 1] += opening / 2
    jaw_w = np.sin(np.pi * np.arange(17) / 16) ** 4
    P[0:17, 1] += opening * 0.6 * jaw_w
    smile = rng.uniform(-0.04, 0.1)
    P[_CORNERS, 1] -= smile
    P[_CORNERS, 0] += np.sign(P[_CORNERS, 0]) * smile * 0.6
    P[[49, 53, 55, 59], 1] -= smile / 2
    P[_BROWS, 1] -= rng.uniform(-0.05, 0.12)
    P[[21, 22], 1] += rng.uniform(-0.02, 0.06)  # frown
    return P + rng.normal(0, 0.008, P.shape)


def _project(P: np.ndarray, yaw: float, pitch: float, roll: float, scale: float, centre) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    xy = (P @ (Rx @ Ry).T)[:, :2]
    cr, sr = np.cos(roll), np.sin(roll)
    return scale * xy @ np.array([[cr, sr], [-sr, cr]]) + centre


# ---- drawing ----------------------------------------------------------------------

def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _mask(shape, draw) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    draw(m)
    return m.astype(np.float32) * (1.0 / 255.0)


def _blend(img: np.ndarray, value, alpha: np.ndarray) -> None:
    img += (value - img) * alpha


def _poly(pts):
    return lambda m: cv2.fillPoly(m, [_fix(pts)], 255, _AA, _SHIFT)


def _line(pts, thickness: int, closed=False):
    return lambda m: cv2.polylines(m, [_fix(pts)], closed, 255, max(1, int(round(thickness))), _AA, _SHIFT)


def _ellipse(centre, axes, angle):
    c = tuple(int(round(v * (1 << _SHIFT))) for v in centre)
    a = tuple(max(1, int(round(v * (1 << _SHIFT)))) for v in axes)
    return lambda m: cv2.ellipse(m, c, a, float(angle), 0, 360, 255, -1, _AA, _SHIFT)


def _background(rng, size: int, level: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    g = rng.uniform(-40, 40, 2) / size
    img = (level + g[0] * (xx - size / 2) + g[1] * (yy - size / 2)).astype(np.float32)
    for _ in range(rng.integers(4, 14)):
        kind = rng.integers(3)
        val = rng.uniform(0, 255)
        p = rng.uniform(-0.1, 1.1, 2) * size
        if kind == 0:
            q = p + rng.normal(0, size / 3, 2)
            draw = _line(np.stack([p, q]), rng.integers(1, 6))
        elif kind == 1:
            w, h = rng.uniform(0.05, 0.4, 2) * size
            draw = _poly(np.array([p, p + [w, 0], p + [w, h], p + [0, h]]))
        else:
            draw = _ellipse(p, rng.uniform(0.03, 0.2, 2) * size, rng.uniform(0, 180))
        _blend(img, val, _mask(img.shape, draw) * rng.uniform(0.4, 1.0))
    texture = cv2.GaussianBlur(rng.normal(0, rng.uniform(2, 15), (size, size)).astype(np.float32), (0, 0), 1.5)
    return img + texture


def _occluders(rng, img: np.ndarray, pts: np.ndarray, unit: float, roll: float) -> np.ndarray:
    """Draw one or two textured occluders over the face; their union mask (bool)."""
    size = img.shape[0]
    covered = np.zeros(img.shape, bool)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(1, 3)):
        target = pts[rng.integers(len(pts))] + rng.normal(0, 0.15 * unit, 2)
        kind = rng.integers(3)
        angle = np.degrees(roll) + rng.normal(0, 10)
        rad = np.radians(angle)
        if kind == 0:  # a hand, a ball, a cup: a blob
            draw = _ellipse(target, rng.uniform(0.2, 0.55, 2) * unit, rng.uniform(0, 180))
        elif kind == 1:  # sunglasses, a scarf: a bar across the face
            half = np.array([rng.uniform(0.8, 1.2), rng.uniform(0.1, 0.22)]) * unit
            draw = _rotated_rect(target, half, angle)
        else:  # a box, a phone
            draw = _rotated_rect(target, rng.uniform(0.15, 0.45, 2) * unit, rng.uniform(0, 90))
        alpha = _mask(img.shape, draw)
        base = rng.uniform(0, 255)
        period = rng.uniform(3, 12)
        stripes = rng.uniform(0, 40) * np.sin((xx * np.cos(rad) + yy * np.sin(rad)) * 2 * np.pi / period)
        texture = base + stripes + rng.normal(0, rng.uniform(0, 12), img.shape).astype(np.float32)
        _blend(img, texture, alpha)
        covered |= alpha > 0.5
    return covered


def _rotated_rect(centre, half, angle_deg):
    a = np.radians(angle_deg)
    u, v = np.array([np.cos(a), np.sin(a)]) * half[0], np.array([-np.sin(a), np.cos(a)]) * half[1]
    return _poly(np.array([centre - u - v, centre + u - v, centre + u + v, centre - u + v]))


def generate_face(rng: np.random.Generator, settings: SynthSettings = SynthSettings()):
    """One picture: (grayscale uint8 (size, size), landmarks (68, 2) 0-based, occluded (68,) uint8)."""
    size = settings.size
    P = _shape(rng)
    yaw = np.radians(rng.uniform(-settings.max_yaw, settings.max_yaw))
    pitch = np.radians(rng.uniform(-settings.max_pitch, settings.max_pitch))
    roll = np.radians(np.clip(rng.normal(0, 15), -settings.max_roll, settings.max_roll))
    unit = rng.uniform(*settings.face_scale) * size
    centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size + [0, 0.1 * unit]
    proj = _project(np.concatenate([P, FOREHEAD]), yaw, pitch, roll, unit, centre)
    pts, forehead = proj[:68], proj[68:]
    down = np.array([-np.sin(roll), np.cos(roll)])

    skin = rng.uniform(90, 210)
    contrast = rng.choice([-1, 1]) * (rng.uniform(8, 25) if rng.random() < 0.35 else rng.uniform(25, 110))
    img = _background(rng, size, float(np.clip(skin + contrast, 10, 245)))
    if rng.random() < 0.7:  # hair behind the forehead
        mid = forehead.mean(0)
        hair = mid + (forehead - mid) * rng.uniform(1.05, 1.25)
        _blend(img, rng.uniform(10, 200), _mask(img.shape, _poly(np.concatenate([hair, pts[[0, 16]]]))))
    across = (pts[12] - pts[4]) / np.linalg.norm(pts[12] - pts[4])
    top = pts[8] - 0.4 * unit * down
    half = rng.uniform(0.45, 0.65) * unit * across
    neck = np.array([top - half, top + half, top + half + 2.5 * unit * down, top - half + 2.5 * unit * down])
    _blend(img, skin * rng.uniform(0.55, 0.9), _mask(img.shape, _poly(neck)))
    # Skin: a soft edge of random width, so the jaw contour is sometimes hard to place.
    outline = np.concatenate([pts[0:17], forehead])
    alpha = _mask(img.shape, _poly(outline))
    edge = rng.uniform(0.3, 2.2)
    alpha = cv2.GaussianBlur(alpha, (0, 0), edge)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fc = pts[27:36].mean(0)
    r2 = ((xx - fc[0]) ** 2 + (yy - fc[1]) ** 2) / (1.3 * unit) ** 2
    _blend(img, skin * (1 - rng.uniform(0.05, 0.3) * np.minimum(r2, 1.5)), alpha)

    dark = rng.uniform(50, 110)
    _blend(img, skin - dark, _mask(img.shape, _line(pts[17:22], 0.09 * unit)))  # brows
    _blend(img, skin - dark, _mask(img.shape, _line(pts[22:27], 0.09 * unit)))
    sclera = min(255.0, skin + rng.uniform(15, 60))
    iris_val = rng.uniform(10, 90)
    gaze = rng.normal(0, 0.02, 2) * unit
    for eye in (pts[36:42], pts[42:48]):
        eye_alpha = _mask(img.shape, _poly(eye))
        _blend(img, sclera, eye_alpha)
        c = eye.mean(0) + gaze
        r = 0.38 * np.linalg.norm(eye[3] - eye[0]) / 2 * 1.2
        _blend(img, iris_val, _mask(img.shape, _ellipse(c, (r, r), 0)) * eye_alpha)
        _blend(img, skin - dark * 1.2, _mask(img.shape, _line(eye[[0, 1, 2, 3]], 0.05 * unit)))  # upper lid
        _blend(img, skin - dark * 0.6, _mask(img.shape, _line(eye[[3, 4, 5, 0]], 1)))
    side = 1 if yaw > 0 else -1
    bridge = pts[27:31] + side * np.array([np.cos(roll), np.sin(roll)]) * 0.06 * unit
    _blend(img, skin - rng.uniform(15, 40), _mask(img.shape, _line(bridge, 0.06 * unit)))
    _blend(img, skin - rng.uniform(30, 70), _mask(img.shape, _line(pts[31:36], 0.04 * unit)))
    for a, b in ((31, 32), (34, 35)):
        nostril = (pts[a] + pts[b]) / 2 - 0.03 * unit * down
        _blend(img, skin - dark, _mask(img.shape, _ellipse(nostril, (0.05 * unit, 0.03 * unit), np.degrees(roll))))
    _blend(img, skin - rng.uniform(25, 75), _mask(img.shape, _poly(pts[48:60])))  # lips
    inner = pts[60:68]
    if np.linalg.norm(pts[66] - pts[62]) > 0.04 * unit:  # open mouth
        mouth_alpha = _mask(img.shape, _poly(inner))
        _blend(img, rng.uniform(5, 45), mouth_alpha)
        if rng.random() < 0.5:  # teeth under the upper lip
            teeth = np.concatenate([inner[0:5], inner[[4, 3, 2, 1, 0]] + 0.05 * unit * down])
            _blend(img, rng.uniform(170, 240), _mask(img.shape, _poly(teeth)) * mouth_alpha)
    _blend(img, rng.uniform(5, 45), _mask(img.shape, _line(inner[0:5], 1)))

    # Illumination: a linear gradient across the picture, and a gain.
    beta = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(-0.8, 0.8) * ((xx - size / 2) * np.cos(beta) + (yy - size / 2) * np.sin(beta)) / size
    img *= grad * rng.uniform(0.75, 1.15)

    occluded = np.zeros(68, np.uint8)
    if rng.random() < settings.occlusion_prob:
        covered = _occluders(rng, img, pts, unit, roll)
        ij = np.clip(np.rint(pts).astype(int), 0, size - 1)
        occluded = covered[ij[:, 1], ij[:, 0]].astype(np.uint8)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
    img += rng.normal(0, rng.uniform(1, 8), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), pts, occluded


# ---- writing the 300-W layout ---------------------------------------------------------

def subset_of(index: int, n_train: int) -> str:
    return TRAIN_SUBSETS[index * len(TRAIN_SUBSETS) // n_train] if index < n_train else TEST_SUBSET


def _write_chunk(args):
    root, n_train, seed, settings, indices = args
    out = []
    for i in indices:
        rng = face_rng(seed, SYNTH_STREAM, i)
        image, pts, occ = generate_face(rng, settings)
        subset = subset_of(i, n_train)
        name = f"synth_{i:05d}.png"
        stem = os.path.join(root, W300_SUBSET_DIRS[subset], name[:-4])
        cv2.imwrite(stem + ".png", image)
        write_pts(stem + ".pts", pts + 1.0)  # 300-W is 1-based
        with open(stem + ".occ", "w") as f:
            f.write(" ".join(str(int(v)) for v in occ) + "\n")
        gt = np.concatenate([pts.min(0), pts.max(0)]) + 1.0
        side = gt[2:] - gt[:2]
        det_c = (gt[:2] + gt[2:]) / 2 + rng.uniform(-0.05, 0.05, 2) * side
        det_half = side / 2 * rng.uniform(0.95, 1.2)
        out.append((i, subset, name, np.concatenate([det_c - det_half, det_c + det_half]), gt))
    return out, len(indices)


def write_boxes_mat(path: str, entries: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """bounding_boxes_*.mat as 300-W ships it: a 1 x N cell of structs (imgName,
    bb_detector, bb_ground_truth), MAT v5, so that
    loadmat(path)['bounding_boxes'][0][i][0][0] is (imgName, bb_detector, bb_ground_truth).
    The header's creation time is replaced by fixed text, so equal input gives equal bytes."""
    import scipy.io

    dt = [("imgName", "O"), ("bb_detector", "O"), ("bb_ground_truth", "O")]
    cell = np.empty((1, len(entries)), dtype=object)
    for i, (name, det, gt) in enumerate(entries):
        rec = np.empty((1, 1), dtype=dt)
        rec[0, 0] = (np.array([name]), np.asarray(det, np.float64).reshape(1, 4),
                     np.asarray(gt, np.float64).reshape(1, 4))
        cell[0, i] = rec
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"bounding_boxes": cell})
    data = bytearray(buf.getvalue())
    data[:116] = f"MATLAB 5.0 MAT-file, written by mcl.data.synth {__version__}".ljust(116).encode("ascii")
    with open(path, "wb") as f:
        f.write(bytes(data))


def stamp_of(n_train: int, n_test: int, seed: int, settings: SynthSettings) -> dict:
    return {"generator": "mcl.data.synth", "version": __version__, "seed": seed, "n_train": n_train,
            "n_test": n_test, "settings": asdict(settings)}


def write_synth_300w(root: str, n_train: int, n_test: int, seed: int, workers: int = 1,
                     settings: SynthSettings = SynthSettings(), progress=None) -> dict:
    """Generate n_train + n_test faces into `root` in the 300-W layout. Training faces
    are spread over afw / helen trainset / lfpw trainset, test faces form ibug. Face i
    draws from a generator seeded by (seed, i): any worker count gives the same bytes."""
    if n_train < 1 or n_test < 0:
        raise ValueError("the synthetic set needs at least one training face")
    for subset in (*TRAIN_SUBSETS, TEST_SUBSET):
        os.makedirs(os.path.join(root, W300_SUBSET_DIRS[subset]), exist_ok=True)
    os.makedirs(os.path.join(root, BOX_DIR), exist_ok=True)
    tasks = [(root, n_train, seed, settings, chunk) for chunk in chunked(list(range(n_train + n_test)), workers)]
    entries: dict[str, list] = {}
    for rows, n in parallel_map(_write_chunk, tasks, workers):
        for _, subset, name, det, gt in rows:
            entries.setdefault(subset, []).append((name, det, gt))
        if progress is not None:
            progress.update(n)
    for subset, rows in entries.items():
        write_boxes_mat(os.path.join(root, BOX_DIR, f"bounding_boxes_{subset}.mat"), rows)
    stamp = stamp_of(n_train, n_test, seed, settings)
    with open(os.path.join(root, STAMP), "w") as f:
        json.dump(stamp, f, indent=2, sort_keys=True)
        f.write("\n")
    return stamp
