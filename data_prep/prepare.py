#!/usr/bin/env python3
"""Prepare a face-alignment dataset for Caffe: crops (50 x 50 gray), HDF5 + LMDB.

  python data_prep/prepare.py --dataset synth --out runs/synth-68/data
  python data_prep/prepare.py --dataset ibug --data-root /data/300W --out runs/ibug-68/data

The logic lives in mcl.data (see docs/DATA.md); this script only parses arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from mcl.data.augment import DEFAULT_TEST_CROP, TEST_CROPS, AugmentSettings
from mcl.data.pipeline import DEFAULT_CROP_SCALE, FORMATS, PrepareSettings, prepare
from mcl.data.pool import WorkerError
from mcl.data.readers import DATASETS, OUTSIDE_TOLERANCE, DataError
from mcl.data.synth import SynthSettings
from mcl.records.lock import writer


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    aug = AugmentSettings()
    syn = SynthSettings()
    p = argparse.ArgumentParser(
        description="Prepare a face-alignment dataset: read it, hold out validation faces, augment the training "
                    "faces (METHOD §6), crop val/test faces with their boxes, and write HDF5 and LMDB for Caffe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which reader (synth: generate first)")
    p.add_argument("--data-root", help="dataset folder (synth: where to write/reuse the generated pictures; "
                                       "default <out>/synth_raw)")
    p.add_argument("--layout", choices=("5", "29", "68"),
                   help="landmark layout (default: the dataset's own; 68-point data can give 29 or 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes (the output does not depend on it)")
    p.add_argument("--out", required=True, help="output folder, e.g. runs/synth-68/data")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--test-split", default="challenging", choices=("common", "challenging", "full"),
                   help="300-W test set: common (Helen+LFPW test), challenging (IBUG, 135), full")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training faces held out for validation before augmentation")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad samples (listed with reasons in manifest.json) instead of stopping")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: hdf5, lmdb")
    g = p.add_argument_group("augmentation (METHOD §6; defaults are [interp], METHOD §12.9)")
    g.add_argument("--copies", type=int, default=aug.copies, help="augmented crops per training face")
    g.add_argument("--angles", type=floats, default=aug.angles, help="rotation angles, degrees")
    g.add_argument("--extents", type=floats, default=aug.extents, help="box scale extents")
    g.add_argument("--shift", type=float, default=aug.shift, help="max translation, share of the box side")
    g.add_argument("--flip-prob", type=float, default=aug.flip_prob, help="probability of a horizontal flip")
    g.add_argument("--jpeg-quality", type=floats, default=aug.jpeg_quality, help="min,max JPEG quality")
    g = p.add_argument_group("cropping")
    g.add_argument("--crop-scale", type=float, default=None,
                   help="crop side / larger box side (default per dataset: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_CROP_SCALE.items()) + ")")
    g.add_argument("--test-crop", choices=TEST_CROPS, default=DEFAULT_TEST_CROP,
                   help="protocol of the val/test box crops (METHOD §1): ours (a square of crop-scale x the larger "
                        "box side, edges repeated) or authors (the authors' release: 1.1 x the larger box side, "
                        "scale 49/side, gray outside the picture; --crop-scale is then not used for them)")
    g.add_argument("--outside-tolerance", type=float, default=OUTSIDE_TOLERANCE,
                   help="landmarks further outside the picture than this share of the box side are bad")
    g.add_argument("--coords-base", type=int, choices=(0, 1), default=1,
                   help="generic format: coordinate base of .pts and box files")
    g.add_argument("--h5-max-mb", type=float, default=256.0, help="largest .h5 file, MB")
    g = p.add_argument_group("synthetic set")
    g.add_argument("--n-train", type=int, default=600, help="training faces")
    g.add_argument("--n-test", type=int, default=100, help="test faces")
    g.add_argument("--synth-size", type=int, default=syn.size, help="picture side, pixels")
    g.add_argument("--occlusion-prob", type=float, default=syn.occlusion_prob, help="share of occluded faces")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _on_signal(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    sys.exit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if len(args.jpeg_quality) != 2:
            raise ValueError(f"--jpeg-quality takes two numbers min,max, not {len(args.jpeg_quality)}")
        augment = AugmentSettings(copies=args.copies, angles=tuple(args.angles), extents=tuple(args.extents),
                                  shift=args.shift, flip_prob=args.flip_prob,
                                  jpeg_quality=tuple(int(q) for q in args.jpeg_quality))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = PrepareSettings(
        dataset=args.dataset, out=args.out, data_root=args.data_root, layout=args.layout, seed=args.seed,
        workers=args.workers, test_split=args.test_split, val_fraction=args.val_fraction,
        skip_bad=args.skip_bad, formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        force=args.force, augment=augment, crop_scale=args.crop_scale, test_crop=args.test_crop,
        tolerance=args.outside_tolerance,
        coords_base=args.coords_base, n_train=args.n_train, n_test=args.n_test,
        synth=SynthSettings(size=args.synth_size, occlusion_prob=args.occlusion_prob),
        h5_max_mb=args.h5_max_mb, progress=not args.quiet)
    # SIGTERM unwinds like Ctrl-C: the workers are ended and the partial output folder
    # is removed. A second signal during that clean-up is ignored, so the clean-up ends.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    run = Path(args.out).resolve().parent  # RUN/data: one writer in the run folder (mcl/records/lock.py)
    try:
        with writer(run) if Path(args.out).name == "data" and run.is_dir() else nullcontext():
            manifest = prepare(settings)
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written under --out", file=sys.stderr)
        return 130
    except SystemExit:
        print("error: terminated; nothing was written under --out", file=sys.stderr)
        raise
    counts = ", ".join(f"{s} {c['crops']} crops from {c['faces']} faces" for s, c in manifest["counts"].items())
    print(f"wrote {args.out}: {counts}; {manifest['n_skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
