#!/usr/bin/env python3
"""Port a trained Caffe model out to NumPy, PyTorch and ONNX (`export`), its int8 ONNX model
(`int8`), or a PyTorch state_dict back into a caffemodel (`back`). Needs protobuf, torch, onnx and
onnxruntime; Caffe only for the check against Caffe itself (else OpenCV dnn).

  tools/port.py export --prototxt runs/synth-68/models/am_deploy.prototxt \\
      --caffemodel runs/synth-68/models/am.caffemodel --out runs/synth-68/port
  tools/port.py back --prototxt port/am.prototxt --state-dict port/am.pt --out am_again.caffemodel
  tools/port.py int8 --onnx runs/synth-68/port/am.onnx --prototxt runs/synth-68/models/am_deploy.prototxt \\
      --caffemodel runs/synth-68/models/am.caffemodel --run runs/synth-68

Bad input (unreadable or truncated caffemodel, a pair whose layer names or blob
shapes disagree, an unsupported layer, a BatchNorm with scale factor 0) exits 2
with the file and layer named, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mcl import torchnet
from mcl.fileio import atomic_write
from mcl.port import convert, quantize
from mcl.records.verify import check_creatable


def run_crop(run: str | None) -> tuple[float | None, str | None]:
    """(crop_scale, test-crop protocol) of the run's data, as its manifest records them."""
    manifest = Path(run) / "data" / "manifest.json" if run else None
    if manifest is None or not manifest.exists():
        return None, None
    settings = json.loads(manifest.read_text()).get("settings", {})
    return settings.get("crop_scale"), settings.get("test_crop", "ours")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="caffemodel -> .npz, .pt (+ .prototxt), .onnx, each with a JSON card")
    e.add_argument("--prototxt", required=True, help="deploy net (Input layer or input_shape)")
    e.add_argument("--caffemodel", required=True, help="trained blobs (V2 `layer` or V1 `layers`)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--name", help="file stem of the outputs (default: the caffemodel's)")
    e.add_argument("--formats", default="npz,pt,onnx", help="comma-separated: npz, pt, onnx")
    e.add_argument("--fold", action="store_true",
                   help="fold BatchNorm and Scale into the convolution before them (equal within 1e-4)")
    e.add_argument("--reference", default="auto", choices=("auto", "caffe", "opencv"),
                   help="engine every export is checked against (auto: Caffe where pycaffe loads, else OpenCV)")
    e.add_argument("--allow-zero-bn-factor", action="store_true",
                   help="port a BatchNorm whose scale factor is 0 as Caffe computes it (x / sqrt(eps))")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (13 or later)")
    e.add_argument("--run", help="run folder: its data manifest's crop_scale and test-crop protocol go into the cards")
    e.add_argument("--crop-scale", type=float, help="test-crop scale recorded in the cards (overrides --run)")
    e.add_argument("--test-crop", choices=("ours", "authors"), help="test-crop protocol recorded in the cards "
                   "(overrides --run)")
    q = sub.add_parser("int8", help="the int8 model of an ONNX port (<name>.int8.onnx + card), calibrated on a run's "
                       "faces, its accuracy cost measured on the run's test faces (tools/predict.py --int8)")
    q.add_argument("--onnx", required=True, help="the fp32 port (<name>.onnx, with its card <name>.onnx.json)")
    q.add_argument("--prototxt", required=True, help="its deploy net")
    q.add_argument("--caffemodel", required=True, help="its trained blobs (BatchNorm folded before quantizing)")
    q.add_argument("--run", required=True, help="run folder of the model's layout and crop: data/val (calibration) "
                   "and data/test (the measured cost)")
    q.add_argument("--faces", type=int, default=quantize.CALIBRATION_FACES,
                   help=f"validation faces to calibrate on (default {quantize.CALIBRATION_FACES})")
    b = sub.add_parser("back", help="PyTorch state_dict -> caffemodel")
    b.add_argument("--prototxt", required=True, help="the net the state_dict is of (e.g. the port's .prototxt)")
    b.add_argument("--state-dict", required=True, help=".pt holding the state_dict")
    b.add_argument("--out", required=True, help="caffemodel to write")
    args = p.parse_args(argv)

    try:
        if args.command == "int8":
            if args.faces < 1:
                p.error("--faces must be at least 1")
            out, card = quantize.int8_model(args.onnx, args.prototxt, args.caffemodel, args.run, faces=args.faces)
            cost = card["quantization"]["cost"]
            print(f"port: wrote {out} and its card; on {cost['faces']} {cost['split']} faces the mean error is "
                  f"{100 * cost['mean_error_int8']:.3f}% of d against fp32's {100 * cost['mean_error_fp32']:.3f}% "
                  f"({100 * cost['relative_change']:+.2f}% relative)")
            return 0
        if args.command == "back":
            atomic_write(args.out, convert.back_to_caffe(args.prototxt, args.state_dict))
            print(f"port: wrote {args.out}")
            return 0
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        bad = [f for f in formats if f not in ("npz", "pt", "onnx")]
        if bad or not formats:
            p.error(f"--formats: unknown {', '.join(bad) or '(none given)'}; choose from npz, pt, onnx")
        check_creatable(args.out)  # an output that cannot be written stops us before the work
        crop_scale, test_crop = run_crop(args.run)
        crop_scale = args.crop_scale if args.crop_scale is not None else crop_scale
        test_crop = args.test_crop or test_crop
        result = convert.port(args.prototxt, args.caffemodel, args.name, formats, args.fold, args.reference,
                              args.allow_zero_bn_factor, crop_scale, args.opset, test_crop=test_crop)
    except (convert.PortError, torchnet.NetError, OSError) as exc:
        print(f"port: error: {exc}", file=sys.stderr)
        return 2
    for path in convert.write(result, args.out):
        print(f"port: wrote {path}")
    for engine, diffs in result.diffs.items():
        if all(isinstance(v, float) for v in diffs.values()):
            print(f"port: {engine:>16} vs {result.reference}: max |diff| {max(diffs.values()):.3g}")
        else:
            print(f"port: {engine:>16} could not run the net: {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
