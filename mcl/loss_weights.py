"""Per-landmark loss weights u_j (Eq. 5, 8, 9) and their rewriting into a net's loss layers.

A weights file is JSON:
  {"layout": "68", "n_points": 68, "kind": "eq5", "weights": [u_1, ..., u_n], ...}
or, for the multi-center stage, one vector per cluster:
  {"layout": "68", "n_points": 68, "kind": "eq9", "alpha": 125,
   "clusters": {"left_eye": [u_1, ..., u_n], ...}, ...}
Extra keys (the errors the weights came from, the model, the settings) are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from mcl import netgen
from mcl.layouts import Layout, get_layout
from mcl.stages import ALPHA


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


# ---- rewriting a net's loss layers ------------------------------------------------

@dataclass
class Change:
    layer: str
    cluster: str | None
    landmark: int  # 1-based
    old: float
    new: float


def loss_layers(net, layout: Layout) -> dict[str | None, list]:
    """The net's Eq. 4 loss layers grouped by head (None: the single shape layer)."""
    groups: dict[str | None, list] = {}
    names = {netgen.loss_layer_name(j, c): (c, j)
             for c in (None, *layout.cluster_names) for j in range(1, layout.n_points + 1)}
    for layer in net.layer:
        if layer.type == "EuclideanLoss":
            if layer.name not in names:
                raise WeightsError(f"net {net.name}: loss layer {layer.name!r} is not an Eq. 4 landmark loss")
            c, j = names[layer.name]
            groups.setdefault(c, []).append((j, layer))
    return {c: [lay for _, lay in sorted(v, key=lambda t: t[0])] for c, v in groups.items()}


def rewrite(net, doc: dict, path="weights") -> tuple[object, list[Change]]:
    """A copy of `net` with every loss_weight set from the weights document.

    The document's layout must be the net's; a single-head net takes 'weights',
    a head net takes the vector of each of its clusters.
    """
    layout = validate(doc, path)
    net_layout = netgen.net_layout_name(net)
    if net_layout != layout.name:
        raise WeightsError(f"{path}: weights for layout {layout.name}, but net {net.name} is layout {net_layout}")
    out = type(net)()
    out.CopyFrom(net)
    groups = loss_layers(out, layout)
    if not groups:
        raise WeightsError(f"net {net.name} has no loss layers to rewrite")
    changes = []
    for c, layers in groups.items():
        if len(layers) != layout.n_points:
            raise WeightsError(f"net {net.name}: {len(layers)} loss layers for {c or 'the shape layer'}, "
                               f"expected {layout.n_points}")
        if c is None:
            if "weights" not in doc:
                raise WeightsError(f"{path}: net {net.name} has one shape layer and needs 'weights'")
            vec = doc["weights"]
        else:
            if c not in (doc.get("clusters") or {}):
                raise WeightsError(f"{path}: net {net.name} has a head for cluster {c!r}, but the file has no weights for it")
            vec = doc["clusters"][c]
        for j, layer in enumerate(layers, start=1):
            old = layer.loss_weight[0] if len(layer.loss_weight) else 1.0
            layer.ClearField("loss_weight")
            layer.loss_weight.append(float(vec[j - 1]))
            changes.append(Change(layer.name, c, j, float(old), float(layer.loss_weight[0])))
    return out, changes


def rewrite_file(net_path, weights_path, out_path=None) -> list[Change]:
    """Rewrite the loss weights of the prototxt at `net_path` (in place unless `out_path`),
    keeping its comment header; written under a temporary name and renamed."""
    from pathlib import Path

    from mcl.fileio import atomic_write
    text = Path(net_path).read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    try:
        net = netgen.parse_net(text)
    except Exception as exc:
        raise WeightsError(f"{net_path}: not a net prototxt ({exc})") from None
    try:
        new, changes = rewrite(net, load(weights_path), weights_path)
    except ValueError as exc:  # the weights file's faults name it; the net's get the net's path
        msg = str(exc)
        raise WeightsError(msg if msg.startswith(f"{weights_path}:") else f"{net_path}: {msg}") from None
    atomic_write(out_path or net_path, header + netgen.to_text(new))
    return changes


def read_back(net, layout: Layout) -> dict[str | None, np.ndarray]:
    return {c: np.array([lay.loss_weight[0] for lay in layers], dtype=np.float32)
            for c, layers in loss_layers(net, layout).items()}


def change_table(changes: list[Change], limit: int | None = None) -> str:
    rows = [f"{'layer':<24} {'landmark':>8} {'old':>10} {'new':>10}"]
    for ch in changes[:limit]:
        rows.append(f"{ch.layer:<24} {ch.landmark:>8d} {ch.old:>10.4f} {ch.new:>10.4f}")
    if limit is not None and len(changes) > limit:
        rows.append(f"... {len(changes) - limit} more")
    return "\n".join(rows)
