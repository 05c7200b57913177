#!/usr/bin/env python3
"""Predict landmarks with a ported ONNX model (no Caffe): the evaluation's crop and
normalisation, points mapped back to the picture, drawn, written as JSON and .pts.

  tools/predict.py face.jpg --box 120 80 260 230 --model runs/synth-68/port/am.onnx --out pred/
  tools/predict.py --list faces.txt --model am.onnx --out pred/      # lines: image x1 y1 x2 y2

Boxes are [x1 y1 x2 y2] in 0-based pixels (the toolkit's convention); the JSON holds
0-based points, the .pts file 1-based points (as 300-W writes them). Layout, output
and crop scale come from the model's card (<model>.json) unless given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcl.port.predict import PredictError, Predictor, read_gray, read_list, write_outputs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", nargs="?", help="picture of one face (with --box)")
    p.add_argument("--box", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"), help="face box, 0-based pixels")
    p.add_argument("--list", help="file of lines 'image x1 y1 x2 y2' (images relative to the file)")
    p.add_argument("--model", required=True, help="ONNX model written by tools/port.py")
    p.add_argument("--out", required=True, help="folder for <image>.json, <image>.pts, <image>_landmarks.png")
    p.add_argument("--crop-scale", type=float, help="test-crop scale (default: the model card's, else 1.25)")
    p.add_argument("--test-crop", choices=("ours", "authors"), help="test-crop protocol (default: the model card's, "
                   "else ours)")
    p.add_argument("--layout", choices=("5", "29", "68"), help="landmark layout (default: the model card's)")
    p.add_argument("--output", help="model output to read (default: the first, e.g. shape_pred)")
    args = p.parse_args(argv)
    if bool(args.image) == bool(args.list):
        p.error("give an IMAGE with --box, or --list")
    if args.image and args.box is None:
        p.error("IMAGE needs --box X1 Y1 X2 Y2")

    try:
        predictor = Predictor.from_onnx(args.model, args.crop_scale, args.layout, args.output,
                                        test_crop=args.test_crop)
        faces = read_list(args.list) if args.list else [(args.image, args.box)]
        stems = [Path(img).stem for img, _ in faces]
        done = []
        for i, (image, box) in enumerate(faces):
            points = predictor.predict(read_gray(image), box)
            stem = stems[i] if stems.count(stems[i]) == 1 else f"{stems[i]}_{i:04d}"
            done.append(write_outputs(args.out, image, points, box, predictor, stem))
    except PredictError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    for paths in done:
        print("predict: wrote " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
