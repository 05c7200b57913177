"""Readers of the face-alignment datasets (METHOD §11): 300-W, COFW, MTFL/AFLW, generic.

Every reader returns `Sample`s in one convention: landmarks (n, 2) float64 in 0-based
pixel coordinates (pixel centres at integers, as cv2 and NumPy index them), the face
box [x1 y1 x2 y2] in the same coordinates, per-landmark occlusion flags where the
dataset has them. 300-W, COFW and (by default) the generic format are 1-based on
disk, MATLAB style: 1 is subtracted from points and boxes alike.

Pixels are loaded lazily (`load_image`, in the worker processes) so that a reader of
3,148 Helen-sized images holds no pixels; only COFW keeps its images in memory,
because they live inside the .mat file.

Which reader reads which dataset, the layout it comes in and the box it gives are the dataset
table's (mcl/method/datasets.py); a reader asked for no layout gives its dataset's own.

Bad input (METHOD §11.5) raises `DataError` naming the file (and line).
With `skip_bad=True` a reader skips the sample instead and lists it, with the reason,
in `ReadResult.skipped`; the pipeline copies that list into the dataset manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from mcl.method import datasets
from mcl.method.layouts import Layout, derive_from_68, get_layout


class DataError(Exception):
    """Bad or missing input. The message names the file (and line where there is one)."""


@dataclass
class Sample:
    sample_id: str  # image path relative to the dataset root (or file#index for COFW)
    layout: str  # '5', '29' or '68'
    landmarks: np.ndarray  # (n, 2) float64, 0-based pixels
    box: np.ndarray  # (4,) float64, [x1 y1 x2 y2], 0-based pixels
    occluded: np.ndarray | None = None  # (n,) uint8, 1 = occluded; None where unknown
    image_path: str | None = None  # where `load_image` reads the pixels
    image: np.ndarray | None = None  # grayscale uint8 (h, w) when held in memory (COFW)
    reduce_width: int | None = None  # the picture is read reduced to this width (mcl.data.extra.reduce_nearest)


@dataclass
class ReadResult:
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)  # {"id": ..., "reason": ...}
    # What the reader found beyond the faces (300-W: the subsets present, where the boxes came from);
    # the data preparation records it in the manifest.
    source: dict = field(default_factory=dict)


# ---- common checks ---------------------------------------------------------------

def check_points(points: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: landmark {j + 1} is not a finite number ({points[j, 0]}, {points[j, 1]})")


def check_box(box: np.ndarray, where: str) -> None:
    box = np.asarray(box, dtype=np.float64).ravel()
    if box.size != 4 or not np.isfinite(box).all():
        raise DataError(f"{where}: face box is not four finite numbers: {box.tolist()}")
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise DataError(f"{where}: empty or degenerate face box [x1 y1 x2 y2] = {np.round(box, 3).tolist()}")


# A landmark may lie a little outside the picture (a chin cut by the image border);
# one far outside means a broken annotation. [interp] "far" = more than this share
# of the face box side beyond the border.
OUTSIDE_TOLERANCE = 0.1


def load_image(sample: Sample) -> np.ndarray:
    """The sample's grayscale uint8 pixels: decoded in colour, then converted with the
    same weights for every format (JPEG's own gray decoding would differ slightly from
    PNG's). EXIF orientation is ignored, as MATLAB's imread ignores it: annotations
    refer to the stored pixel grid."""
    if sample.image is not None:
        return sample.image
    path = sample.image_path
    if path is None or not os.path.isfile(path):
        raise DataError(f"{path}: missing image file")
    image = decode_picture(path)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        if code is None:
            raise DataError(f"{path}: unsupported picture with {image.shape[2]} channels")
        image = cv2.cvtColor(image, code)
    if sample.reduce_width:
        image = nearest_reduction(image, sample.reduce_width)
    return image


# A JPEG ends with its end-of-image marker, a PNG with its IEND chunk. OpenCV decodes a file cut
# short without an error (the missing rows come out gray, with a warning on stderr only), so a
# truncated picture would be cropped and scored as if whole: it is named here instead.
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
PNG_START, PNG_END = b"\x89PNG", b"IEND"
TAIL = 64  # bytes searched for the end marker (encoders may pad after it)


def truncation(raw: bytes) -> str | None:
    """Why a picture's bytes are cut short, or None where its format's end marker is there."""
    tail = raw[-TAIL:]
    if raw.startswith(JPEG_START) and JPEG_END not in tail:
        return "truncated JPEG: no end-of-image marker (the file is cut short)"
    if raw.startswith(PNG_START) and PNG_END not in tail:
        return "truncated PNG: no IEND chunk (the file is cut short)"
    return None


def decode_picture(path: str, flags: int = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION) -> np.ndarray:
    """The picture at `path` decoded whole, or a DataError naming the file: missing, empty,
    cut short, or not a picture OpenCV can decode."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file ({exc.strerror})") from None
    if not raw:
        raise DataError(f"{path}: empty image file")
    why = truncation(raw)
    if why:
        raise DataError(f"{path}: unreadable image: broken picture: {why}")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flags)
    if image is None or image.size == 0:
        raise DataError(f"{path}: unreadable image (not a picture OpenCV can decode)")
    return image


def nearest_reduction(image: np.ndarray, width: int) -> np.ndarray:
    """`image` reduced to `width` columns by corner-aligned nearest-neighbour sampling, the same factor
    in both axes: pixel i shows pixel floor(i * W / width), as the shared 80 x 80 AFLW and LFW
    pictures were made (OpenCV INTER_NEAREST; data README, "Transforms")."""
    h, w = image.shape[:2]
    step = w / width
    rows = np.floor(np.arange(int(h / step)) * step).astype(int)
    cols = np.floor(np.arange(width) * step).astype(int)
    return np.ascontiguousarray(image[rows][:, cols])


def check_in_image(sample: Sample, image: np.ndarray, tolerance: float = OUTSIDE_TOLERANCE) -> None:
    """Landmarks and box against the picture they annotate (needs the pixels)."""
    h, w = image.shape[:2]
    where = sample.image_path or sample.sample_id
    side = max(sample.box[2] - sample.box[0], sample.box[3] - sample.box[1])
    m = tolerance * side
    pts = sample.landmarks
    out = (pts[:, 0] < -m) | (pts[:, 0] > w - 1 + m) | (pts[:, 1] < -m) | (pts[:, 1] > h - 1 + m)
    if out.any():
        j = int(np.flatnonzero(out)[0])
        raise DataError(f"{where}: landmark {j + 1} at ({pts[j, 0]:.2f}, {pts[j, 1]:.2f}) lies outside "
                        f"the {w}x{h} image")
    x1, y1, x2, y2 = sample.box
    if x2 <= 0 or y2 <= 0 or x1 >= w - 1 or y1 >= h - 1:
        raise DataError(f"{where}: face box {np.round(sample.box, 2).tolist()} does not overlap the {w}x{h} image")


def _to_layout(points: np.ndarray, occluded: np.ndarray | None, layout: Layout, where: str):
    """Points of the wanted layout: as read, or derived from 68 (METHOD §8.4)."""
    n = points.shape[0]
    if n == layout.n_points:
        return points, occluded
    if n == 68:
        derived = derive_from_68(points, layout)
        occ = None
        if occluded is not None:
            # A derived point (an eye centre) is occluded when most of its sources are.
            flags = np.repeat(occluded.astype(np.float64)[:, None], 2, axis=1)
            occ = (derive_from_68(flags, layout)[:, 0] >= 0.5).astype(np.uint8)
        return derived, occ
    raise DataError(f"{where}: has {n} points, expected {layout.n_points} (layout {layout.name})")


class _Skipper:
    """Raise at the first bad sample, or (skip_bad) note it and go on."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped: list[dict] = []

    def bad(self, err: DataError, sample_id: str) -> None:
        if not self.skip_bad:
            raise err
        self.skipped.append({"id": sample_id, "reason": str(err)})


def _reader_layout(dataset: str, layout: str | Layout | None, split: str, splits, fixed: bool = False) -> Layout:
    """The layout a reader was asked for (None: the dataset's own, as the dataset table has it), once
    its split is checked to be one of `splits` and, for files that hold exactly the dataset's own
    landmarks (`fixed`), the layout to have as many; `dataset` is the table's name of the data."""
    spec = datasets.get_dataset(dataset)
    own = get_layout(spec.layout)
    lay = own if layout is None else get_layout(layout.name if isinstance(layout, Layout) else layout)
    if fixed and lay.n_points != own.n_points:
        raise DataError(f"{spec.title} has {own.n_points} landmarks: use layout {own.name}, not {lay.name}")
    if split not in splits:
        choices = " or ".join(splits) if len(splits) == 2 else f"one of {', '.join(splits)}"
        raise DataError(f"{spec.title} has no split {split!r}: choose {choices}")
    return lay


# ---- .pts files (300-W, generic) ---------------------------------------------------

def read_pts(path: str) -> np.ndarray:
    """Points of an ibug .pts file as written on disk (no base shift). Tolerates CRLF
    line ends and blank lines; checks the header's n_points against the body."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing landmark file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    declared = None
    points: list[tuple[float, float]] = []
    state = "header"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if state == "header":
            if line == "{":
                state = "body"
            elif line.lower().startswith("n_points"):
                try:
                    declared = int(line.split(":", 1)[1])
                except (IndexError, ValueError):
                    raise DataError(f"{path}:{lineno}: bad n_points line {line!r}") from None
            continue
        if state == "body":
            if line == "}":
                state = "done"
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                points.append((float(parts[0]), float(parts[1])))
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected two numbers 'x y', found {line!r}") from None
            continue
        raise DataError(f"{path}:{lineno}: text after the closing brace: {line!r}")
    if state == "header":
        raise DataError(f"{path}: no '{{' line: not a .pts file")
    if state == "body":
        raise DataError(f"{path}: no closing '}}' line")
    if declared is not None and declared != len(points):
        raise DataError(f"{path}: n_points says {declared} but {len(points)} points follow")
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def write_pts(path: str, points_on_disk: np.ndarray) -> None:
    """An ibug .pts file; the caller chooses the base (300-W: 1-based)."""
    lines = ["version: 1", f"n_points:  {len(points_on_disk)}", "{"]
    lines += [f"{x:.6f} {y:.6f}" for x, y in np.asarray(points_on_disk, dtype=np.float64)]
    lines.append("}")
    with open(path, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def read_occ(path: str, n: int) -> np.ndarray:
    """Per-landmark occlusion flags (0/1), whitespace separated: the synthetic set's
    sidecar `<image stem>.occ` beside the .pts (real 300-W has none)."""
    with open(path) as f:
        tokens = f.read().split()
    if len(tokens) != n or any(t not in ("0", "1") for t in tokens):
        raise DataError(f"{path}: expected {n} occlusion flags 0/1, found {len(tokens)} values")
    return np.asarray([int(t) for t in tokens], dtype=np.uint8)


# ---- 300-W / IBUG ----------------------------------------------------------------

W300_SUBSET_DIRS = {
    "afw": "afw",
    "helen_trainset": "helen/trainset",
    "helen_testset": "helen/testset",
    "lfpw_trainset": "lfpw/trainset",
    "lfpw_testset": "lfpw/testset",
    "ibug": "ibug",
}
W300_SPLITS = {
    "train": ("afw", "helen_trainset", "lfpw_trainset"),
    "common": ("helen_testset", "lfpw_testset"),
    "challenging": ("ibug",),
    "full": ("helen_testset", "lfpw_testset", "ibug"),
}
# Where the box files may sit: the root, or the folder the official zip unpacks to.
W300_BOX_DIRS = (".", "Bounding Boxes", "bounding_boxes", "Bounding_Boxes")


def find_300w_boxes(root: str, subset: str) -> str:
    name = f"bounding_boxes_{subset}.mat"
    for d in W300_BOX_DIRS:
        path = os.path.join(root, d, name)
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise DataError(f"{os.path.join(root, name)}: missing box file (also looked in "
                    f"{', '.join(repr(d) for d in W300_BOX_DIRS[1:])} under {root})")


def read_300w_boxes(path: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(imgName, bb_detector, bb_ground_truth) per entry, as on disk (1-based)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for non-MAT input
        raise DataError(f"{path}: cannot read as a MAT file ({exc})") from None
    if "bounding_boxes" not in mat:
        raise DataError(f"{path}: no variable 'bounding_boxes'")
    out = []
    for i, entry in enumerate(mat["bounding_boxes"].ravel()):
        try:
            rec = entry[0][0]
            name = str(np.asarray(rec["imgName"]).ravel()[0])
            det = np.asarray(rec["bb_detector"], dtype=np.float64).ravel()
            gt = np.asarray(rec["bb_ground_truth"], dtype=np.float64).ravel()
        except (IndexError, KeyError, ValueError, TypeError):
            raise DataError(f"{path}: entry {i + 1} is not (imgName, bb_detector, bb_ground_truth)") from None
        out.append((name, det, gt))
    return out


W300_PICTURE_EXTS = (".jpg", ".jpeg", ".png")
W300_TIGHT_BOX = "the tight box of the 68 points (what 300-W's bb_ground_truth is)"


def w300_tight_box_entries(folder: str) -> list[tuple[str, None, None]]:
    """A subset folder's pictures that have a .pts beside them, as entries without boxes: where the
    official bounding_boxes_<subset>.mat is missing, the box is then the tight box of the 68 points."""
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in W300_PICTURE_EXTS
                   and os.path.isfile(os.path.join(folder, os.path.splitext(n)[0] + ".pts")))
    return [(n, None, None) for n in names]


def read_300w(root: str, split: str, layout: str | Layout | None = None, skip_bad: bool = False) -> ReadResult:
    """300-W split `train`, `common`, `challenging` (IBUG) or `full`, boxes = bb_ground_truth.

    Takes what users have: a subset whose folder is missing is left out (the result's `source`
    lists the subsets present and absent), and a split none of whose subsets is present is an
    error naming them. A subset without its official box file takes the tight box of its 68 points
    as the box, which is how 300-W defines bb_ground_truth; `source["box_source"]` says so per subset.
    """
    lay = _reader_layout("ibug", layout, split, W300_SPLITS)
    skip = _Skipper(skip_bad)
    samples = []
    listed = 0
    present, absent, box_source, sources = [], [], {}, []
    for subset in W300_SPLITS[split]:
        folder = os.path.join(root, W300_SUBSET_DIRS[subset])
        try:
            box_file = find_300w_boxes(root, subset)
        except DataError:
            box_file = None
        if not os.path.isdir(folder):
            if box_file is not None:
                raise DataError(f"{folder}: missing picture folder of subset {subset} (its box file is {box_file})")
            absent.append(subset)
            continue
        present.append(subset)
        if box_file is not None:
            entries = read_300w_boxes(box_file)
            box_source[subset] = os.path.relpath(box_file, root)
        else:
            entries = w300_tight_box_entries(folder)
            box_source[subset] = W300_TIGHT_BOX
        where = box_file or folder
        sources.append(where)
        listed += len(entries)
        for i, (name, _det, gt) in enumerate(entries):
            sample_id = f"{W300_SUBSET_DIRS[subset]}/{name}"
            image_path = os.path.join(folder, name)
            try:
                if not os.path.isfile(image_path):
                    raise DataError(f"{image_path}: missing image file (entry {i + 1} of {where})")
                pts_path = os.path.splitext(image_path)[0] + ".pts"
                pts = read_pts(pts_path) - 1.0
                check_points(pts, pts_path)
                if gt is None:
                    box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
                    box_where = f"{pts_path} (tight box of its points)"
                else:
                    box = gt - 1.0
                    box_where = f"{box_file} (entry {i + 1}, {name})"
                occ = None
                occ_path = os.path.splitext(image_path)[0] + ".occ"
                if os.path.isfile(occ_path):
                    occ = read_occ(occ_path, len(pts))
                pts, occ = _to_layout(pts, occ, lay, pts_path)
                check_box(box, box_where)
            except DataError as err:
                skip.bad(err, sample_id)
                continue
            samples.append(Sample(sample_id, lay.name, pts, box, occ, image_path=image_path))
    if not present:
        looked = ", ".join(os.path.join(root, W300_SUBSET_DIRS[s]) for s in W300_SPLITS[split])
        raise DataError(f"{root}: 300-W split {split!r} has none of its subsets here (looked for {looked})")
    if not listed:
        raise DataError(f"{', '.join(sources)}: no faces listed: split {split!r} is empty")
    return ReadResult(samples, skip.skipped, {"split": split, "subsets": present, "absent": absent,
                                              "box_source": box_source})


# ---- COFW ------------------------------------------------------------------------

COFW_FILES = {"train": ("COFW_train_color.mat", "COFW_train.mat"), "test": ("COFW_test_color.mat", "COFW_test.mat")}
COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def _to_gray(img: np.ndarray, where: str) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint8:
        if img.size and np.nanmax(img) <= 1.0:  # MATLAB double images are 0..1
            img = img * 255.0
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)  # MATLAB images are RGB
    raise DataError(f"{where}: unreadable image of shape {img.shape}")


def read_cofw(root: str, split: str, layout: str | Layout | None = None, skip_bad: bool = False) -> ReadResult:
    """COFW `train` (1,345) or `test` (507) from the MATLAB v7.3 files, via h5py."""
    import h5py

    lay = _reader_layout("cofw", layout, split, COFW_FILES, fixed=True)
    candidates = [os.path.join(root, n) for n in COFW_FILES[split]]
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise DataError(f"{candidates[0]}: missing COFW file")
    fname = os.path.basename(path)
    ikey, pkey, bkey = COFW_KEYS[split]
    skip = _Skipper(skip_bad)
    samples = []
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise DataError(f"{path}: not a MATLAB v7.3 (HDF5) file; save it with -v7.3") from None
    with f:
        for key in (ikey, pkey, bkey):
            if key not in f:
                raise DataError(f"{path}: no variable {key!r}")
        refs = np.asarray(f[ikey]).ravel()
        phis = np.asarray(f[pkey], dtype=np.float64)
        boxes = np.asarray(f[bkey], dtype=np.float64)
        if phis.ndim != 2 or 87 not in phis.shape:
            raise DataError(f"{path}: {pkey} has shape {phis.shape}, expected (87, N)")
        if phis.shape[0] != 87:  # tolerate a file saved already transposed
            phis = phis.T
        if boxes.shape[0] != 4:
            boxes = boxes.T
        n = len(refs)
        if n == 0:
            raise DataError(f"{path}: {ikey} holds no faces: split {split!r} is empty")
        if boxes.ndim != 2 or 4 not in boxes.shape:
            raise DataError(f"{path}: {bkey} has shape {boxes.shape}, expected (4, N)")
        if phis.shape[1] != n or boxes.shape[1] != n:
            raise DataError(f"{path}: {ikey} has {n} images but {pkey} {phis.shape[1]} "
                            f"and {bkey} {boxes.shape[1]} faces")
        for i in range(n):
            sample_id = f"{fname}#{i + 1:04d}"
            where = f"{path} (face {i + 1})"
            try:
                try:
                    img = np.asarray(f[refs[i]]).T  # MATLAB stores arrays column-major
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{where}: unreadable image reference") from None
                image = _to_gray(img, where)
                phi = phis[:, i]
                pts = np.stack([phi[0:29], phi[29:58]], axis=1) - 1.0
                check_points(pts, where)
                occ = (phi[58:87] > 0.5).astype(np.uint8)
                left, top, width, height = boxes[:, i]
                box = np.array([left - 1.0, top - 1.0, left - 1.0 + width, top - 1.0 + height])
                check_box(box, where)
            except DataError as err:
                skip.bad(err, sample_id)
                continue
            samples.append(Sample(sample_id, lay.name, pts, box, occ, image=image))
    return ReadResult(samples, skip.skipped)


# ---- MTFL / AFLW -----------------------------------------------------------------

MTFL_FILES = {"train": "training.txt", "test": "testing.txt"}
MTFL_FIELDS = (11, 15)  # path + x1..x5 y1..y5 (+ gender smile glasses pose)
# [interp] MTFL gives no boxes. Box rule: a square centred on the tight box of the five
# points, side = MTFL_BOX_SCALE x the larger side of that tight box. The five points
# span eye-to-mouth (about 0.4 of a face's height) and eye-to-eye (about 0.45 of its
# width), so 2.2 gives a detector-like box around the whole face; the larger side
# keeps profile faces (eyes close together) at the right size.
MTFL_BOX_SCALE = 2.2


def mtfl_box(points: np.ndarray, scale: float = MTFL_BOX_SCALE) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    c = (lo + hi) / 2
    half = scale * max(hi[0] - lo[0], hi[1] - lo[1]) / 2
    return np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])


def read_mtfl(root: str, split: str, layout: str | Layout | None = None, skip_bad: bool = False) -> ReadResult:
    """MTFL/AFLW `train` (training.txt) or `test` (testing.txt); coordinates 0-based as given."""
    lay = _reader_layout("mtfl", layout, split, MTFL_FILES, fixed=True)
    path = os.path.join(root, MTFL_FILES[split])
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing annotation file")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    skip = _Skipper(skip_bad)
    samples = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        rel = fields[0].replace("\\", "/")
        where = f"{path}:{lineno}"
        try:
            # MTFL's lines: path, 10 coordinates, 4 attributes; net_rest's: path and 10 coordinates.
            # Any other count is a line with a number missing or extra, which would shift every field.
            if len(fields) not in MTFL_FIELDS:
                raise DataError(f"{where}: expected an image path and 10 coordinates (MTFL adds 4 attributes), "
                                f"found {len(fields)} fields")
            try:
                vals = np.array([float(v) for v in fields[1:11]])
            except ValueError:
                raise DataError(f"{where}: coordinates are not numbers: {' '.join(fields[1:11])}") from None
            pts = np.stack([vals[:5], vals[5:]], axis=1)  # all x first, then all y
            check_points(pts, where)
            image_path = os.path.join(root, rel)
            if not os.path.isfile(image_path):
                raise DataError(f"{where}: missing image file {image_path}")
            box = mtfl_box(pts)
            check_box(box, where)
        except DataError as err:
            skip.bad(err, rel)
            continue
        samples.append(Sample(rel, lay.name, pts, box, None, image_path=image_path))
    if not samples and not skip.skipped:
        raise DataError(f"{path}: lists no faces: split {split!r} is empty")
    return ReadResult(samples, skip.skipped)


# ---- generic: image list + .pts + box file -----------------------------------------

GENERIC_FILES = {"train": ("train_images.txt", "train_boxes.txt"), "test": ("test_images.txt", "test_boxes.txt")}


def read_box_lines(path: str) -> list[tuple[int, np.ndarray]]:
    """The authors' box file: one face per line, `left right top bottom` (that order),
    as [left top right bottom] = [x1 y1 x2 y2] on disk, with line numbers."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing box file")
    out = []
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 4:
                raise ValueError
            left, right, top, bottom = (float(v) for v in fields)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected 'left right top bottom', found {line.strip()!r}") from None
        out.append((lineno, np.array([left, top, right, bottom])))
    return out


def read_generic(root: str, split: str, layout: str | Layout | None = None, skip_bad: bool = False,
                 base: int = 1) -> ReadResult:
    """`<split>_images.txt` (one image path per line, relative to root), a .pts beside
    each image, `<split>_boxes.txt` (one `left right top bottom` line per image, same
    order). `base` = 1 (default, MATLAB style like 300-W) or 0: subtracted from both."""
    lay = _reader_layout("generic", layout, split, GENERIC_FILES)
    list_path, box_path = (os.path.join(root, n) for n in GENERIC_FILES[split])
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: missing image list")
    with open(list_path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    images = [(i, ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip()]
    if not images:
        raise DataError(f"{list_path}: lists no images: split {split!r} is empty")
    boxes = read_box_lines(box_path)
    if len(boxes) != len(images):
        raise DataError(f"{box_path}: has {len(boxes)} boxes but {list_path} lists {len(images)} images")
    skip = _Skipper(skip_bad)
    samples = []
    for (lineno, rel), (box_line, box) in zip(images, boxes):
        rel = rel.replace("\\", "/")
        image_path = os.path.join(root, rel)
        try:
            if not os.path.isfile(image_path):
                raise DataError(f"{list_path}:{lineno}: missing image file {image_path}")
            pts_path = os.path.splitext(image_path)[0] + ".pts"
            pts = read_pts(pts_path) - base
            check_points(pts, pts_path)
            pts, occ = _to_layout(pts, None, lay, pts_path)
            box = box - base
            check_box(box, f"{box_path}:{box_line}")
        except DataError as err:
            skip.bad(err, rel)
            continue
        samples.append(Sample(rel, lay.name, pts, box, occ, image_path=image_path))
    return ReadResult(samples, skip.skipped)


# ---- one entry point per dataset name -----------------------------------------------

DATASETS = tuple(datasets.DATASETS)
READERS = {f.__name__: f for f in (read_300w, read_cofw, read_mtfl, read_generic)}


def read_dataset(dataset: str, root: str, layout: str | None, test_split: str = "challenging",
                 skip_bad: bool = False, base: int = 1) -> tuple[ReadResult, ReadResult]:
    """(train, test) of a dataset, read by the reader the dataset table names (`synth` is read as
    300-W: it is written that way). `test_split` chooses 300-W's test set; `base` is the generic
    format's coordinate base."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: data root is not a folder")
    if dataset not in datasets.DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    spec = datasets.DATASETS[dataset]
    read, layout = READERS[spec.reader], layout or spec.layout
    extra = {"base": base} if read is read_generic else {}
    test = test_split if read is read_300w else "test"
    return read(root, "train", layout, skip_bad, **extra), read(root, test, layout, skip_bad, **extra)
