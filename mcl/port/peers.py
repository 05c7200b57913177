"""A peer on the same faces: dlib's 68-point shape predictor (an ensemble of regression trees, Kazemi
and Sullivan 2014) on a run's test split, as a predictions file `tools/evaluate.py --predictions`
scores beside our models (tools/peers.py, `make peers`).

dlib reads the split's original pictures (named by the run's data manifest, in the split's order)
and is run twice:
  box       in the split's own box of each face, mapped onto dlib's detector convention (the inverse
            of mcl.port.detect's mapping for the dataset; its model expects its detector's boxes)
  detector  in the box of dlib's own HOG detector: the detection overlapping the face's box most;
            where it finds none, the face keeps its `box` prediction (the count is reported)

Both are written as `RUN/peers/dlib_box.txt` and `dlib_detector.txt` (1-based, one face per line,
the layout of the run: 5 or 29 points derived from dlib's 68 as the data preparation derives them),
with `RUN/peers/peers.json`: their scores, speeds and the model's terms. The model is Debian's
`libdlib-data` file (`make setup-peers`), trained on 300-W, whose licence excludes commercial use
(docs/PORT.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mcl.data.readers import DataError, load_image, read_dataset
from mcl.data.splits import SplitError, load_split
from mcl.evaluation.evaluate import score
from mcl.evaluation.predictions import format_predictions
from mcl.fileio import atomic_write
from mcl.method.layouts import derive_from_68, get_layout
from mcl.port.detect import SETUP_HINT, Detector, best_match, convention_of, unmap_box

try:  # optional: `make setup-peers`
    import dlib
except ImportError:  # named in PeerError when a peer is asked for
    dlib = None

DLIB_MODEL = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
VARIANTS = ("box", "detector")
TERMS = ("dlib's shape_predictor_68_face_landmarks.dat is trained on the iBUG 300-W data set, whose licence "
         "excludes commercial use; its author notes that the model therefore cannot be used in a commercial "
         "product without clearing that with Imperial College London (dlib-models README). Debian's "
         "libdlib-data states the file itself as CC0 1.0.")


class PeerError(ValueError):
    """A peer that cannot run (dlib missing, its model missing or unreadable, the split's pictures missing)."""


def shape_predictor(path=DLIB_MODEL):
    if dlib is None:
        raise PeerError(f"dlib is not installed: {SETUP_HINT}")
    path = Path(path)
    if not path.is_file():
        raise PeerError(f"{path}: missing dlib shape predictor model (apt-get install libdlib-data, or "
                        "`make setup-peers`)")
    try:
        return dlib.shape_predictor(str(path))
    except RuntimeError as exc:
        raise PeerError(f"{path}: not a dlib shape predictor dlib can read ({exc})") from None


def rect(box):
    """A dlib rectangle (integer first and last pixel) for a 0-based box."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return dlib.rectangle(x1, y1, x2, y2)


def shape_points(sp, gray: np.ndarray, box) -> np.ndarray:
    s = sp(gray, rect(box))
    return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64)


def split_samples(run: Path, split: str = "test"):
    """(samples, data, dataset, layout): the split's faces as the readers give them, in the split's order,
    each matched to its row of the split's HDF5 by its landmarks."""
    if split != "test":
        raise PeerError(f"split {split!r}: the peers run on the test split (its faces are the dataset's test faces)")
    manifest_path = Path(run) / "data" / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        source, settings = manifest["source"], manifest["settings"]
        data = load_split(run, split)
    except (OSError, ValueError, KeyError) as exc:
        raise PeerError(f"{manifest_path}: cannot read the run's prepared data ({exc})") from None
    except SplitError as exc:
        raise PeerError(str(exc)) from None
    root = Path(source["data_root"])
    root = root if root.is_absolute() else Path(run) / "data" / root
    layout = get_layout(settings["layout"])
    try:
        _, test = read_dataset(source["dataset"], str(root), layout.name, settings.get("test_split", "challenging"),
                               settings.get("skip_bad", False), settings.get("coords_base", 1))
    except DataError as exc:
        raise PeerError(f"the pictures of {run}'s test split: {exc}") from None
    gt = data["landmarks_image"].reshape(len(data["data"]), layout.n_points, 2)
    samples, k = [], 0
    for s in test.samples:
        if k < len(gt) and np.allclose(s.landmarks, gt[k], atol=1e-4):
            samples.append(s)
            k += 1
    if k != len(gt):
        raise PeerError(f"{root}: its test faces do not match {run}'s test split ({k} of {len(gt)} found in order)")
    return samples, data, source["dataset"], layout


def run_dlib(run, model=DLIB_MODEL, out=None, upsample: int = 1, log=print) -> dict:
    """dlib on the run's test split, both variants; writes the predictions files and peers.json."""
    run = Path(run)
    out = Path(out) if out else run / "peers"
    sp = shape_predictor(model)
    detector = Detector.create("dlib", upsample)
    samples, data, dataset, layout = split_samples(run)
    convention = convention_of(dataset)
    preds = {v: [] for v in VARIANTS}
    ert_s, found, sizes = [], 0, []
    for s in samples:
        gray = np.ascontiguousarray(load_image(s))
        sizes.append(gray.shape[:2])
        box = unmap_box(s.box, "dlib", convention)
        t = time.perf_counter()
        p_box = shape_points(sp, gray, box)
        ert_s.append(time.perf_counter() - t)
        dets = detector.detect(gray)
        k = best_match(dets, s.box, "dlib", convention)
        p_det = p_box if k is None else shape_points(sp, gray, dets[k])
        found += k is not None
        preds["box"].append(derive_from_68(p_box, layout))
        preds["detector"].append(derive_from_68(p_det, layout))
    files, results = {}, {}
    for v in VARIANTS:
        pts = np.stack(preds[v])
        results[f"dlib ({v})"] = score(pts, data, layout)
        files[v] = (out / f"dlib_{v}.txt", format_predictions(pts))
    n = len(samples)
    doc = {"peer": "dlib shape_predictor_68_face_landmarks (ensemble of regression trees)",
           "dlib_version": getattr(dlib, "__version__", None), "model": str(model), "terms": TERMS,
           "dataset": dataset, "layout": layout.name, "faces": n, "box_convention": convention,
           "files": {v: str(p) for v, (p, _) in files.items()},
           "detector": {"name": "dlib HOG (get_frontal_face_detector)", "upsample": upsample, "found": found,
                        "missed_kept_box_prediction": n - found,
                        "ms_per_picture": 1e3 * detector.seconds / max(detector.calls, 1),
                        "picture_sizes": sorted({f"{w}x{h}" for h, w in sizes})},
           "ert_ms_per_face": 1e3 * float(np.median(ert_s)), "results": results}
    for path, text in files.values():
        atomic_write(path, text)
    atomic_write(out / "peers.json", json.dumps(doc, indent=1) + "\n")
    for name, r in results.items():
        log(f"peers: {name}: mean error {100 * r['inter_ocular']['mean_error']:.2f}% of d, failure "
            f"{100 * r['inter_ocular']['failure_rate']['0.10']:.1f}% on {n} faces")
    log(f"peers: dlib's detector found {found} of {n} faces ({doc['detector']['ms_per_picture']:.1f} ms per "
        f"picture); ERT {doc['ert_ms_per_face']:.2f} ms per face; wrote {', '.join(str(p) for p, _ in files.values())}"
        f", {out / 'peers.json'}")
    return doc
