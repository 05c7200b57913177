"""Landmarks on a video or a camera, frame by frame, with tracking.

A face is detected once; in every later frame its box comes from its landmarks in the frame
before (the tight box of those landmarks, scaled and shifted as the first box related to the
first landmarks, so the model keeps seeing the face framed as it was trained), as real-time
trackers do. The detector runs again only when no face is tracked: at the start, and when a
track is lost (its box jumps, shrinks or grows by more than LOST_SCALE between frames, or
leaves the picture).

Output: an annotated video (`<stem>_landmarks.mp4`) and one JSON (`<stem>.json`) whose `frames`
list holds each frame's `faces` as a picture's JSON does (box, landmarks, detector), plus the
track's number and whether the box came from the detector or the track. Both are written only
once the whole video has been read, atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mcl.fileio import atomic_write, durable_replace
from mcl.port.detect import DEFAULT_DETECTOR, Detector
from mcl.port.predict import PredictError, Predictor, annotate, face_record, find_faces, load

LOST_SCALE = 1.5  # box side ratio between frames beyond which a track is lost
LOST_SHIFT = 0.5  # centre move between frames, in box sides, beyond which a track is lost
FOURCC = "mp4v"


def tight(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)])


def relation(box, points: np.ndarray) -> np.ndarray:
    """The box in units of the tight box of the landmarks predicted in it."""
    t = tight(points)
    w, h = max(t[2] - t[0], 1e-6), max(t[3] - t[1], 1e-6)
    return np.array([(box[0] - t[0]) / w, (box[1] - t[1]) / h, (box[2] - t[0]) / w, (box[3] - t[1]) / h])


def next_box(points: np.ndarray, rel: np.ndarray) -> np.ndarray:
    t = tight(points)
    w, h = t[2] - t[0], t[3] - t[1]
    return np.array([t[0] + rel[0] * w, t[1] + rel[1] * h, t[0] + rel[2] * w, t[1] + rel[3] * h])


def lost(prev, box, shape) -> bool:
    if not np.all(np.isfinite(box)):
        return True
    side0, side1 = max(prev[2] - prev[0], prev[3] - prev[1]), max(box[2] - box[0], box[3] - box[1])
    if side1 < 4 or not 1 / LOST_SCALE <= side1 / side0 <= LOST_SCALE:
        return True
    if np.linalg.norm((box[:2] + box[2:]) / 2 - (prev[:2] + prev[2:]) / 2) > LOST_SHIFT * side0:
        return True
    h, w = shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return not (0 <= cx < w and 0 <= cy < h)


class Tracker:
    """Faces followed from frame to frame; detection only while none is tracked."""

    def __init__(self, predictor: Predictor, detector: Detector, convention: str | None = None,
                 max_faces: int = 1):
        self.predictor, self.detector, self.convention, self.max_faces = predictor, detector, convention, max_faces
        self.tracks: list[dict] = []  # each: id, box, rel, landmarks
        self.next_id = 0
        self.detections = 0

    def step(self, gray: np.ndarray, colour: np.ndarray | None = None) -> list[dict]:
        faces, kept = [], []
        for tr in self.tracks:
            box = next_box(tr["landmarks"], tr["rel"])
            if lost(tr["box"], box, gray.shape):
                continue
            points = self.predictor.predict(gray, box)
            tr.update(box=box, landmarks=points)
            kept.append(tr)
            faces.append({**face_record(points, box, self.detector.name), "track": tr["id"], "source": "track"})
        self.tracks = kept
        if not self.tracks:
            self.detections += 1
            for face in find_faces(self.predictor, gray, self.detector, self.convention,
                                   colour=colour)[:self.max_faces]:
                points = np.asarray(face["landmarks"])
                tr = {"id": self.next_id, "box": np.asarray(face["box"]), "landmarks": points,
                      "rel": relation(face["box"], points)}
                self.next_id += 1
                self.tracks.append(tr)
                faces.append({**face, "track": tr["id"], "source": "detector"})
        return faces


def open_video(source) -> tuple[cv2.VideoCapture, str]:
    """A file, or a camera by its index (a string of digits)."""
    camera = isinstance(source, int) or (isinstance(source, str) and source.isdigit())
    if not camera and not os.path.isfile(source):
        raise PredictError(f"{source}: missing video file")
    cap = cv2.VideoCapture(int(source) if camera else str(source))
    if not cap.isOpened():
        raise PredictError(f"{source}: not a video OpenCV can read" if not camera
                           else f"camera {source}: cannot be opened")
    return cap, (f"camera{source}" if camera else Path(source).stem)


def run_video(source, out, model, crop_scale=None, layout=None, output=None, test_crop=None,
              detector: str = DEFAULT_DETECTOR, convention: str | None = None, upsample: int = 1, max_faces: int = 1,
              max_frames: int | None = None, progress: bool = True, log=print) -> list[Path]:
    """Every frame of `source` through the tracker; the annotated video and the JSON written at the end."""
    predictor, det = load(model, crop_scale, layout, output, test_crop, detector, upsample)
    if det is None:
        raise PredictError(f"{source}: a video needs a detector (--detector {DEFAULT_DETECTOR}, opencv or dlib)")
    return track_video(predictor, det, source, out, convention, max_faces, max_frames, progress, log)


def track_video(predictor: Predictor, detector: Detector, source, out, convention: str | None = None,
                max_faces: int = 1, max_frames: int | None = None, progress: bool = True, log=print) -> list[Path]:
    cap, stem = open_video(source)
    out = Path(out)
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    tracker = Tracker(predictor, detector, convention, max_faces)
    frames, writer, tmp_video = [], None, None
    final_video = out / f"{stem}_landmarks.mp4"
    seconds = 0.0
    try:
        with tqdm(total=total, unit="frame", desc=stem, disable=not progress, dynamic_ncols=True) as bar:
            while max_frames is None or len(frames) < max_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                t = time.perf_counter()
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
                faces = tracker.step(gray, frame if frame.ndim == 3 else None)
                seconds += time.perf_counter() - t
                frames.append({"frame": len(frames), "faces": faces})
                if writer is None:
                    out.mkdir(parents=True, exist_ok=True)
                    tmp_video = out / f".{stem}_landmarks.tmp.mp4"
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*FOURCC), fps_in, (w, h))
                    if not writer.isOpened():
                        raise PredictError(f"{tmp_video}: OpenCV cannot write an {FOURCC} video here")
                writer.write(annotate(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), faces))
                bar.update(1)
        if not frames:
            raise PredictError(f"{source}: not a video OpenCV can read (no frame decoded)")
        writer.release()
        writer = None
        fps = len(frames) / seconds if seconds > 0 else float("inf")
        doc = {"video": str(source), "model": predictor.model_path, "layout": predictor.layout.name,
               "crop_scale": predictor.crop_scale, "test_crop": predictor.test_crop, "points_base": 0,
               "detector": detector.name, "box_convention": convention or predictor.convention, "fps_in": fps_in,
               "fps": fps, "detections": tracker.detections,
               "detector_ms": 1e3 * detector.seconds / max(detector.calls, 1), "frames": frames}
        final_json = out / f"{stem}.json"
        durable_replace(tmp_video, final_video)
        tmp_video = None
        atomic_write(final_json, json.dumps(doc, indent=1) + "\n")
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if tmp_video is not None and tmp_video.exists():
            tmp_video.unlink()
    log(f"predict: {len(frames)} frames at {fps:.1f} fps (tracking and landmarks, one thread; the detector "
        f"ran on {tracker.detections} frames, {doc['detector_ms']:.1f} ms each)")
    return [final_video, final_json]
