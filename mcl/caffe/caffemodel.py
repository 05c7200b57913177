"""Reading and writing .caffemodel files with protobuf alone (no Caffe net needed).

A .caffemodel is a binary NetParameter whose layers carry their blobs. Old
models use the V1 `layers` field; both are read.
"""

from __future__ import annotations

import numpy as np

from mcl.caffe.netgen import SHAPE_LAYER, head_layer_name
from mcl.caffe.proto import caffe_pb2
from mcl.fileio import atomic_write
from mcl.method.errors import ModelError  # here too under this name: a caffemodel missing, unreadable or unfit


def load(path) -> object:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read caffemodel ({exc.strerror})") from None
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(raw)
    except Exception as exc:
        raise ModelError(f"{path}: not a caffemodel (protobuf parse failed: {exc})") from None
    if not net.layer and not net.layers:
        raise ModelError(f"{path}: caffemodel holds no layers")
    return net


def save(net, path) -> None:
    atomic_write(path, net.SerializeToString())


def _layers(net):
    return list(net.layer) if net.layer else list(net.layers)


def blob_array(blob) -> np.ndarray:
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else tuple(
        d for d in (blob.num, blob.channels, blob.height, blob.width))
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"holds {data.size} values for shape {shape}")
    return data.reshape(shape)


def set_blob(blob, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.float32)
    blob.ClearField("data")
    blob.ClearField("double_data")
    blob.ClearField("num"), blob.ClearField("channels"), blob.ClearField("height"), blob.ClearField("width")
    blob.shape.ClearField("dim")
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())


def blobs(net) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs as float32 arrays (layers without blobs left out)."""
    return {layer.name: [blob_array(b) for b in layer.blobs] for layer in _layers(net) if len(layer.blobs)}


def layer(net, name: str, path="caffemodel"):
    for lay in _layers(net):
        if lay.name == name:
            return lay
    raise ModelError(f"{path}: no layer named {name!r} (has {', '.join(l.name for l in _layers(net) if len(l.blobs))})")


def copy_layer(net, src: str, dst: str):
    """Append a copy of layer `src`'s blobs under the name `dst`, so Caffe copies them by name."""
    source = layer(net, src)
    new = net.layer.add()
    new.name = dst
    new.type = source.type
    for b in source.blobs:
        new.blobs.add().CopyFrom(b)
    return new


def init_heads(net, clusters):
    """A copy of `net` (WM) where every head shape_pred_<cluster> starts from WM's shape layer.

    METHOD §5.1: "Every head of steps 4..3+m starts from WM's shape prediction layer".
    Caffe copies weights by layer name, so the heads need blobs under their own names.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for c in clusters:
        copy_layer(out, SHAPE_LAYER, head_layer_name(c))
    return out


def check_fits(model, net, path, require_all: bool = True) -> None:
    """Raise ModelError unless `model`'s blobs fit pycaffe `net` layer by layer.

    Caffe's copy_from aborts the process on a shape mismatch, so this check runs
    first. With `require_all`, every layer of the net with parameters must be in
    the model (a model that leaves layers at their random init is the wrong model).
    """
    have = blobs(model)
    for name, params in net.params.items():
        if name not in have:
            if require_all:
                raise ModelError(f"{path}: has no layer {name!r} that the net needs (a model of another net?)")
            continue
        want = [tuple(p.data.shape) for p in params]
        got = [a.shape for a in have[name]]
        if len(want) != len(got) or any(int(np.prod(w)) != int(np.prod(g)) for w, g in zip(want, got)):
            raise ModelError(f"{path}: does not fit the net: layer {name!r} holds blobs {got}, the net needs {want} "
                             "(a model of another layout or net?)")
