#!/usr/bin/env python3
"""Predict landmarks with a ported ONNX model (no Caffe): the evaluation's crop and
normalisation, points mapped back to the picture, drawn, written as JSON and .pts.

Without --model the in-box model is used (models/, mcl/port/inbox.py): the 68-point model trained
on real 300-W faces, or with --layout 5 the 5-point model trained on MTFL. Their cards
(models/<name>/MODEL_CARD.md) give their data, its terms (research use only) and their errors.

  tools/predict.py photo.jpg --out pred/                                  # the in-box 68-point model
  tools/predict.py photo.jpg --layout 5 --out pred/                       # the in-box 5-point model
  tools/predict.py photo.jpg --int8 --out pred/                           # its int8 version (card: its cost)
  tools/predict.py photo.jpg --int8 torch --out pred/                     # the same in PyTorch (TorchScript)
  tools/predict.py face.jpg --model runs/demo/port/am.onnx --out pred/          # faces found by a detector
  tools/predict.py face.jpg --box 120 80 260 230 --model am.onnx --out pred/   # the face in this box
  tools/predict.py --list faces.txt --model am.onnx --out pred/      # lines: image [x1 y1 x2 y2]
  tools/predict.py --video clip.mp4 --model am.onnx --out pred/      # or --video 0: the first camera

Boxes are [x1 y1 x2 y2] in 0-based pixels; the JSON holds 0-based points (`faces`: box,
landmarks, detector), the .pts file 1-based points (as 300-W writes them). Without --box a
detector finds the faces (--detector: mediapipe, the default: MediaPipe's BlazeFace, its short-
and full-range models merged, on the picture's colour, installed by `make setup`; mediapipe-short,
mediapipe-full, either model alone; opencv, OpenCV's Haar cascade; dlib, dlib's HOG detector, with
`make setup-peers`; dlib-cnn, dlib's CNN detector, seconds a picture, with `pip install
face_recognition_models==0.3.0`; `make bench-detect` compares them on real test faces) and its
box is mapped onto the box convention of the dataset the model was trained on (--box-convention;
docs/PORT.md).
A video is tracked: detection on the first frame and whenever the track is lost, else the
box from the landmarks of the frame before. Layout, output and crop scale come from the
model's card (<model>.json) unless given. A picture that does not decode whole (cut short,
empty, not a picture) is named as broken: exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys

from mcl.data.readers import DataError
from mcl.port.detect import CONVENTIONS, DEFAULT_DETECTOR, DETECTORS
from mcl.port.inbox import IN_BOX, InBoxError, default_onnx
from mcl.port.predict import PredictError, predict_pictures
from mcl.port.quantize import int8_path, torch_int8_path
from mcl.port.video import run_video


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", nargs="?", help="picture (its faces found by the detector, or the one in --box)")
    p.add_argument("--box", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"), help="face box, 0-based pixels")
    p.add_argument("--list", help="file of lines 'image [x1 y1 x2 y2]' (images relative to the file)")
    p.add_argument("--video", help="video file, or a camera index (0, 1, ...)")
    p.add_argument("--model", help="ONNX model written by tools/port.py (default: the in-box model of --layout, "
                   f"{', '.join(f'{k} points: models/{v}' for k, v in IN_BOX.items())}; 68 without --layout)")
    p.add_argument("--int8", nargs="?", const="onnx", choices=("onnx", "torch"),
                   help="the model's int8 version, written by tools/port.py int8 (the in-box models have both): "
                   "onnx (the default) <model>.int8.onnx in ONNX Runtime, torch <model>.int8.pt in PyTorch (faster "
                   "where oneDNN has AMX); faster on one core than fp32, the accuracy cost measured on the test faces "
                   "and stated in its card")
    p.add_argument("--out", required=True, help="folder for <image>.json, <image>.pts, <image>_landmarks.png")
    p.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                   help=f"face detector where no box is given (default {DEFAULT_DETECTOR}; none: --box needed)")
    p.add_argument("--box-convention", choices=CONVENTIONS, help="box convention the detector's box is mapped "
                   "onto (default: that of the model's training set, else 300w)")
    p.add_argument("--upsample", type=int, default=1, help="dlib and dlib-cnn detectors: pyramid levels up "
                   "(default 1; dlib-cnn takes about 4 times as long with each)")
    p.add_argument("--max-faces", type=int, default=1, help="video: faces tracked at once (default 1)")
    p.add_argument("--max-frames", type=int, help="video: stop after this many frames (a camera: default 300)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--crop-scale", type=float, help="test-crop scale (default: the model card's, else 1.25)")
    p.add_argument("--test-crop", choices=("ours", "authors"), help="test-crop protocol (default: the model card's, "
                   "else ours)")
    p.add_argument("--layout", choices=("5", "29", "68"), help="landmark layout (default: the model card's); "
                   "without --model it picks the in-box model")
    p.add_argument("--output", help="model output to read (default: the first, e.g. shape_pred)")
    args = p.parse_args(argv)
    if sum(map(bool, (args.image, args.list, args.video))) != 1:
        p.error("give one IMAGE, --list or --video")
    if args.box is not None and not args.image:
        p.error("--box goes with an IMAGE")

    try:
        model = args.model or default_onnx(args.layout)
        if args.int8:
            model = int8_path(model) if args.int8 == "onnx" else torch_int8_path(model)
            if not model.is_file():
                raise PredictError(f"{model}: missing: the int8 model (tools/port.py int8 --onnx "
                                   f"{args.model or default_onnx(args.layout)} ... writes it)")
        common = {"model": model, "crop_scale": args.crop_scale, "layout": args.layout, "output": args.output,
                  "test_crop": args.test_crop, "detector": args.detector, "convention": args.box_convention,
                  "upsample": args.upsample}
        if args.video:
            frames = args.max_frames or (300 if args.video.isdigit() else None)
            done = [run_video(source=args.video, out=args.out, max_faces=args.max_faces, max_frames=frames,
                              progress=not args.quiet, **common)]
        else:
            done = predict_pictures(args.image, args.box, args.list, args.out, **common)
    except (PredictError, DataError, InBoxError) as exc:  # DataError: a picture or crop the readers refuse, named by them
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    for paths in done:
        print("predict: wrote " + ", ".join(str(x) for x in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
