"""The exports of a checked net: ONNX, NumPy .npz, the PyTorch state_dict (and the module
rebuilt from it), the prototxt; and the way back, a state_dict -> caffemodel bytes. Every
export is built in memory (bytes), nothing is written here."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from mcl import torchnet
from mcl.caffe.caffemodel import set_blob
from mcl.caffe.proto import caffe_pb2
from mcl.port.reading import PortError, parse_prototxt, read_bytes

OPSET = 17


class _Outputs(torch.nn.Module):
    """Positional in, tuple out: what torch.onnx.export traces (every layer's output with `every_layer`)."""

    def __init__(self, net: torchnet.CaffeNet, outputs: list[str], every_layer: bool = False):
        super().__init__()
        self.net = net
        self.outputs = outputs
        self.every_layer = every_layer

    def forward(self, data):
        record = [] if self.every_layer else None
        got = self.net({self.net.input_names[0]: data}, record=record)
        if self.every_layer:
            return tuple(v for _, _, v in record)
        return tuple(got[o] for o in self.outputs)


def layer_outputs(net: torchnet.CaffeNet) -> list[str]:
    """ONNX output names of an `every_layer` export: '<layer>/<top>' in net order."""
    return [f"{s.name}/{t}" for s in net.specs if s.type not in torchnet.INPUT_TYPES for t in s.tops]


def onnx_bytes(net: torchnet.CaffeNet, outputs: list[str], opset: int = OPSET, every_layer: bool = False) -> bytes:
    """The net as ONNX (batch axis dynamic); BatchNorm statistics as constants.

    With `every_layer` the outputs are every layer's tops as that layer leaves them
    (names from layer_outputs), to compare with Caffe layer by layer.
    """
    frozen = copy.deepcopy(net).freeze_batchnorm().eval()
    (name,) = net.input_names
    shape = tuple(net.input_shapes[name])
    if every_layer:
        outputs = layer_outputs(net)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Outputs(frozen, outputs, every_layer), (torch.zeros((1,) + shape[1:]),), buf,
                          input_names=[name], output_names=outputs, opset_version=opset, dynamo=False,
                          dynamic_axes={name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    return buf.getvalue()


def npz_bytes(blobs: dict[str, list[np.ndarray]]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"{layer}/{i}": a for layer, arrays in blobs.items() for i, a in enumerate(arrays)})
    return buf.getvalue()


def read_npz(path) -> dict[str, list[np.ndarray]]:
    """layer -> blobs from a port's .npz (keys `<layer>/<index>`)."""
    out: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path) as z:
        for key in z.files:
            layer, _, i = key.rpartition("/")
            out.setdefault(layer, {})[int(i)] = z[key]
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def state_dict_bytes(net: torchnet.CaffeNet) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def load_torch(prototxt, state_dict) -> torchnet.CaffeNet:
    """The PyTorch module of a port: torchnet from the prototxt, then the state_dict."""
    net_param = parse_prototxt(Path(prototxt).read_text(), str(prototxt))
    net = torchnet.from_netparameter(net_param, "TEST")
    sd = state_dict if isinstance(state_dict, dict) else torch.load(state_dict, map_location="cpu",
                                                                     weights_only=True)
    _load_state_dict(net, sd, str(state_dict) if not isinstance(state_dict, dict) else "state_dict")
    return net.eval()


def _load_state_dict(net: torchnet.CaffeNet, sd: dict, where: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        raise PortError(f"{where}: does not fit the prototxt: "
                        + "; ".join(filter(None, [missing and f"missing {', '.join(missing[:6])}",
                                                  extra and f"unexpected {', '.join(extra[:6])}"])))
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            layer = k.split(".")[1] if k.count(".") >= 2 else k
            raise PortError(f"{where}: layer {layer!r}: {k} has shape {tuple(sd[k].shape)}, "
                            f"the prototxt needs {tuple(v.shape)}")
    net.load_state_dict(sd)


def caffemodel_bytes(net_param, blobs: dict[str, list[np.ndarray]]) -> bytes:
    """A caffemodel as Caffe's Net::ToProto writes one: the net's layers with their blobs."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    layers = out.layer if len(out.layer) else out.layers
    for lay in layers:
        del lay.blobs[:]
        for a in blobs.get(lay.name, []):
            set_blob(lay.blobs.add(), a)
    return out.SerializeToString()


def back_to_caffe(prototxt, state_dict) -> bytes:
    """The way back: a state_dict of the prototxt's architecture -> caffemodel bytes."""
    net_param = parse_prototxt(read_bytes(prototxt, "prototxt").decode("utf-8"), str(prototxt))
    try:
        net = torchnet.from_netparameter(net_param, "TEST")
    except torchnet.NetError as exc:
        raise PortError(f"{prototxt}: {exc}") from None
    if isinstance(state_dict, dict):
        sd, where = state_dict, "state_dict"
    else:
        try:
            sd = torch.load(state_dict, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PortError(f"{state_dict}: not a PyTorch state_dict ({exc.__class__.__name__}: {exc})") from None
        where = str(state_dict)
        if not isinstance(sd, dict):
            raise PortError(f"{state_dict}: holds a {type(sd).__name__}, not a state_dict")
    _load_state_dict(net, sd, where)
    return caffemodel_bytes(net_param, net.caffe_blobs())


def netgen_text(net_param) -> str:
    return text_format.MessageToString(net_param)
