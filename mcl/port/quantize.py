"""int8 models for the predictor: ONNX Runtime's static quantization of a port, its accuracy cost measured.

`tools/port.py int8` (`int8_model`) folds BatchNorm and Scale into the convolutions of a Caffe pair
(folding.py), quantizes the folded net (QDQ: u8 activations, s8 per-channel weights, MinMax
calibration on faces of a run's validation split), keeps the first convolution in fp32 (one gray input
channel: int8 kernels gain nothing there, and the quantize steps around it cost), and measures what it
costs on the run's test faces: the mean error of the int8 model beside the fp32 port's, on the same
crops. It writes `<name>.int8.onnx` beside the fp32 port `<name>.onnx`, with a card
(`<name>.int8.onnx.json`): the fp32 card's crop, layout and box convention, and the quantization's
settings, calibration faces and measured cost. `tools/predict.py --int8` runs it.

The same folded net also goes to PyTorch's int8 (`torch_int8`: FX graph-mode static quantization with the
x86 backend, oneDNN's kernels, AMX where the CPU has it; u8 activations, s8 per-channel weights, the first
convolution fp32, calibrated on the same faces), traced and frozen into TorchScript: `<name>.int8.pt` with
its card (`<name>.int8.pt.json`, the same fields, its own cost). On a 2-core Xeon with AMX it ran a
68-point face's forward in about 0.46 ms against ONNX Runtime's 0.61 (one core; `make bench-port`).
mcl.port.predict.Predictor takes either file.

ONNX Runtime and PyTorch are imported inside the functions that run them.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mcl.data import splits
from mcl.data.writers import sha256_file
from mcl.evaluation import evaluate
from mcl.fileio import atomic_write
from mcl.port.engines import onnx_forward
from mcl.port.folding import fold_batchnorm
from mcl.port.formats import onnx_bytes
from mcl.port.reading import PortError, check_pair, output_tops, read_model

INT8_SUFFIX = ".int8.onnx"
TORCH_INT8_SUFFIX = ".int8.pt"
CALIBRATION_FACES = 200  # faces of the validation split the activation ranges are taken on
TORCH_METHOD = ("PyTorch FX static quantization, x86 backend (oneDNN): u8 activations, s8 per-channel weights, "
                "MinMax calibration; BatchNorm and Scale folded into the convolutions first; the first convolution "
                "fp32; traced and frozen (TorchScript)")
METHOD = ("ONNX Runtime static quantization, QDQ: u8 activations, s8 per-channel weights, MinMax calibration; "
          "BatchNorm and Scale folded into the convolutions first; the first convolution (one input channel) fp32")


def int8_path(onnx_path) -> Path:
    """Where the int8 model of the port `<name>.onnx` lies: `<name>.int8.onnx` beside it."""
    p = Path(onnx_path)
    return p.with_name(p.name[: -len(".onnx")] + INT8_SUFFIX if p.name.endswith(".onnx") else p.name + INT8_SUFFIX)


def torch_int8_path(onnx_path) -> Path:
    """`<name>.int8.pt` (the PyTorch int8 model, TorchScript) beside the fp32 port `<name>.onnx`."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.name[:-len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.name
    return onnx_path.with_name(stem + TORCH_INT8_SUFFIX)


def first_conv(model: bytes) -> list[str]:
    """The convolution that reads the network input (one gray channel, K = 9 per output), kept in fp32:
    on a 2-core Intel Xeon the 68-point AM's int8 forward took 0.65-0.67 ms with it in fp32 against
    0.68-0.69 ms with it quantized, side by side on one core."""
    import onnx  # deferred: only quantization reads the graph

    graph = onnx.load_from_string(model).graph
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs][:1]


def quantize_int8(fp32_path: Path, out_path: Path, calib: np.ndarray) -> None:
    """The int8 model of the fp32 ONNX at `fp32_path` (folded), calibrated on the crops `calib` (N, 1, 50, 50)."""
    from onnxruntime.quantization import (  # deferred: ONNX Runtime is loaded only where it runs
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Faces(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"data": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(out_path), Faces(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=first_conv(Path(fp32_path).read_bytes()))


def accuracy(fp32: bytes, int8, test: dict, output: str = "shape_pred") -> dict:
    """Mean error (inter-ocular, % of d as a fraction) of the fp32 and int8 models on a split's crops, the
    relative change, and how far int8 moves the points from fp32's (mean, fraction of d). `int8`: an ONNX
    model's bytes, or a function of a batch (a TorchScript model's forward)."""
    preds, out = {}, {}
    for key, model in (("fp32", fp32), ("int8", int8)):
        if callable(model):
            crop = np.concatenate([model(test["data"][i:i + 256]) for i in range(0, len(test["data"]), 256)])
        else:
            crop = np.concatenate([onnx_forward(model, test["data"][i:i + 256], [output])[output]
                                   for i in range(0, len(test["data"]), 256)])
        preds[key] = evaluate.to_image(crop.reshape(len(crop), -1), test["crop_to_image"])
        gt = test["landmarks_image"].reshape(preds[key].shape)
        out[f"mean_error_{key}"] = float(evaluate.landmark_errors(preds[key], gt, test["iod_image"]).mean())
    out["relative_change"] = (out["mean_error_int8"] - out["mean_error_fp32"]) / out["mean_error_fp32"]
    shift = np.linalg.norm(preds["int8"] - preds["fp32"], axis=-1) / test["iod_image"][:, None]
    out["int8_vs_fp32_shift"] = float(shift.mean())
    out["faces"] = len(test["data"])
    return out


def torch_float_net(fp32: bytes):
    """The folded fp32 ONNX net of a port as a torch.nn.Sequential: Conv (with the Mul and Add of a Scale
    that follows it folded in), Relu, MaxPool (2 x 2, stride 2, Caffe's ceil windows), the global mean,
    Flatten and Gemm; PortError for anything else (the nets `make nets` writes are such chains)."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load_from_string(fp32)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node]
    nodes, layers, i = list(model.graph.node), [], 0
    while i < len(nodes):
        n, a = nodes[i], attrs[i]
        if n.op_type == "Conv":
            w, b = init[n.input[1]].astype(np.float32), init[n.input[2]].astype(np.float32)
            if (i + 2 < len(nodes) and nodes[i + 1].op_type == "Mul" and nodes[i + 2].op_type == "Add"
                    and nodes[i + 1].input[1] in init and nodes[i + 2].input[1] in init):
                sc, sh = init[nodes[i + 1].input[1]].reshape(-1), init[nodes[i + 2].input[1]].reshape(-1)
                w, b, i = w * sc[:, None, None, None], b * sc + sh, i + 2
            conv = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", (1, 1))),
                                   padding=tuple(a.get("pads", (0, 0, 0, 0))[:2]), groups=a.get("group", 1))
            conv.weight.data, conv.bias.data = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            layers.append(conv)
        elif n.op_type == "Relu":
            layers.append(torch.nn.ReLU())
        elif n.op_type == "MaxPool" and a.get("kernel_shape") == a.get("strides", a.get("kernel_shape")) \
                and not any(a.get("pads", (0,))):
            layers.append(torch.nn.MaxPool2d(tuple(a["kernel_shape"]), ceil_mode=bool(a.get("ceil_mode", 0))))
        elif n.op_type in ("ReduceMean", "GlobalAveragePool"):
            layers.append(torch.nn.AdaptiveAvgPool2d(1))
        elif n.op_type == "Flatten":
            layers.append(torch.nn.Flatten())
        elif n.op_type == "Gemm":
            w, b = init[n.input[1]].astype(np.float32), init[n.input[2]].astype(np.float32)
            w = w if a.get("transB", 0) else w.T
            fc = torch.nn.Linear(w.shape[1], w.shape[0])
            fc.weight.data, fc.bias.data = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
            layers.append(fc)
        else:
            raise PortError(f"{n.name or n.op_type}: {n.op_type} is not a layer the PyTorch int8 path builds")
        i += 1
    return torch.nn.Sequential(*layers).eval()


def torch_int8(fp32: bytes, calib: np.ndarray):
    """The TorchScript int8 model of the folded fp32 ONNX `fp32`, calibrated on the crops `calib`."""
    import torch
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    net = torch_float_net(fp32)
    torch.backends.quantized.engine = "x86"
    first = next(name for name, m in net.named_children() if isinstance(m, torch.nn.Conv2d))
    mapping = QConfigMapping().set_global(get_default_qconfig("x86")).set_module_name(first, None)
    example = torch.from_numpy(np.ascontiguousarray(calib[:1]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.ao's deprecation notices)
        prepared = prepare_fx(net, mapping, (example,))
        for i in range(0, len(calib), 16):
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i:i + 16])))
        quantized = convert_fx(prepared)
        return torch.jit.freeze(torch.jit.trace(quantized, example))


def torch_forward(module):
    """A batch of crops (N, 1, 50, 50) -> the model's output, as a NumPy array."""
    import torch

    def forward(x):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return forward


def _split(run: Path, split: str) -> dict:
    listing = Path(run) / "data" / f"{split}.txt"
    if not listing.is_file():
        raise PortError(f"{listing}: missing: the int8 model is calibrated on the run's {split} split "
                        "(data_prep/prepare.py writes it)")
    return splits.load_split(run, split)


def int8_model(onnx_path, prototxt, caffemodel, run, calibration: str = "val", test: str = "test",
               faces: int = CALIBRATION_FACES) -> tuple[Path, dict]:
    """Write `<name>.int8.onnx` and its card beside the fp32 port `onnx_path` of the pair (prototxt,
    caffemodel); returns (its path, the card). PortError naming the file for a missing card or split."""
    onnx_path, run = Path(onnx_path), Path(run)
    card_path = onnx_path.with_name(onnx_path.name + ".json")
    if not card_path.is_file():
        raise PortError(f"{card_path}: missing: the fp32 port's card (tools/port.py export writes it), whose "
                        "layout, crop and box convention the int8 model keeps")
    card = json.loads(card_path.read_text())
    cm, _net = read_model(prototxt, caffemodel)
    folded_param, folded_blobs, _ = fold_batchnorm(cm.net_param, cm.blobs)
    fnet = check_pair(folded_param, folded_blobs)
    output = (card.get("outputs") or [{}])[0].get("name", "shape_pred")
    fp32 = onnx_bytes(fnet, output_tops(fnet))
    calib, test_split = _split(run, calibration), _split(run, test)
    n = min(faces, len(calib["data"]))
    with tempfile.TemporaryDirectory(prefix="mcl-int8-") as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32)
        quantize_int8(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", calib["data"][:n])
        int8 = (Path(tmp) / "int8.onnx").read_bytes()
    acc = accuracy(fp32, int8, test_split, output)
    manifest = run / "data" / "manifest.json"
    out = int8_path(onnx_path)
    card = {k: v for k, v in card.items() if k not in ("check", "sha256")}
    card.update(file=out.name, folded_batchnorm=True, precision="int8", fp32_model=onnx_path.name, quantization={
        "method": METHOD, "calibration": {"run": str(run), "split": calibration, "faces": n,
                                          "data_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None},
        "cost": {"split": test, **acc}})
    atomic_write(out, int8)
    card["sha256"] = sha256_file(out)
    atomic_write(out.with_name(out.name + ".json"), json.dumps(card, indent=2) + "\n")
    torch_int8_model(onnx_path, fp32, card, calib["data"][:n], test_split, output)
    return out, card


def torch_int8_model(onnx_path: Path, fp32: bytes, card: dict, calib: np.ndarray, test_split: dict,
                     output: str) -> Path:
    """`<name>.int8.pt` (TorchScript) beside the port, with its card: the ONNX int8 card's fields, its own
    method, file and cost on the same test crops."""
    import io

    import torch

    module = torch_int8(fp32, calib)
    acc = accuracy(fp32, torch_forward(module), test_split, output)
    out = torch_int8_path(onnx_path)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (TorchScript: deprecated in PyTorch 2.13, still run)
        torch.jit.save(module, buf)
    atomic_write(out, buf.getvalue())
    tcard = {k: v for k, v in card.items() if k != "sha256"}
    tcard.update(file=out.name, format="torchscript", quantization={
        **card["quantization"], "method": TORCH_METHOD, "torch": torch.__version__,
        "cost": {"split": card["quantization"]["cost"]["split"], **acc}})
    tcard["sha256"] = sha256_file(out)
    atomic_write(out.with_name(out.name + ".json"), json.dumps(tcard, indent=2) + "\n")
    return out
