"""Eq. 4's per-landmark loss weights u_j written into a net's EuclideanLoss layers, and read back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcl.caffe import netgen
from mcl.fileio import atomic_write
from mcl.method.layouts import LAYOUTS, Layout
from mcl.method.loss_weights import WeightsError, load, validate

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

    The document's landmarks must be those the net predicts (its shape layers' num_output 2n,
    netgen.shape_points; a net without one is held to the count of its loss layers below);
    a single-head net takes 'weights', a head net takes the vector of each of its clusters.
    """
    layout = validate(doc, path)
    try:
        n_points = netgen.shape_points(net)
    except ValueError:
        n_points = None
    if n_points is not None and n_points != layout.n_points:
        of_net = [name for name, lay in LAYOUTS.items() if lay.n_points == n_points]
        raise WeightsError(f"{path}: weights for layout {layout.name} ({layout.n_points} landmarks), but net "
                           f"{net.name} predicts {n_points} landmarks"
                           + (f" (layout {of_net[0]})" if of_net else ""))
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


def rewritten_text(net_path, weights_path) -> tuple[str, list[Change]]:
    """The prototxt at `net_path` with its loss weights from `weights_path`, its comment header kept, as
    text, and the changes; WeightsError naming the file at fault."""
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
    return header + netgen.to_text(new), changes


def rewrite_file(net_path, weights_path, out_path=None) -> list[Change]:
    """Rewrite the loss weights of the prototxt at `net_path` (in place unless `out_path`),
    keeping its comment header; written under a temporary name and renamed."""
    text, changes = rewritten_text(net_path, weights_path)
    atomic_write(out_path or net_path, text)
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
