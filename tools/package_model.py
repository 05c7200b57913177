#!/usr/bin/env python3
"""Package a finished `make paper` run's assembled model (AM) as an in-box model under models/<name>/:
deploy.prototxt and <name>.caffemodel, <name>.onnx (checked against Caffe) with its card, and the model
card (card.json, MODEL_CARD.md) giving the data and its terms, the schedule, the seed and the errors on
every test split beside the peers' (mcl/port/inbox.py). `make models` runs it for both in-box models.

  tools/package_model.py --run runs/paper-mtfl --name mcl-5-mtfl --splits test=AFLW net_rest net_rest_80 \\
      --box-convention mtfl --terms mtfl --data-title "MTFL (10,000 faces)"
"""

from __future__ import annotations

import argparse
import sys

from mcl.port.convert import PortError
from mcl.port.detect import CONVENTIONS
from mcl.port.inbox import DATA_TERMS, MODELS_DIR, InBoxError, package


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder where `make paper` has finished")
    p.add_argument("--name", required=True, help="the model's name: its folder and file stem")
    p.add_argument("--out", help=f"output folder (default {MODELS_DIR}/<name>)")
    p.add_argument("--splits", nargs="+", default=["test"], help="test splits of the run whose errors the card gives "
                   "(RUN/paper/eval_<split>.json), each SPLIT or SPLIT=NAME (e.g. test=AFLW)")
    p.add_argument("--box-convention", required=True, choices=CONVENTIONS,
                   help="the box the model's training faces were cropped from (the predictor maps a detector's "
                        "box onto it)")
    p.add_argument("--terms", required=True, choices=sorted(DATA_TERMS), help="the training data's terms of use")
    p.add_argument("--data-title", required=True, help="the training data in words, for the card")
    args = p.parse_args(argv)
    try:
        paths = package(args.run, args.name, args.out or MODELS_DIR / args.name, args.splits, args.box_convention,
                        args.terms, args.data_title)
    except (InBoxError, PortError, OSError) as exc:
        print(f"package_model: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"package_model: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
