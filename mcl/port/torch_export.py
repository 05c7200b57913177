"""A PyTorch landmark model (the second architecture's AM) out to ONNX, with the port's model card.

The card (`<model>.onnx.json`) has the fields tools/port.py writes for a Caffe model (format, file, sha256,
source, layout, input, outputs, check, crop, crop_scale, test_crop) and an `architecture` field, so
tools/predict.py (mcl.port.predict.Predictor) reads it unchanged. The export is checked against the module
in PyTorch on the port's seeded check input, with the port's tolerance, before anything is written.

`audit_and_export` is what `make audit-model` runs: the audit of the architecture
(mcl.evaluation.audit_model), then its AM exported beside the report, which records the port.
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mcl.caffe.netgen import SHAPE_LAYER
from mcl.evaluation import audit_model
from mcl.fileio import atomic_write
from mcl.method.layouts import INPUT_SIZE, Layout
from mcl.port import engines
from mcl.port.convert import RELATIVE, TOLERANCE, crop_text
from mcl.port.engines import CHECK_BATCH, CHECK_SEED, NORMALISATION, onnx_forward
from mcl.port.formats import OPSET
from mcl.port.reading import PortError, sha256
from mcl.records import provenance

INPUT_NAME, OUTPUT_NAME = "data", SHAPE_LAYER  # the names the Caffe deploy nets' ports carry


def check_pixels(batch: int = CHECK_BATCH, seed: int = CHECK_SEED) -> np.ndarray:
    """The port's check input (mcl.port.engines.check_input): seeded uniform gray pixels, normalised."""
    return engines.check_pixels((batch, 1, INPUT_SIZE, INPUT_SIZE), seed)


def onnx_of(module: torch.nn.Module, opset: int = OPSET) -> bytes:
    """The module in eval mode as ONNX, input `data` (N, 1, 50, 50), output `shape_pred` (N, 2n), batch dynamic."""
    frozen = copy.deepcopy(module).cpu().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE),), buf, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buf.getvalue()


def export_onnx(module: torch.nn.Module, layout: Layout, out, name: str, architecture: dict, source: dict,
                crop_scale: float | None = None, test_crop: str | None = None, opset: int = OPSET
                ) -> tuple[list[Path], dict]:
    """`<out>/<name>.onnx` and its card, checked against the module in PyTorch first."""
    data = onnx_of(module, opset)
    x = check_pixels()
    frozen = copy.deepcopy(module).cpu().eval()
    with torch.no_grad():
        ref = frozen(torch.from_numpy(x)).numpy()
    if ref.shape != (len(x), 2 * layout.n_points):
        raise PortError(f"the model gives {ref.shape}; layout {layout.name} needs (N, {2 * layout.n_points})")
    got = onnx_forward(data, x, [OUTPUT_NAME])[OUTPUT_NAME]
    diff = float(np.abs(got - ref).max())
    allowed = max(TOLERANCE, RELATIVE * float(np.abs(ref).max()))
    if diff > allowed:
        raise PortError(f"onnxruntime differs from PyTorch by {diff:.3g} (> {allowed:.3g}): not exported")
    fname = f"{name}.onnx"
    card = {
        "format": f"onnx opset {opset}", "file": fname, "sha256": sha256(data), "source": source,
        "layout": layout.name, "architecture": architecture,
        "input": {"name": INPUT_NAME, "shape": [1, 1, INPUT_SIZE, INPUT_SIZE], "batch_axis": 0,
                  "pixels": "grayscale, one channel, rows then columns",
                  "normalisation": NORMALISATION,
                  "crop": crop_text(crop_scale, test_crop)},
        "outputs": [{"name": OUTPUT_NAME, "shape": [1, 2 * layout.n_points],
                     "order": "x1 y1 x2 y2 ... in crop pixels (0-based pixel centres), landmark j at 2j, 2j+1"}],
        "folded_batchnorm": "BatchNorm in eval mode (stored statistics), as torch.onnx exports it",
        "check": {"reference": "torch", "engine": "onnxruntime",
                  "input": f"batch {len(x)} of seeded random gray patches (mcl.port.torch_export.check_pixels, "
                           f"seed {CHECK_SEED})",
                  "tolerance": f"max({TOLERANCE:g}, {RELATIVE:g} x largest |reference output|)",
                  "allowed": {OUTPUT_NAME: allowed}, "max_abs_diff": {OUTPUT_NAME: diff},
                  "reference_output_first_face": {OUTPUT_NAME: [float(f"{v:.7g}") for v in ref[0]]}},
    }
    if crop_scale is not None:
        card["crop_scale"] = crop_scale
    if test_crop is not None:
        card["test_crop"] = test_crop
    out = Path(out)
    atomic_write(out / fname, data)
    atomic_write(out / f"{fname}.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    return [out / fname, out / f"{fname}.json"], card


def audit_and_export(run, name: str, device: str = "cpu", scale: float | None = None, schedule: str | None = None,
                     seed: int = 0, batch: int | None = None, threads: int | None = None, out=None,
                     log=None) -> tuple[dict, list[Path]]:
    """`make audit-model`: Algorithm 1 on architecture `name` over the run's data, its report, AM as ONNX."""
    t0 = time.time()
    res = audit_model.audit_model(run, name, device, scale, schedule, seed, batch, threads, out, log)
    protocol = provenance.data_protocol(Path(run))
    source = {"trained_by": "mcl.method.pytorch.algorithm1 (tools/audit_model.py)", "run": res.doc["paths"]["run"],
              "state_dict": res.doc["paths"]["am_state_dict"], "report": res.doc["paths"]["report"]}
    paths, card = export_onnx(res.result.am, res.layout, res.out, "am", res.doc["architecture"], source,
                              protocol.get("crop_scale"), protocol.get("test_crop"))
    res.doc["port"] = {"onnx": str(paths[0].resolve()), "card": str(paths[1].resolve()), "sha256": card["sha256"],
                       "max_abs_diff": card["check"]["max_abs_diff"][OUTPUT_NAME]}
    res.doc["wall_time_s"] = time.time() - t0  # training, scoring and the export
    return res.doc, audit_model.write_report(res) + paths
