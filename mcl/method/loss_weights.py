"""Per-landmark loss weights u_j (Eq. 5, 8, 9) and the weights file that carries them.

Writing them into a net's Eq. 4 loss layers is Caffe's side: `mcl.caffe.reweight`.

A weights file is JSON:
  {"layout": "68", "n_points": 68, "kind": "eq5", "weights": [u_1, ..., u_n], ...}
or, for the multi-center stage, one vector per cluster:
  {"layout": "68", "n_points": 68, "kind": "eq9", "alpha": 125,
   "clusters": {"left_eye": [u_1, ..., u_n], ...}, ...}
Extra keys (the errors the weights came from, the model, the settings) are kept.
"""

from __future__ import annotations

import json

import numpy as np

from mcl.method.layouts import Layout, get_layout
from mcl.method.stages import ALPHA


class WeightsError(ValueError):
    """A weights file that is malformed or does not fit the net."""


def eq5(errors) -> np.ndarray:
    """Eq. 5: u_j proportional to landmark j's mean validation error b_j, mean 1 [interp]."""
    b = np.asarray(errors, dtype=np.float64)
    if b.ndim != 1 or not np.all(np.isfinite(b)) or np.any(b < 0) or b.sum() <= 0:
        raise WeightsError("Eq. 5 needs finite, non-negative errors with a positive sum")
    return len(b) * b / b.sum()


def eq8(n: int, size_p: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Eq. 8: (u_P, u_Q) with u_P = alpha u_Q (Eq. 6) and |P| u_P + |Q| u_Q = n (Eq. 7)."""
    size_q = n - size_p
    u_q = n / (alpha * size_p + size_q)
    return alpha * u_q, u_q


def eq9(errors, layout: Layout, alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """Eq. 9: for each cluster P_i, weights inside P_i and inside Q_i proportional to the
    errors w_j, with group totals |P_i| u_P and |Q_i| u_Q fixed by Eq. 8 [interp]."""
    w = np.asarray(errors, dtype=np.float64)
    if w.shape != (layout.n_points,):
        raise WeightsError(f"layout {layout.name} needs {layout.n_points} errors, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise WeightsError("Eq. 9 needs finite, non-negative errors")
    out = {}
    for name, members in layout.clusters:
        in_p = np.zeros(layout.n_points, dtype=bool)
        in_p[list(members)] = True
        u_p, u_q = eq8(layout.n_points, int(in_p.sum()), alpha)
        u = np.zeros(layout.n_points)
        for mask, u_group in ((in_p, u_p), (~in_p, u_q)):
            if not mask.any():
                continue
            total = u_group * mask.sum()
            s = w[mask].sum()
            # A group whose errors are all zero shares its total evenly.
            u[mask] = total * (w[mask] / s if s > 0 else np.full(mask.sum(), 1.0 / mask.sum()))
        out[name] = u
    return out


# ---- weights files ---------------------------------------------------------------

def load(path) -> dict:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    validate(doc, path)
    return doc


def validate(doc: dict, path="weights") -> Layout:
    if not isinstance(doc, dict) or "layout" not in doc or "n_points" not in doc:
        raise WeightsError(f"{path}: a weights file needs 'layout' and 'n_points'")
    try:
        layout = get_layout(doc["layout"])
    except ValueError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if doc["n_points"] != layout.n_points:
        raise WeightsError(f"{path}: n_points {doc['n_points']} does not match layout {layout.name}")
    vectors = {}
    if "weights" in doc:
        vectors[None] = doc["weights"]
    for c, v in (doc.get("clusters") or {}).items():
        if c not in layout.cluster_names:
            raise WeightsError(f"{path}: layout {layout.name} has no cluster {c!r}")
        vectors[c] = v
    if not vectors:
        raise WeightsError(f"{path}: neither 'weights' nor 'clusters' given")
    for c, v in vectors.items():
        arr = np.asarray(v, dtype=np.float64)
        where = f"cluster {c!r}" if c else "'weights'"
        if arr.shape != (layout.n_points,):
            raise WeightsError(f"{path}: {where} has {arr.size} values, layout {layout.name} has {layout.n_points} landmarks")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise WeightsError(f"{path}: {where} holds negative or non-finite weights")
    return layout


def document(layout: Layout, kind: str, weights=None, clusters=None, **extra) -> dict:
    doc = {"layout": layout.name, "n_points": layout.n_points, "kind": kind}
    if weights is not None:
        doc["weights"] = [float(x) for x in weights]
    if clusters is not None:
        doc["clusters"] = {c: [float(x) for x in clusters[c]] for c in layout.cluster_names if c in clusters}
    doc.update(extra)
    validate(doc)
    return doc
