"""The engines an export is checked against: Caffe itself (pycaffe, where it loads), OpenCV's
dnn module (a second implementation that reads Caffe files on its own), the PyTorch module
and ONNX Runtime, each on the same seeded batch. pycaffe, OpenCV dnn and ONNX Runtime are
imported only by the engine that runs them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from mcl import torchnet
from mcl.method.layouts import PIXEL_MEAN, PIXEL_SCALE
from mcl.port.reading import PortError

CHECK_BATCH = 2
CHECK_SEED = 0
# The network's input as the model cards state it (METHOD §1): the constants of mcl.method.layouts.
NORMALISATION = (f"(p - {PIXEL_MEAN:g}) * {PIXEL_SCALE:g}, p the 8-bit gray value (Caffe transform_param "
                 f"mean_value {PIXEL_MEAN:g}, scale {PIXEL_SCALE:g})")


def check_pixels(shape: tuple[int, ...], seed: int = CHECK_SEED) -> np.ndarray:
    """Seeded uniform random gray pixels of `shape`, normalised as the network's input (METHOD §1)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape)
    return ((pixels - PIXEL_MEAN) * PIXEL_SCALE).astype(np.float32)


def check_input(net: torchnet.CaffeNet, batch: int = CHECK_BATCH, seed: int = CHECK_SEED) -> np.ndarray:
    """A seeded batch of normalised gray patches (check_pixels in the net's input shape)."""
    (name,) = net.input_names
    return check_pixels((batch,) + tuple(net.input_shapes[name][1:]), seed)


def torch_forward(net: torchnet.CaffeNet, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        got = net({net.input_names[0]: torch.from_numpy(x)})
    return {o: got[o].numpy() for o in outputs}


def caffe_forward(prototxt_text: str, model_bytes: bytes, x: np.ndarray, outputs: list[str]):
    """Caffe's own outputs, or None where pycaffe does not load here."""
    try:
        import caffe  # deferred: pycaffe is optional, and only this engine needs it
    except Exception:  # no pycaffe, or libcaffe missing
        return None
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
    import cv2  # deferred: only this engine needs OpenCV's dnn module
    net = cv2.dnn.readNetFromCaffe(np.frombuffer(prototxt_text.encode(), np.uint8),
                                   np.frombuffer(model_bytes, np.uint8))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x)
    names = [(layer_of or {}).get(o, o) for o in outputs]
    got = net.forward(names)
    return {o: np.asarray(g) for o, g in zip(outputs, got)}


def onnx_forward(onnx_bytes: bytes, x: np.ndarray, outputs: list[str], threads: int = 1):
    import onnxruntime as ort  # deferred: optional, and only this engine needs it
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    got = sess.run(outputs, {sess.get_inputs()[0].name: x})
    return dict(zip(outputs, got))


def reference_forward(reference: str, text: str, model: bytes, x, outputs, layer_of):
    """(outputs, engine name) of the reference engine: Caffe (`caffe`; `auto` where pycaffe loads),
    else OpenCV dnn (`opencv`; `auto`'s fallback), each reading the given files itself."""
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
