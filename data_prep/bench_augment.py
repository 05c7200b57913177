#!/usr/bin/env python3
"""Benchmark of the augmentation (METHOD §6): crops per second with 1 and 2 workers.

Generates synthetic faces into a temporary folder (not timed), reads them with the
300-W reader, then times the same call data_prep/prepare.py makes for the training
split (picture decoding, the five steps, JPEG re-compression, collecting the results)
with 1 worker and with 2, side by side in one run: runs interleaved, best of --repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from mcl.data.augment import AugmentSettings, CropJob, crop_samples, train_crop_ratio
from mcl.data.readers import read_300w
from mcl.data.synth import write_synth_300w
from mcl.method.layouts import IBUG68


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--faces", type=int, default=400, help="synthetic training faces")
    p.add_argument("--copies", type=int, default=50, help="augmented crops per face")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per worker count (best is reported)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mcl-bench-") as tmp:
        write_synth_300w(tmp, args.faces, 0, args.seed, workers=os.cpu_count() or 1)
        samples = read_300w(tmp, "train", "68").samples
        aug = AugmentSettings(copies=args.copies)
        job = CropJob(layout=IBUG68, seed=args.seed, augment=aug, ratio=train_crop_ratio(samples, 1.25))
        indexed = list(enumerate(samples))
        n_crops = len(samples) * args.copies
        print(f"augmentation benchmark: {len(samples)} synthetic faces x {args.copies} copies = {n_crops} crops "
              f"(50x50, rotation + box + flip + JPEG), {os.cpu_count()} CPUs, best of {args.repeats}")
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(args.repeats):  # interleaved, so both counts meet the same machine load
            for workers in (1, 2):
                t0 = time.perf_counter()
                crops, _ = crop_samples(indexed, job, workers)
                best[workers] = min(best[workers], time.perf_counter() - t0)
                assert len(crops) == n_crops
        rates = {w: n_crops / t for w, t in best.items()}
        print(f"{'workers':>8} {'crops/s':>10} {'seconds':>9}")
        for workers, rate in rates.items():
            print(f"{workers:>8} {rate:>10.0f} {n_crops / rate:>9.3f}")
        print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
