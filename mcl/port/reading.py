"""A Caffe deploy net and its trained blobs, read with protobuf alone and checked against each other.

Before anything is run the pair is checked the way Caffe's copy_from would see it, but
stricter: every layer with blobs must be in the caffemodel, with blobs of the net's
shapes; PortError names the file and the first layer that does not fit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from mcl import torchnet
from mcl.caffe.caffemodel import blob_array
from mcl.caffe.proto import caffe_pb2


class PortError(ValueError):
    """A model that cannot be ported: names the file, the layer and what is wrong."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path, what: str) -> bytes:
    """The file's contents; PortError naming it (as a `what`) where it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PortError(f"{path}: cannot read {what} ({exc.strerror})") from None


def parse_prototxt(text: str, where: str = "prototxt"):
    net = caffe_pb2.NetParameter()
    try:
        # the built-in subset skips fields it does not know (the port does not read them)
        text_format.Parse(text, net, allow_unknown_field=getattr(caffe_pb2, "BUILTIN", False))
    except text_format.ParseError as exc:
        raise PortError(f"{where}: not a Caffe net description ({exc})") from None
    if not len(net.layer) and not len(net.layers):
        raise PortError(f"{where}: holds no layers")
    return net


def parse_caffemodel(raw: bytes, where: str = "caffemodel"):
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PortError(f"{where}: not a caffemodel (a binary NetParameter; protobuf says: {exc}); "
                        "truncated or another kind of file") from None
    layers = list(net.layer) + list(net.layers)
    if not layers or not any(len(lay.blobs) for lay in layers):
        raise PortError(f"{where}: not a caffemodel: no layer with blobs in it "
                        "(a prototxt, solverstate or another protobuf?)")
    return net


def type_name(layer) -> str:
    """A V2 layer's type, or a V1 layer's as its V2 name (the enum's name where torchnet has none)."""
    if isinstance(layer.type, str):
        return layer.type
    enum = caffe_pb2.V1LayerParameter.LayerType.Name(layer.type)
    return torchnet.V1_TYPES.get(enum, enum)


def model_blobs(model, where: str = "caffemodel") -> tuple[dict[str, list[np.ndarray]], dict[str, str]]:
    """(layer -> blobs, layer -> type) of a caffemodel, V2 `layer` or V1 `layers`."""
    blobs, types = {}, {}
    for lay in list(model.layer) + list(model.layers):
        if not len(lay.blobs):
            continue
        try:
            blobs[lay.name] = [blob_array(b) for b in lay.blobs]
        except ValueError as exc:
            raise PortError(f"{where}: layer {lay.name!r}: a blob {exc} (truncated or damaged)") from None
        types[lay.name] = type_name(lay)
    return blobs, types


@dataclass
class CaffeModel:
    """A deploy net and the blobs of its layers, checked against each other."""
    net_param: object
    blobs: dict[str, list[np.ndarray]]
    sources: dict[str, dict] = field(default_factory=dict)  # role -> {"path", "sha256"}
    ignored: list[str] = field(default_factory=list)  # caffemodel layers the net does not have
    prototxt_text: str = ""  # the files as given: the reference engines read these themselves
    caffemodel_raw: bytes = b""


def check_pair(net_param, blobs, types=None, where: str = "caffemodel", allow_zero_bn_factor: bool = False):
    """The net built for TEST and loaded with `blobs`; PortError names the first layer that does not fit."""
    try:
        net = torchnet.from_netparameter(net_param, "TEST")
    except torchnet.NetError as exc:
        raise PortError(f"prototxt: {exc}") from None
    if not net.is_setup:
        raise PortError("prototxt: the net's input shape is not given (a deploy net needs an Input layer "
                        "or input_shape)")
    want = net.caffe_blobs()
    for name, arrays in want.items():
        kind = net.layer(name).spec.type
        if name not in blobs:
            raise PortError(f"{where}: has no layer {name!r} ({kind}) that the prototxt needs "
                            "(the layer names of the pair disagree: a model of another net?)")
        if types and types.get(name) not in (None, kind):
            raise PortError(f"{where}: layer {name!r} is a {types[name]} in the caffemodel "
                            f"but a {kind} in the prototxt")
        got = [a.shape for a in blobs[name]]
        need = [a.shape for a in arrays]
        if len(got) != len(need) or not all(torchnet.shape_fits(tuple(g), tuple(n)) for g, n in zip(got, need)):
            raise PortError(f"{where}: layer {name!r} ({kind}) holds blobs of shapes {got}, the prototxt "
                            f"needs {need} (a model of another layout or net?)")
        if kind == "BatchNorm" and net.layer(name).use_global_stats and float(blobs[name][2].ravel()[0]) == 0 \
                and not allow_zero_bn_factor:
            raise PortError(
                f"{where}: layer {name!r} (BatchNorm) has scale factor 0 (its third blob): Caffe then uses "
                "mean 0 and variance 0, i.e. divides by sqrt(eps) alone; a layer that never saw a "
                "training batch. Port it as Caffe computes it with --allow-zero-bn-factor.")
    net.load_caffe_blobs({k: blobs[k] for k in want})
    return net


def read_model(prototxt, caffemodel, allow_zero_bn_factor: bool = False) -> tuple[CaffeModel, torchnet.CaffeNet]:
    text = read_bytes(prototxt, "prototxt")
    raw = read_bytes(caffemodel, "caffemodel")
    try:
        net_param = parse_prototxt(text.decode("utf-8"), str(prototxt))
    except UnicodeDecodeError:
        raise PortError(f"{prototxt}: not a text file (a caffemodel given as the prototxt?)") from None
    model = parse_caffemodel(raw, str(caffemodel))
    blobs, types = model_blobs(model, str(caffemodel))
    net = check_pair(net_param, blobs, types, str(caffemodel), allow_zero_bn_factor)
    used = set(net.caffe_blobs())
    cm = CaffeModel(net_param, {k: v for k, v in blobs.items() if k in used},
                    {"prototxt": {"path": str(prototxt), "sha256": sha256(text)},
                     "caffemodel": {"path": str(caffemodel), "sha256": sha256(raw)}},
                    sorted(set(blobs) - used), text.decode("utf-8"), raw)
    return cm, net


def output_tops(net: torchnet.CaffeNet) -> list[str]:
    """Tops no later layer reads: the net's outputs (Caffe's net.outputs)."""
    consumed = {b for s in net.specs for b in s.bottoms}
    outs = []
    for s in net.specs:
        for t in s.tops:
            if t not in consumed and t not in outs and s.type not in torchnet.INPUT_TYPES:
                outs.append(t)
    return outs
