"""Landmarks from a ported ONNX model, without Caffe: the evaluation's crop, its normalisation,
its mapping back to the picture.

The crop is `mcl.data.augment.crop_face` (the val/test crop the data preparation writes),
the pixels `mcl.data.writers.network_input` ((p - 128) * 0.0078125), and the mapping back
`mcl.evaluation.evaluate.to_image` through the crop's crop_to_image: the same functions the
evaluation's numbers come from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mcl.data.augment import DEFAULT_TEST_CROP, TEST_CROPS, crop_face
from mcl.data.readers import DataError, Sample, check_box, load_image, write_pts
from mcl.data.writers import network_input
from mcl.evaluation.evaluate import to_image
from mcl.fileio import atomic_write, durable_replace
from mcl.method.layouts import Layout, get_layout

DEFAULT_CROP_SCALE = 1.25  # data_prep's default for 300-W and the synthetic set


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

    @classmethod
    def from_onnx(cls, path, crop_scale: float | None = None, layout: str | None = None,
                  output: str | None = None, threads: int = 1, test_crop: str | None = None) -> Predictor:
        """The model and its card (`<model>.json`, written by the port): layout, output, crop scale
        and test-crop protocol (the run's, recorded by the port)."""
        import onnxruntime as ort
        path = Path(path)
        if not path.exists():
            raise PredictError(f"{path}: missing ONNX model")
        card_path = path.with_name(path.name + ".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
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
        return cls(sess, sess.get_inputs()[0].name, output, lay, float(scale), str(path), protocol)

    def crop(self, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        """(network input (1, 1, 50, 50), crop_to_image (1, 2, 3)) of one face, as the evaluation crops it."""
        box = np.asarray(box, dtype=np.float64).ravel()
        try:
            check_box(box, "--box")
        except DataError as exc:
            raise PredictError(str(exc)) from None
        sample = Sample("face", self.layout.name, np.zeros((self.layout.n_points, 2)), box)
        crops = crop_face(image, sample, self.layout, self.crop_scale, self.test_crop)
        return network_input(crops.images), crops.crop_to_image

    def predict(self, image: np.ndarray, box) -> np.ndarray:
        """(n, 2) landmarks in picture coordinates (0-based pixel centres) of the face in `box`."""
        x, crop_to_image = self.crop(image, box)
        pred = self.session.run([self.output], {self.input_name: x})[0]
        return to_image(pred, crop_to_image)[0]


def read_gray(path) -> np.ndarray:
    """The picture's gray pixels exactly as the data preparation reads them."""
    try:
        return load_image(Sample(str(path), "", np.zeros((0, 2)), np.zeros(4), image_path=str(path)))
    except DataError as exc:
        raise PredictError(str(exc)) from None


def read_list(path) -> list[tuple[str, list[float]]]:
    """Lines `image x1 y1 x2 y2` (0-based pixels; image relative to the list's folder)."""
    out = []
    base = Path(path).parent
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if len(parts) != 5:
                raise ValueError
            box = [float(v) for v in parts[1:]]
        except ValueError:
            raise PredictError(f"{path}:{i}: expected 'image x1 y1 x2 y2', found {line!r}") from None
        image = Path(parts[0])
        out.append((str(image if image.is_absolute() else base / image), box))
    return out


def draw(path, points: np.ndarray, box) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    h, w = image.shape[:2]
    r = max(1, round(max(h, w) / 250))

    def at(p):  # 4 bits of sub-pixel precision
        return int(round(p[0] * 16)), int(round(p[1] * 16))

    x1, y1, x2, y2 = box
    cv2.rectangle(image, at((x1, y1)), at((x2, y2)), (0, 200, 255), r, cv2.LINE_AA, 4)
    for p in points:
        cv2.circle(image, at(p), r * 16, (60, 255, 60), -1, cv2.LINE_AA, 4)
    return image


def write_outputs(out, image_path, points: np.ndarray, box, predictor: Predictor, stem: str | None = None) -> list[Path]:
    """<stem>.json (0-based points), <stem>.pts (1-based, as 300-W writes them), <stem>_landmarks.png."""
    out = Path(out)
    stem = stem or Path(image_path).stem
    record = {"image": str(image_path), "box": [float(v) for v in box], "model": predictor.model_path,
              "layout": predictor.layout.name, "crop_scale": predictor.crop_scale, "test_crop": predictor.test_crop,
              "points_base": 0, "points": [[float(x), float(y)] for x, y in points]}
    paths = [out / f"{stem}.json", out / f"{stem}.pts", out / f"{stem}_landmarks.png"]
    atomic_write(paths[0], json.dumps(record, indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{stem}.pts.tmp"
    write_pts(str(tmp), points + 1.0)
    durable_replace(tmp, paths[1])
    ok, png = cv2.imencode(".png", draw(image_path, points, box))
    atomic_write(paths[2], png.tobytes())
    return paths
