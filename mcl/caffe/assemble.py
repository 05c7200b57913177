"""The assembled model AM as a caffemodel: the heads' shape layers spliced into one (Eq. 2-3, `mcl.method.assembly`).

The shared layers come from the head models (checked to be the same trunk), the
shape layer from splicing; the result is checked against the heads in Caffe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mcl.caffe import caffemodel
from mcl.caffe.caffemodel import ModelError
from mcl.caffe.forward import predict
from mcl.caffe.netgen import SHAPE_LAYER, head_layer_name
from mcl.method.assembly import splice
from mcl.method.layouts import Layout


def _head_blobs(model, cluster: str, path) -> list[np.ndarray]:
    layer = caffemodel.layer(model, head_layer_name(cluster), path)
    arrays = [caffemodel.blob_array(x) for x in layer.blobs]
    return arrays


def assemble(heads: dict[str, tuple[object, str]], layout: Layout):
    """AM as a NetParameter from the head models.

    `heads` maps each cluster to (model, path): one joint model for all clusters,
    or one model per cluster from separate runs. The shared layers are taken from
    the first model; in separate runs they must be identical in every model.
    """
    missing = [c for c in layout.cluster_names if c not in heads]
    if missing:
        raise ModelError(f"no head model for cluster(s) {', '.join(missing)}")
    first_model, first_path = heads[layout.cluster_names[0]]
    blobs = {}
    for c in layout.cluster_names:
        model, path = heads[c]
        arrays = _head_blobs(model, c, path)
        if len(arrays) != 2 or arrays[0].shape != (2 * layout.n_points, layout.feature_dim):
            raise ModelError(f"{path}: head {head_layer_name(c)} has shape "
                             f"{arrays[0].shape if arrays else None}, layout {layout.name} needs "
                             f"({2 * layout.n_points}, {layout.feature_dim})")
        blobs[c] = arrays
        if model is not first_model:
            _check_same_trunk(first_model, first_path, model, path, layout)
    W, b = splice(blobs, layout)
    am = type(first_model)()
    am.name = f"mcl_{layout.name}_assembled"
    heads_names = {head_layer_name(c) for c in layout.cluster_names} | {SHAPE_LAYER}
    for layer in (first_model.layer or first_model.layers):
        if layer.name not in heads_names and len(layer.blobs):
            am.layer.add().CopyFrom(layer)
    shape = am.layer.add()
    shape.name = SHAPE_LAYER
    shape.type = "InnerProduct"
    caffemodel.set_blob(shape.blobs.add(), W)
    caffemodel.set_blob(shape.blobs.add(), b)
    return am


def _check_same_trunk(a, path_a, b, path_b, layout: Layout) -> None:
    heads = {head_layer_name(c) for c in layout.cluster_names}
    ba = {k: v for k, v in caffemodel.blobs(a).items() if k not in heads}
    bb = {k: v for k, v in caffemodel.blobs(b).items() if k not in heads}
    for name in ba:
        if name == SHAPE_LAYER:
            continue
        if name not in bb or any(not np.array_equal(x, y) for x, y in zip(ba[name], bb[name])):
            raise ModelError(f"{path_b}: shared layer {name} differs from {path_a}; "
                             "separate head runs must share the fixed trunk")


def verify(head_nets: dict, am_net, images: np.ndarray, layout: Layout) -> dict:
    """AM's output for every landmark equals the output of that landmark's head, exactly.

    `head_nets` maps each cluster to a pycaffe net computing its head (one net for
    all clusters after joint training, one per cluster after separate runs).
    """
    am = predict(am_net, images, [SHAPE_LAYER])[SHAPE_LAYER]
    owner = layout.cluster_of()
    expected = np.empty_like(am)
    cache: dict[int, dict] = {}
    for j in range(layout.n_points):
        c = layout.cluster_names[owner[j]]
        net = head_nets[c]
        if id(net) not in cache:
            cache[id(net)] = predict(net, images, [head_layer_name(k) for k, n in head_nets.items() if n is net])
        expected[:, 2 * j:2 * j + 2] = cache[id(net)][head_layer_name(c)][:, 2 * j:2 * j + 2]
    max_diff = float(np.abs(am - expected).max())
    if not np.array_equal(am, expected):
        raise ModelError(f"assembled model differs from its heads (max |diff| {max_diff:g})")
    return {"samples": int(len(images)), "max_abs_diff": max_diff, "exact": True}


def read_heads(run: Path, heads_path: Path, layout: Layout) -> tuple[dict[str, tuple[object, Path]], list[Path]]:
    """The head models by cluster, and the files they came from: one joint heads caffemodel, or the
    listing of separate head runs (models/heads_separate.json)."""
    if heads_path.suffix != ".json":
        model = caffemodel.load(heads_path)
        return {c: (model, heads_path) for c in layout.cluster_names}, [heads_path]
    try:
        listing = json.loads(heads_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{heads_path}: not a heads listing ({exc.msg}, line {exc.lineno})") from None
    if listing.get("layout") != layout.name:
        raise ModelError(f"{heads_path}: heads of layout {listing.get('layout')}, run is {layout.name}")
    if not isinstance(listing.get("heads"), dict):
        raise ModelError(f"{heads_path}: no 'heads' mapping of cluster -> caffemodel")
    heads = {c: (caffemodel.load(run / p), run / p) for c, p in listing["heads"].items()}
    return heads, [run / p for p in listing["heads"].values()]
