"""A Caffe deploy net and its trained blobs, out to NumPy / PyTorch / ONNX and back: `port`
builds every export of a pair in memory, checks each against the reference engine and writes
its model card; `write` then writes them all.

Reading needs protobuf only (reading.py), and the pair is checked before anything runs.
Every export is built in memory (formats.py, after folding.py with `fold`) and checked
against a reference engine (engines.py: Caffe where pycaffe loads, else OpenCV's dnn
module) before any file is written. The names tests and tools use are re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcl.caffe.caffemodel import blob_array
from mcl.caffe.netgen import shape_points
from mcl.caffe.proto import caffe_pb2
from mcl.fileio import atomic_write
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.port.engines import (
    CHECK_BATCH,
    CHECK_SEED,
    NORMALISATION,
    caffe_forward,
    check_input,
    onnx_forward,
    opencv_forward,
    reference_forward,
    torch_forward,
)
from mcl.port.folding import fold_batchnorm
from mcl.port.formats import (
    OPSET,
    back_to_caffe,
    caffemodel_bytes,
    layer_outputs,
    load_torch,
    netgen_text,
    npz_bytes,
    onnx_bytes,
    read_npz,
    state_dict_bytes,
)
from mcl.port.reading import (
    CaffeModel,
    PortError,
    check_pair,
    model_blobs,
    output_tops,
    parse_caffemodel,
    parse_prototxt,
    read_model,
    sha256,
)

__all__ = [
    "CHECK_BATCH", "CHECK_SEED", "OPSET", "RELATIVE", "TOLERANCE", "CaffeModel", "PortError",
    "PortResult", "back_to_caffe", "blob_array", "caffe_forward", "caffe_pb2", "caffemodel_bytes", "check_input",
    "check_pair", "fold_batchnorm", "layer_outputs", "layout_of", "load_torch", "model_blobs", "netgen_text",
    "npz_bytes", "onnx_bytes", "onnx_forward", "opencv_forward", "output_tops", "parse_caffemodel",
    "parse_prototxt", "port", "read_model", "read_npz", "reference_forward", "sha256", "state_dict_bytes",
    "torch_forward", "write",
]

TOLERANCE = 1e-4  # largest |difference| to the reference engine an export may show ...
RELATIVE = 2e-6  # ... or this share of the output's largest |value| where larger (float32 resolution)


# ---- the port --------------------------------------------------------------------------------

def layout_of(net_param, outputs_shape: dict[str, tuple], run_layout: str | None = None) -> str | None:
    """The layout of a ported net: the run's where the port has one (`run_layout`, as its RUN/run.json
    records it), checked against the net; else the one whose 2n is the output size of the net's shape
    layer (mcl.caffe.netgen.shape_points); else, for a net from elsewhere, the one whose 2n is the size
    of its outputs; None where none fits."""
    try:
        n_points = shape_points(net_param)
    except ValueError:  # no shape layer of ours: a net from elsewhere, told by its outputs' sizes
        sizes = {shape[-1] // 2 for shape in outputs_shape.values() if len(shape) == 2 and shape[-1] % 2 == 0}
        n_points = sizes.pop() if len(sizes) == 1 else None
    if run_layout is not None:
        layout = get_layout(run_layout)
        if n_points is not None and n_points != layout.n_points:
            raise PortError(f"the run's layout is {layout.name} ({layout.n_points} landmarks), but the net "
                            f"predicts {n_points} landmarks")
        return layout.name
    hits = [name for name, lay in LAYOUTS.items() if lay.n_points == n_points]
    return hits[0] if hits else None


@dataclass
class PortResult:
    files: dict[str, bytes]  # file name -> contents, all built and checked, nothing written yet
    cards: dict[str, dict]
    diffs: dict[str, dict[str, float]]  # engine -> output -> max |diff| to the reference
    reference: str


def port(prototxt, caffemodel, name: str | None = None, formats=("npz", "pt", "onnx"), fold: bool = False,
         reference: str = "auto", allow_zero_bn_factor: bool = False, crop_scale: float | None = None,
         opset: int = OPSET, tolerance: float = TOLERANCE, test_crop: str | None = None,
         layout: str | None = None) -> PortResult:
    """Every export of the pair, in memory, each checked against the reference engine. `layout`: the run's
    (its RUN/run.json) where the pair comes from a run; else the deploy net's shape layer tells it."""
    if opset < 13:
        raise PortError(f"ONNX opset {opset}: the port writes opset 13 or later")
    cm, net = read_model(prototxt, caffemodel, allow_zero_bn_factor)
    outputs = output_tops(net)
    name = name or Path(caffemodel).stem
    src_text, src_model = cm.prototxt_text, cm.caffemodel_raw
    x = check_input(net)
    layer_of = {t: s.name for s in net.specs for t in s.tops}
    ref_out, ref_name = reference_forward(reference, src_text, src_model, x, outputs, layer_of)
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
    layout = layout_of(cm.net_param, shapes, layout)
    (in_name,) = net.input_names
    common = {
        "source": cm.sources,
        "layout": layout,
        "input": {"name": in_name, "shape": list(net.input_shapes[in_name]), "batch_axis": 0,
                  "pixels": "grayscale, one channel, rows then columns",
                  "normalisation": NORMALISATION,
                  "crop": crop_text(crop_scale, test_crop)},
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


def crop_text(crop_scale, test_crop) -> str:
    if test_crop == "authors":
        return ("test-crop protocol `authors`: a square of side 1.1 x the larger side of the face box, centred on "
                "the box, scale 49/side, gray 128 outside the picture (mcl.data.augment.crop_face); map outputs "
                "back with its crop_to_image")
    side = f"{crop_scale:g}" if crop_scale is not None else "crop_scale"
    return (f"test-crop protocol `ours`: a square of side {side} x the larger side of the face box, centred on "
            "the box, warped to 50 x 50, edges repeated (mcl.data.augment.crop_face); map outputs back with its "
            "crop_to_image")


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
