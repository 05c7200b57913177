"""Running a model over a data split and the paper's metrics (METHOD §7).

Errors are measured in original-image coordinates: each prediction is mapped
back through its crop's transform and divided by the face's inter-ocular
distance d (the layout's rule). A face's error is the mean over its landmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mcl.caffe.forward import load_net, predict
from mcl.caffe.netgen import SHAPE_LAYER
from mcl.data.splits import load_split
from mcl.method.layouts import Layout

FAILURE_THRESHOLDS = (0.10, 0.08)
AUC_LIMITS = (0.08, 0.10)


class EvalError(ValueError):
    """An evaluation that cannot be made (nothing to evaluate, a name used twice, an output of the wrong size);
    an unreadable split is mcl.data.splits.SplitError, a model that does not fit mcl.caffe.caffemodel.ModelError."""


def to_image(pred_crop: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """(N, 2n) crop coordinates -> (N, n, 2) image coordinates through each (2, 3) affine."""
    pts = pred_crop.reshape(len(pred_crop), -1, 2).astype(np.float64)
    A = crop_to_image[:, :, :2]
    t = crop_to_image[:, :, 2]
    return np.einsum("nij,nkj->nki", A, pts) + t[:, None, :]


def landmark_errors(pred_img: np.ndarray, gt_img: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """(N, n) point-to-point errors divided by each face's normalising distance."""
    return np.linalg.norm(pred_img - gt_img, axis=-1) / norm[:, None]


def ced(face_errors: np.ndarray, limit: float, steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(0.0, limit, steps + 1)
    y = (face_errors[None, :] <= x[:, None]).mean(axis=1)
    return x, y


def auc(face_errors: np.ndarray, limit: float) -> float:
    x, y = ced(face_errors, limit)
    return float(np.trapezoid(y, x) / limit)


def metrics(errors: np.ndarray, layout: Layout) -> dict:
    """Mean error, failure rates, AUCs and per-cluster / per-landmark errors (fractions of d)."""
    face = errors.mean(axis=1)
    out = {
        "faces": int(len(face)),
        "mean_error": float(face.mean()),
        # A face whose error is not finite (a diverged model) failed: it never reaches the CED either.
        "failure_rate": {f"{t:.2f}": float((~(face <= t)).mean()) for t in FAILURE_THRESHOLDS},
        "auc": {f"{t:.2f}": auc(face, t) for t in AUC_LIMITS},
        "per_cluster": {name: float(errors[:, list(idx)].mean()) for name, idx in layout.clusters},
        "per_landmark": [float(x) for x in errors.mean(axis=0)],
    }
    return out


def predict_image(net, data: dict, layout: Layout, output: str = SHAPE_LAYER) -> np.ndarray:
    """A net's predictions for the split's crops, mapped back to original-image coordinates (N, n, 2)."""
    pred = predict(net, data["data"], [output])[output]
    if pred.ndim != 2 or pred.shape[1] != 2 * layout.n_points:
        raise EvalError(f"output {output!r} holds {pred.shape[1] // 2 if pred.ndim == 2 else '?'} landmarks, "
                        f"layout {layout.name} has {layout.n_points}")
    return to_image(pred, data["crop_to_image"])


def score(pred_img: np.ndarray, data: dict, layout: Layout) -> dict:
    """Inter-ocular metrics of image-coordinate predictions, and the outer-corner normalisation
    where the layout has it; face_errors: each face's inter-ocular mean error."""
    gt = data["landmarks_image"].reshape(len(pred_img), layout.n_points, 2)
    io = landmark_errors(pred_img, gt, data["iod_image"])
    res = {"inter_ocular": metrics(io, layout)}
    if layout.outer_corners is not None:
        res["outer_corners"] = metrics(landmark_errors(pred_img, gt, layout.outer_corner_distance(gt)), layout)
    res["face_errors"] = [float(x) for x in io.mean(axis=1)]
    return res


def evaluate_model(net, data: dict, layout: Layout, output: str = SHAPE_LAYER) -> dict:
    """Inter-ocular metrics, and the outer-corner normalisation where the layout has it."""
    return score(predict_image(net, data, layout, output), data, layout)


def validation_errors(run: Path, model: Path, layout: Layout, split: str = "val") -> tuple[np.ndarray, dict]:
    """b_j / w_j of Eq. 5 and Eq. 9: each landmark's mean normalised error on the split."""
    data = load_split(run, split)
    net = load_net(Path(run) / "nets" / "deploy.prototxt", model)
    res = evaluate_model(net, data, layout)
    return np.asarray(res["inter_ocular"]["per_landmark"]), res
