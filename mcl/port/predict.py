"""Landmarks from a ported ONNX model, without Caffe: the evaluation's crop, its normalisation,
its mapping back to the picture; the faces found by a detector (mcl.port.detect) when no box is given.

The crop is `mcl.data.augment.box_crop` (the pixels of crop_face, the val/test crop the data preparation writes),
the pixels `mcl.data.writers.network_input` ((p - 128) * 0.0078125), and the mapping back
`mcl.evaluation.evaluate.to_image` through the crop's crop_to_image: the same functions the
evaluation's numbers come from.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mcl.data.augment import DEFAULT_TEST_CROP, TEST_CROPS, box_crop, invert_affine
from mcl.data.readers import DataError, Sample, check_box, decode_picture, load_image, write_pts
from mcl.data.writers import network_input
from mcl.evaluation.evaluate import to_image
from mcl.fileio import atomic_write, durable_replace
from mcl.method.datasets import DATASETS
from mcl.method.layouts import INPUT_SIZE, Layout, get_layout
from mcl.port.detect import CONVENTIONS, DetectError, Detector, convention_of, map_box

DEFAULT_CROP_SCALE = DATASETS["ibug"].crop_scale  # data_prep's default for 300-W and the synthetic set


class PredictError(ValueError):
    """A model, picture or box the predictor cannot use; names the file."""


@dataclass
class Predictor:
    session: object
    input_name: str
    output: str
    layout: Layout
    crop_scale: float
    model_path: str
    test_crop: str = DEFAULT_TEST_CROP  # the evaluation's test-crop protocol: ours | authors
    dataset: str | None = None  # what the model was trained on (its box convention), when known
    box_convention: str | None = None  # the card's, where it states one (the in-box models' cards do)

    @property
    def convention(self) -> str:
        """The box convention of the model's training faces: its card's, else that of its dataset."""
        return self.box_convention or convention_of(self.dataset)

    @classmethod
    def from_onnx(cls, path, crop_scale: float | None = None, layout: str | None = None,
                  output: str | None = None, threads: int = 1, test_crop: str | None = None) -> Predictor:
        """The model and its card (`<model>.json`, written by the port): layout, output, crop scale
        and test-crop protocol (the run's, recorded by the port). A `.pt` file is a TorchScript model
        (`<name>.int8.pt`, mcl.port.quantize), run by PyTorch on `threads` threads."""
        path = Path(path)
        if not path.exists():
            raise PredictError(f"{path}: missing model (ONNX, or TorchScript .pt)")
        card_path = path.with_name(path.name + ".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        if path.suffix == ".pt":
            sess = TorchSession(path, threads, card)
        else:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            try:
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several kinds for a bad file
                raise PredictError(f"{path}: not an ONNX model ONNX Runtime can load ({exc})") from None
        outputs = [o.name for o in sess.get_outputs()]
        output = output or outputs[0]
        if output not in outputs:
            raise PredictError(f"{path}: has no output {output!r} (has {', '.join(outputs)})")
        width = sess.get_outputs()[outputs.index(output)].shape[-1]
        name = layout or card.get("layout")
        if name is None:
            hits = [n for n in ("5", "29", "68") if isinstance(width, int) and get_layout(n).n_points * 2 == width]
            if len(hits) != 1:
                raise PredictError(f"{path}: layout unknown (no card); give --layout")
            name = hits[0]
        lay = get_layout(name)
        if isinstance(width, int) and width != 2 * lay.n_points:
            raise PredictError(f"{path}: output {output!r} has {width} values, layout {name} needs {2 * lay.n_points}")
        scale = crop_scale if crop_scale is not None else card.get("crop_scale", DEFAULT_CROP_SCALE)
        protocol = test_crop or card.get("test_crop", DEFAULT_TEST_CROP)
        if protocol not in TEST_CROPS:
            raise PredictError(f"test-crop protocol {protocol!r}: choose one of {', '.join(TEST_CROPS)}")
        return cls(sess, sess.get_inputs()[0].name, output, lay, float(scale), str(path), protocol,
                   card.get("dataset") or _run_dataset(path), card.get("box_convention"))

    def crop(self, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        """(network input (1, 1, 50, 50), crop_to_image (1, 2, 3)) of one face, as the evaluation crops it."""
        box = np.asarray(box, dtype=np.float64).ravel()
        try:
            check_box(box, "--box")
        except DataError as exc:
            raise PredictError(str(exc)) from None
        crop, A = box_crop(image, box, self.crop_scale, self.test_crop)  # the evaluation's pixels (crop_face)
        return network_input(crop[None]), invert_affine(A)[None]

    def predict(self, image: np.ndarray, box) -> np.ndarray:
        """(n, 2) landmarks in picture coordinates (0-based pixel centres) of the face in `box`."""
        x, crop_to_image = self.crop(image, box)
        pred = self.session.run([self.output], {self.input_name: x})[0]
        return to_image(pred, crop_to_image)[0]


class TorchSession:
    """A TorchScript landmark model behind the part of ONNX Runtime's session the predictor uses: one input
    (`data`, the card's), one output (its name and width from the card, else `shape_pred` and the model's)."""

    class _Port:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    def __init__(self, path: Path, threads: int, card: dict):
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # (TorchScript: deprecated in PyTorch 2.13)
                self.module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch.jit.load raises several kinds for a bad file
            raise PredictError(f"{path}: not a TorchScript model PyTorch can load ({exc})") from None
        torch.set_num_threads(threads)
        self.torch = torch
        outputs = card.get("outputs") or [{}]
        name = outputs[0].get("name", "shape_pred")
        with torch.no_grad():
            width = int(self.module(torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE)).shape[-1])
        self.inputs, self.outputs = [self._Port("data", [1, 1, INPUT_SIZE, INPUT_SIZE])], [self._Port(name, [1, width])]

    def get_inputs(self):
        return self.inputs

    def get_outputs(self):
        return self.outputs

    def run(self, names, feeds: dict) -> list:
        (x,) = feeds.values()
        with self.torch.no_grad():
            return [self.module(self.torch.from_numpy(x)).numpy()]


def _run_dataset(model: Path) -> str | None:
    """The dataset of the run a model was ported from, for `make port`'s RUN/port/<model>.onnx."""
    manifest = model.resolve().parents[1] / "data" / "manifest.json"
    try:
        return json.loads(manifest.read_text())["source"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def face_record(points: np.ndarray, box, detector: str, detector_box=None) -> dict:
    """One face as the JSON holds it (keys read by scripts outside the project: box, landmarks, detector)."""
    return {"box": [float(v) for v in box], "landmarks": [[float(x), float(y)] for x, y in points],
            "detector": detector, "detector_box": None if detector_box is None else [float(v) for v in detector_box]}


def find_faces(predictor: Predictor, gray: np.ndarray, detector: Detector, convention: str | None = None,
               where: str = "picture", colour: np.ndarray | None = None) -> list[dict]:
    """Every face the detector finds, largest first: its box mapped onto the model's box convention
    (default: that of the dataset the model was trained on), and the landmarks in that box. `colour`: the
    same picture in colour (BGR), which the detector sees where given (MediaPipe finds more faces in it)."""
    convention = convention or predictor.convention
    if convention not in CONVENTIONS:
        raise PredictError(f"box convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    faces = []
    for det in detector.detect(gray if colour is None else colour):
        box = map_box(det, detector.name, convention)
        faces.append(face_record(predictor.predict(gray, box), box, detector.name, det))
    return faces


def detect_faces(predictor: Predictor, image, detector: Detector, convention: str | None = None) -> list[dict]:
    """find_faces on a picture file; no face found is an error naming the file."""
    faces = find_faces(predictor, read_gray(image), detector, convention, colour=read_colour(image))
    if not faces:
        raise PredictError(f"{image}: no face found by the {detector.name} detector (give --box, or try another "
                           "--detector)")
    return faces


def make_detector(name: str, upsample: int = 1) -> Detector:
    try:
        return Detector.create(name, upsample)
    except DetectError as exc:
        raise PredictError(str(exc)) from None


def read_colour(path) -> np.ndarray:
    """The picture in 8-bit BGR colour for the detector (read_gray has already named a broken file)."""
    try:
        return decode_picture(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except DataError as exc:
        raise PredictError(str(exc)) from None


def read_gray(path) -> np.ndarray:
    """The picture's gray pixels exactly as the data preparation reads them; a picture that does not
    decode whole (cut short, empty, not a picture) is a PredictError naming it as broken, before any
    detector looks for a face in its gray rows (mcl.data.readers.decode_picture)."""
    try:
        return load_image(Sample(str(path), "", np.zeros((0, 2)), np.zeros(4), image_path=str(path)))
    except DataError as exc:
        raise PredictError(str(exc)) from None


def read_list(path) -> list[tuple[str, list[float] | None]]:
    """Lines `image x1 y1 x2 y2` (0-based pixels; image relative to the list's folder), or `image`
    alone (its faces found by the detector)."""
    out = []
    base = Path(path).parent
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if len(parts) not in (1, 5):
                raise ValueError
            box = [float(v) for v in parts[1:]] or None
        except ValueError:
            raise PredictError(f"{path}:{i}: expected 'image x1 y1 x2 y2' or 'image', found {line!r}") from None
        image = Path(parts[0])
        out.append((str(image if image.is_absolute() else base / image), box))
    return out


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """The faces' boxes (orange) and landmarks (green) drawn on a BGR picture, in place."""
    h, w = image.shape[:2]
    r = max(1, round(max(h, w) / 250))

    def at(p):  # 4 bits of sub-pixel precision
        return round(float(p[0]) * 16), round(float(p[1]) * 16)

    for face in faces:
        x1, y1, x2, y2 = face["box"]
        cv2.rectangle(image, at((x1, y1)), at((x2, y2)), (0, 200, 255), r, cv2.LINE_AA, 4)
        for p in face["landmarks"]:
            cv2.circle(image, at(p), r * 16, (60, 255, 60), -1, cv2.LINE_AA, 4)
    return image


def draw(path, faces: list[dict]) -> np.ndarray:
    """The faces drawn on the picture in colour, decoded as strictly as its gray pixels were (a file
    cut short is named as broken, not drawn with gray rows)."""
    try:
        image = decode_picture(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except DataError as exc:
        raise PredictError(str(exc)) from None
    return annotate(image, faces)


def picture_record(image_path, faces: list[dict], predictor: Predictor, convention: str | None) -> dict:
    """A picture's JSON: the model and crop, then `faces` (each: box, landmarks, detector). `box` and
    `points` repeat the first face, as the one-face files of earlier versions held them."""
    return {"image": str(image_path), "model": predictor.model_path, "layout": predictor.layout.name,
            "crop_scale": predictor.crop_scale, "test_crop": predictor.test_crop, "points_base": 0,
            "box_convention": convention, "faces": faces, "box": faces[0]["box"], "points": faces[0]["landmarks"]}


def write_outputs(out, image_path, faces: list[dict], predictor: Predictor, stem: str | None = None,
                  convention: str | None = None) -> list[Path]:
    """<stem>.json (0-based points), <stem>.pts (1-based, as 300-W writes them; the first face, then
    <stem>_1.pts ... for the others), <stem>_landmarks.png (every face)."""
    out = Path(out)
    stem = stem or Path(image_path).stem
    png = cv2.imencode(".png", draw(image_path, faces))[1].tobytes()  # before anything is written
    paths = [out / f"{stem}.json"]
    atomic_write(paths[0], json.dumps(picture_record(image_path, faces, predictor, convention), indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for k, face in enumerate(faces):
        name = f"{stem}.pts" if k == 0 else f"{stem}_{k}.pts"
        tmp = out / f".{name}.tmp"
        write_pts(str(tmp), np.asarray(face["landmarks"]) + 1.0)
        durable_replace(tmp, out / name)
        paths.append(out / name)
    paths.append(out / f"{stem}_landmarks.png")
    atomic_write(paths[-1], png)
    return paths


def load(model, crop_scale=None, layout=None, output=None, test_crop=None, detector: str = "none",
         upsample: int = 1) -> tuple[Predictor, Detector | None]:
    """The model, on one thread, and the detector (None for `none`)."""
    predictor = Predictor.from_onnx(model, crop_scale, layout, output, test_crop=test_crop)
    return predictor, (None if detector == "none" else make_detector(detector, upsample))


def predict_pictures(image, box, listing, out, model, crop_scale=None, layout=None, output=None, test_crop=None,
                     detector: str = "none", convention: str | None = None, upsample: int = 1) -> list[list[Path]]:
    """tools/predict.py on pictures: every picture's faces (its box, or the detector's), all computed before
    anything is written, so that a bad picture or a picture without a face leaves nothing behind."""
    if convention is not None and convention not in CONVENTIONS:
        raise PredictError(f"box convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    predictor, det = load(model, crop_scale, layout, output, test_crop, detector, upsample)
    items = read_list(listing) if listing else [(image, box)]
    used = convention or predictor.convention
    results = []
    for path, face_box in items:
        if face_box is not None:
            results.append([face_record(predictor.predict(read_gray(path), face_box), face_box, "none")])
        elif det is None:
            raise PredictError(f"{path}: no --box given and --detector none: give a box, or a detector")
        else:
            results.append(detect_faces(predictor, path, det, used))
    stems = [Path(p).stem for p, _ in items]
    done = []
    for i, ((path, face_box), faces) in enumerate(zip(items, results)):
        stem = stems[i] if stems.count(stems[i]) == 1 else f"{stems[i]}_{i:04d}"
        done.append(write_outputs(out, path, faces, predictor, stem, None if face_box is not None else used))
    return done


SAMPLE_PHOTO = ("scikit-image's astronaut photo (Eileen Collins, NASA; public domain): skimage.data.astronaut(), "
                "512 x 512 colour")


def sample_photo(out) -> Path:
    """A real photo the project may ship and show (SAMPLE_PHOTO), written as a PNG."""
    import skimage.data
    ok, data = cv2.imencode(".png", cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    if not ok:
        raise PredictError(f"{out}: the sample photo could not be encoded")
    atomic_write(out, data.tobytes())
    return Path(out)
