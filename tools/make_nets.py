#!/usr/bin/env python3
"""Write the nets and solvers of the paper's three configurations (5, 29, 68 points).

Default: the committed reference copies under prototxt/<layout>/ and
solvers/<layout>/ (schedule scale 1, seed 0, HDF5 input, uniform loss weights).
With --run DIR: the files of one run, under DIR/nets and DIR/solvers, and its settings as
DIR/run.json (mcl/records/settings.py).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from mcl.caffe.netgen import FROZEN_BN_DEFAULT, FROZEN_BN_SETTINGS
from mcl.caffe.runfiles import reference_files, run_files, run_settings
from mcl.fileio import atomic_write
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import BATCH_SIZE, SCHEDULES
from mcl.records import settings
from mcl.records.lock import writer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".", help="repository root for the reference copies (default: .)")
    ap.add_argument("--run", help="write one run's nets/ and solvers/ into this folder instead")
    ap.add_argument("--layout", choices=sorted(LAYOUTS, key=int), action="append",
                    help="layout(s) to write (default: all three; with --run exactly one)")
    ap.add_argument("--scale", type=float, default=1.0, help="schedule scale for --run (default 1)")
    ap.add_argument("--schedule", choices=("paper",) + tuple(SCHEDULES), default="paper",
                    help="paper: the paper's iterations times --scale (default); demo: the demo's own "
                         "iterations and steps per stage (mcl/method/stages.py)")
    ap.add_argument("--seed", type=int, default=0, help="solver random_seed for --run (default 0)")
    ap.add_argument("--batch", type=int, default=BATCH_SIZE,
                    help=f"batch size for --run (default {BATCH_SIZE}, the paper's; smaller for smoke runs)")
    ap.add_argument("--source", choices=("hdf5", "lmdb"), default="hdf5", help="train input for --run")
    for step in FROZEN_BN_DEFAULT:
        ap.add_argument(f"--frozen-bn-{step}", choices=FROZEN_BN_SETTINGS, default=FROZEN_BN_DEFAULT[step],
                        help=f"[interp] BatchNorm of the layers {step} fixes: global (use_global_stats, frozen whole) "
                             f"or batch (Caffe's TRAIN default, statistics keep moving); default "
                             f"{FROZEN_BN_DEFAULT[step]}")
    args = ap.parse_args(argv)
    fbn = {step: getattr(args, f"frozen_bn_{step}") for step in FROZEN_BN_DEFAULT}
    layouts = [get_layout(x) for x in (args.layout or sorted(LAYOUTS, key=int))]
    if args.run:
        if len(layouts) != 1:
            ap.error("--run needs exactly one --layout")
        opts = (layouts[0], args.scale, args.seed, args.source, args.batch, fbn, args.schedule)
        files, root = run_files(*opts), Path(args.run)
    else:
        files, root = {}, Path(args.out)
        for layout in layouts:
            files.update(reference_files(layout))
    try:
        with writer(root) if args.run else nullcontext():
            for rel, text in sorted(files.items()):
                atomic_write(root / rel, text)
            if args.run:
                settings.write(root, run_settings(*opts))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
