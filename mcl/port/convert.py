"""A Caffe deploy net and its trained blobs, out to NumPy / PyTorch / ONNX and back.

Reading needs protobuf only (`mcl.caffe.proto`). Before anything is run the pair
is checked the way Caffe's copy_from would see it, but stricter: every layer
with blobs must be in the caffemodel, with blobs of the net's shapes. Every
export is built in memory and checked against a reference engine (Caffe where
pycaffe loads, else OpenCV's dnn module) before any file is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from mcl import torchnet
from mcl.caffe.proto import caffe_pb2
from mcl.fileio import atomic_write

TOLERANCE = 1e-4  # largest |difference| to the reference engine an export may show ...
RELATIVE = 2e-6  # ... or this share of the output's largest |value| where larger (float32 resolution)
OPSET = 17
CHECK_BATCH = 2
CHECK_SEED = 0
NET_NAME_RE = re.compile(r"^mcl_(?P<layout>\d+)_")


class PortError(ValueError):
    """A model that cannot be ported: names the file, the layer and what is wrong."""


# ---- reading -------------------------------------------------------------------------

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _read(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PortError(f"{path}: cannot read {what} ({exc.strerror})") from None


def blob_array(blob) -> np.ndarray:
    """A BlobProto as float32 in its stored shape (`shape`, or legacy num/channels/height/width)."""
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    a = np.array(values, dtype=np.float32)
    if a.size != int(np.prod(shape)):
        raise ValueError(f"holds {a.size} values for shape {shape}")
    return a.reshape(shape)


def _type_name(layer) -> str:
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
        types[lay.name] = _type_name(lay)
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
        if len(got) != len(need) or not all(torchnet._shape_fits(tuple(g), tuple(n)) for g, n in zip(got, need)):
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
    text = _read(prototxt, "prototxt")
    raw = _read(caffemodel, "caffemodel")
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


# ---- BatchNorm + Scale folding ------------------------------------------------------------

def fold_batchnorm(net_param, blobs) -> tuple[object, dict[str, list[np.ndarray]], list[str]]:
    """Fold every BatchNorm (stored statistics) and the Scale after it into the Convolution or
    InnerProduct before it: w' = w g / sqrt(var + eps), b' = (b - mean) g / sqrt(var + eps) + beta.

    Returns the folded net, its blobs and the names of the layers folded away. A chain is
    folded only where nothing else reads its intermediate tops.
    """
    net = torchnet.from_netparameter(net_param, "TEST")
    specs = {s.name: s for s in net.specs}
    readers: dict[str, list[str]] = {}
    for s in net.specs:
        for b in s.bottoms:
            readers.setdefault(b, []).append(s.name)
    producer = {}
    order = [s.name for s in net.specs]
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    new_blobs = {k: [a.copy() for a in v] for k, v in blobs.items()}
    removed: list[str] = []
    retop: dict[str, str] = {}
    for s in net.specs:
        if s.type == "BatchNorm" and net.layer(s.name).use_global_stats:
            prev = producer.get(s.bottoms[0])
            if prev is None or specs[prev].type not in ("Convolution", "InnerProduct"):
                continue
            chain = [s.name]
            i = order.index(s.name)
            nxt = specs[order[i + 1]] if i + 1 < len(order) else None
            if nxt is not None and nxt.type == "Scale" and len(nxt.bottoms) == 1 and nxt.bottoms == s.tops \
                    and net.layer(nxt.name).axis == 1 and len(net.layer(nxt.name).weight.shape) == 1:
                chain.append(nxt.name)
            if not _chain_private(prev, chain, specs, readers, order):
                continue
            _fold_into(net, prev, chain, new_blobs)
            removed += chain
            retop[prev] = specs[chain[-1]].tops[0]
            for t in specs[chain[-1]].tops:
                producer[t] = prev
            continue
        for t in s.tops:
            producer[t] = s.name
    layers = out.layer if len(out.layer) else out.layers
    keep = [lay for lay in layers if lay.name not in removed]
    for lay in keep:
        if lay.name in retop:
            del lay.top[:]
            lay.top.append(retop[lay.name])
            param = lay.convolution_param if _type_name(lay) == "Convolution" else lay.inner_product_param
            param.bias_term = True
            while len(lay.param) == 1:  # the new bias blob is learned like a bias
                lay.param.add().CopyFrom(caffe_pb2.ParamSpec(lr_mult=2, decay_mult=0))
    del layers[:]
    layers.extend(keep)
    for name in removed:
        new_blobs.pop(name, None)
    return out, new_blobs, removed


def _chain_private(prev, chain, specs, readers, order) -> bool:
    """Nothing outside the chain reads a value the folding removes: a top of its own name
    (not in place) is read by the chain alone; an in-place top by nothing before the chain ends."""
    final = specs[chain[-1]].tops[0]
    end = order.index(chain[-1])
    for m in [specs[prev].tops[0]] + [specs[n].tops[0] for n in chain[:-1]]:
        for r in readers.get(m, []):
            if r in chain:
                continue
            if m != final or order.index(r) <= end:
                return False
    return True


def _fold_into(net, target: str, chain: list[str], blobs) -> None:
    bn = net.layer(chain[0])
    mean = np.asarray(blobs[chain[0]][0], np.float64) / _factor(blobs[chain[0]][2])
    var = np.asarray(blobs[chain[0]][1], np.float64) / _factor(blobs[chain[0]][2])
    a = 1.0 / np.sqrt(var + bn.eps)
    b = -mean * a
    if len(chain) > 1:
        sc = blobs[chain[1]]
        g = np.asarray(sc[0], np.float64)
        beta = np.asarray(sc[1], np.float64) if len(sc) > 1 else 0.0
        a, b = a * g, b * g + beta
    w = np.asarray(blobs[target][0], np.float64)
    tgt = net.layer(target)
    if isinstance(tgt, torchnet.InnerProduct) and tgt.transpose:
        w = w * a[None, :]
    else:
        w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    bias = np.asarray(blobs[target][1], np.float64) if len(blobs[target]) > 1 else 0.0
    blobs[target] = [w.astype(np.float32), (bias * a + b).astype(np.float32)]


def _factor(blob) -> float:
    s = float(np.asarray(blob).ravel()[0])
    return np.inf if s == 0 else s  # Caffe: factor 0 -> mean and var 0


# ---- engines -------------------------------------------------------------------------------

def check_input(net: torchnet.CaffeNet, batch: int = CHECK_BATCH, seed: int = CHECK_SEED) -> np.ndarray:
    """A seeded batch of normalised gray patches ((p - 128) / 128 of uniform random pixels)."""
    (name,) = net.input_names
    shape = (batch,) + tuple(net.input_shapes[name][1:])
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape)
    return ((pixels - 128.0) * 0.0078125).astype(np.float32)


def torch_forward(net: torchnet.CaffeNet, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        got = net({net.input_names[0]: torch.from_numpy(x)})
    return {o: got[o].numpy() for o in outputs}


def caffe_forward(prototxt_text: str, model_bytes: bytes, x: np.ndarray, outputs: list[str]):
    """Caffe's own outputs, or None where pycaffe does not load here."""
    try:
        import caffe
    except Exception:  # no pycaffe, or libcaffe missing
        return None
    import os
    import tempfile
    caffe.set_mode_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        p, m = os.path.join(tmp, "net.prototxt"), os.path.join(tmp, "net.caffemodel")
        Path(p).write_text(prototxt_text)
        Path(m).write_bytes(model_bytes)
        net = caffe.Net(p, m, caffe.TEST)
    name = net.inputs[0] if len(net.inputs) else next(iter(net.blobs))  # Input layer tops are not net.inputs
    net.blobs[name].reshape(*x.shape)
    net.blobs[name].data[...] = x
    net.forward()
    return {o: net.blobs[o].data.copy() for o in outputs}


def opencv_forward(prototxt_text: str, model_bytes: bytes, x: np.ndarray, outputs: list[str], layer_of=None):
    """OpenCV dnn's outputs (it names outputs by the layer that writes them)."""
    import cv2
    net = cv2.dnn.readNetFromCaffe(np.frombuffer(prototxt_text.encode(), np.uint8),
                                   np.frombuffer(model_bytes, np.uint8))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    names = [(layer_of or {}).get(o, o) for o in outputs]
    got = net.forward(names)
    return {o: np.asarray(g) for o, g in zip(outputs, got)}


def onnx_forward(onnx_bytes: bytes, x: np.ndarray, outputs: list[str], threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    got = sess.run(outputs, {sess.get_inputs()[0].name: x})
    return dict(zip(outputs, got))


# ---- exports ---------------------------------------------------------------------------------

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
    import copy
    import warnings
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
            b = lay.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(np.asarray(a, np.float32).ravel().tolist())
    return out.SerializeToString()


def back_to_caffe(prototxt, state_dict) -> bytes:
    """The way back: a state_dict of the prototxt's architecture -> caffemodel bytes."""
    net_param = parse_prototxt(_read(prototxt, "prototxt").decode("utf-8"), str(prototxt))
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


# ---- the port --------------------------------------------------------------------------------

def layout_of(net_param, outputs_shape: dict[str, tuple]) -> str | None:
    m = NET_NAME_RE.match(net_param.name or "")
    if m:
        return m.group("layout")
    from mcl.method.layouts import LAYOUTS
    sizes = {shape[-1] // 2 for shape in outputs_shape.values() if len(shape) == 2 and shape[-1] % 2 == 0}
    hits = [name for name, lay in LAYOUTS.items() if lay.n_points in sizes]
    return hits[0] if len(hits) == 1 else None


@dataclass
class PortResult:
    files: dict[str, bytes]  # file name -> contents, all built and checked, nothing written yet
    cards: dict[str, dict]
    diffs: dict[str, dict[str, float]]  # engine -> output -> max |diff| to the reference
    reference: str


def port(prototxt, caffemodel, name: str | None = None, formats=("npz", "pt", "onnx"), fold: bool = False,
         reference: str = "auto", allow_zero_bn_factor: bool = False, crop_scale: float | None = None,
         opset: int = OPSET, tolerance: float = TOLERANCE, test_crop: str | None = None) -> PortResult:
    """Every export of the pair, in memory, each checked against the reference engine."""
    if opset < 13:
        raise PortError(f"ONNX opset {opset}: the port writes opset 13 or later")
    cm, net = read_model(prototxt, caffemodel, allow_zero_bn_factor)
    outputs = output_tops(net)
    name = name or Path(caffemodel).stem
    src_text, src_model = cm.prototxt_text, cm.caffemodel_raw
    x = check_input(net)
    layer_of = {t: s.name for s in net.specs for t in s.tops}
    ref_out, ref_name = _reference(reference, src_text, src_model, x, outputs, layer_of)
    diffs = {}

    allowed = {o: max(tolerance, RELATIVE * float(np.abs(ref_out[o]).max())) for o in outputs}

    def diff(engine, got):
        d = {o: float(np.abs(np.asarray(got[o]).reshape(ref_out[o].shape) - ref_out[o]).max()) for o in outputs}
        diffs[engine] = d
        for o, v in d.items():
            if v > allowed[o]:
                raise PortError(f"{engine} differs from {ref_name} by {v:.3g} (> {allowed[o]:.3g}) on "
                                f"{o!r}: not ported")
        return d

    if ref_name != "opencv":
        try:
            diff("opencv", opencv_forward(src_text, src_model, x, outputs, layer_of))
        except PortError:
            raise
        except Exception as exc:  # OpenCV cannot read every net Caffe can; recorded, not fatal
            diffs["opencv"] = {"error": str(exc).strip().splitlines()[-1][:200]}
    diff("torch", torch_forward(net, x, outputs))

    net_param, blobs, folded = cm.net_param, cm.blobs, []
    if fold:
        net_param, blobs, folded = fold_batchnorm(cm.net_param, cm.blobs)
        net = check_pair(net_param, blobs, allow_zero_bn_factor=True)
        diff("torch (folded)", torch_forward(net, x, outputs))
    text = netgen_text(net_param)
    shapes = {o: tuple(net.shapes[o]) for o in outputs}
    layout = layout_of(cm.net_param, shapes)
    (in_name,) = net.input_names
    common = {
        "source": cm.sources,
        "layout": layout,
        "input": {"name": in_name, "shape": list(net.input_shapes[in_name]), "batch_axis": 0,
                  "pixels": "grayscale, one channel, rows then columns",
                  "normalisation": "(p - 128) * 0.0078125, p the 8-bit gray value (Caffe transform_param "
                                   "mean_value 128, scale 0.0078125)",
                  "crop": _crop_text(crop_scale, test_crop)},
        "outputs": [{"name": o, "shape": list(shapes[o]),
                     "order": "x1 y1 x2 y2 ... in crop pixels (0-based pixel centres), landmark j at 2j, 2j+1"}
                    for o in outputs],
        "folded_batchnorm": sorted(folded) if fold else False,
        "ignored_caffemodel_layers": cm.ignored,
        "check": {"reference": ref_name, "input": f"batch {len(x)} of seeded random gray patches "
                  f"(mcl.port.convert.check_input, seed {CHECK_SEED})",
                  "tolerance": f"max({tolerance:g}, {RELATIVE:g} x largest |reference output|)",
                  "allowed": allowed,
                  "reference_output_first_face": {o: [float(f"{v:.7g}") for v in ref_out[o][0].ravel()]
                                                  for o in outputs}},
    }
    if crop_scale is not None:
        common["crop_scale"] = crop_scale
    if test_crop is not None:
        common["test_crop"] = test_crop
    files, cards = {}, {}

    def add(fname, data, fmt, engine, extra=None):
        files[fname] = data
        card = {"format": fmt, "file": fname, "sha256": sha256(data), **common, **(extra or {})}
        card["check"] = {**common["check"], "engine": engine, "max_abs_diff": diffs[engine]}
        cards[fname + ".json"] = card

    tkey = "torch (folded)" if fold else "torch"
    if "npz" in formats:
        add(f"{name}.npz", npz_bytes(blobs), "numpy npz: key '<layer>/<blob index>' -> float32 array in "
            "Caffe's shape and order (BatchNorm: mean sum, variance sum, scale factor s; mean = blob0/s)", tkey,
            {"prototxt": f"{name}.prototxt"})
    if "pt" in formats or "npz" in formats:
        files[f"{name}.prototxt"] = text.encode()
    if "pt" in formats:
        add(f"{name}.pt", state_dict_bytes(net), "pytorch state_dict", tkey,
            {"prototxt": f"{name}.prototxt",
             "rebuild": f"mcl.port.convert.load_torch('{name}.prototxt', '{name}.pt') (= mcl.torchnet."
                        f"from_netparameter(prototxt) + load_state_dict); torch {torch.__version__}"})
    if "onnx" in formats:
        data = onnx_bytes(net, outputs, opset)
        diff("onnxruntime", onnx_forward(data, x, outputs))
        add(f"{name}.onnx", data, f"onnx opset {opset}", "onnxruntime")
    for card in cards.values():
        card["check"]["all_engines"] = diffs
    return PortResult(files, cards, diffs, ref_name)


def _crop_text(crop_scale, test_crop) -> str:
    if test_crop == "authors":
        return ("test-crop protocol `authors`: a square of side 1.1 x the larger side of the face box, centred on "
                "the box, scale 49/side, gray 128 outside the picture (mcl.data.augment.crop_face); map outputs "
                "back with its crop_to_image")
    side = f"{crop_scale:g}" if crop_scale is not None else "crop_scale"
    return (f"test-crop protocol `ours`: a square of side {side} x the larger side of the face box, centred on "
            "the box, warped to 50 x 50, edges repeated (mcl.data.augment.crop_face); map outputs back with its "
            "crop_to_image")


def _reference(reference: str, text: str, model: bytes, x, outputs, layer_of):
    if reference in ("auto", "caffe"):
        got = caffe_forward(text, model, x, outputs)
        if got is not None:
            return got, "caffe"
        if reference == "caffe":
            raise PortError("--reference caffe: pycaffe does not load here")
    if reference in ("auto", "opencv"):
        try:
            return opencv_forward(text, model, x, outputs, layer_of), "opencv"
        except Exception as exc:
            raise PortError(f"OpenCV dnn cannot run the net ({str(exc).strip().splitlines()[-1]}): "
                            "no reference engine") from None
    raise PortError(f"unknown reference {reference!r}: auto, caffe or opencv")


def netgen_text(net_param) -> str:
    return text_format.MessageToString(net_param)


def write(result: PortResult, out) -> list[Path]:
    """Write every file of a checked port (each atomically; all were built before the first write)."""
    out = Path(out)
    paths = []
    for fname, data in result.files.items():
        atomic_write(out / fname, data)
        paths.append(out / fname)
    for fname, card in result.cards.items():
        atomic_write(out / fname, json.dumps(card, indent=2, sort_keys=True) + "\n")
        paths.append(out / fname)
    return paths
