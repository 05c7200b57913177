"""The datasets (synth, ibug, cofw, mtfl, generic): the one table of what each one is.

Each dataset holds its facts: the layout it comes in (METHOD §8, §11), the default side of its
test crop (crop_scale, METHOD §12.11), the reader of mcl.data.readers that reads it (by name: this
package imports nothing else of mcl), the face box that reader gives (METHOD §11), and, for the three
the paper evaluates on, its benchmark: the test set and the paper's numbers for it (METHOD §10),
which mcl/method/paper.py lists among the paper's figures.

`python -m mcl.method.datasets` prints the table; `--make` prints the Makefile's `layout_<name> := N`
lines.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

# Where in the paper the benchmark numbers stand (its sections; METHOD §10 restates them).
MEAN_ERROR_WHERE = "Sec. IV-B, table of mean errors against the state of the art"
FACES_WHERE = "Sec. IV-A-1 (Datasets)"


@dataclass(frozen=True)
class Benchmark:
    """A test set the paper reports MCL on (METHOD §10): its mean error and its faces."""

    name: str  # the paper's name of the benchmark, the key of its figures in mcl.method.paper
    test_set: str  # what the paper tests on
    mean_error: float  # MCL's mean error, % of the inter-ocular distance (MEAN_ERROR_WHERE)
    faces: tuple[tuple[str, int, str], ...]  # (split, faces, what) as the paper counts them (FACES_WHERE)
    test_split: str | None = None  # the test split that is the benchmark, where the dataset offers several


@dataclass(frozen=True)
class Dataset:
    name: str  # as data_prep/prepare.py --dataset and the Makefile's DATASET name it
    title: str
    layout: str  # the layout a run of it gets unless one is asked for (mcl.method.layouts)
    crop_scale: float  # test-crop side = crop_scale x the larger side of the box (METHOD §12.11)
    reader: str  # the function of mcl.data.readers that reads it
    box: str  # the face box the reader gives
    benchmark: Benchmark | None = None


AFLW = Benchmark(
    "aflw", "AFLW (5 points, MTFL/TCDCN protocol)", 5.38,
    (("train", 10000, "MTFL/AFLW training faces"), ("train_lfw", 4151, "of which LFW"),
     ("train_web", 5849, "of which web images"), ("test", 2995, "AFLW test faces")))
COFW = Benchmark(
    "cofw", "COFW (29 points)", 6.00,
    (("train", 1345, "COFW training faces"), ("train_lfpw", 845, "of which LFPW"),
     ("train_cofw", 500, "of which COFW"), ("test", 507, "COFW test faces")))
IBUG = Benchmark(
    "ibug", "IBUG (68 points, 300-W challenging subset)", 8.51,
    (("train", 3148, "300-W training faces (AFW + LFPW train + Helen train)"), ("test", 135, "IBUG test faces")),
    test_split="challenging")
BENCHMARKS = (AFLW, COFW, IBUG)

# Crop scale, a reading of the paper (METHOD §12.11): 300-W's bb_ground_truth (and so the synthetic
# set's box) is the tight box of the 68 points, so its crop adds a margin; the COFW boxes, the MTFL box
# rule and generic boxes frame the whole face already.
DATASETS = {d.name: d for d in (
    Dataset("synth", "the built-in synthetic faces", "68", 1.25, "read_300w",
            "the tight box of the 68 points (the set is written as 300-W, its bb_ground_truth)"),
    Dataset("ibug", "300-W", "68", 1.25, "read_300w",
            "bb_ground_truth of bounding_boxes_<subset>.mat, the tight box of the 68 points; that box "
            "where a subset's box file is missing (METHOD §11.1)", IBUG),
    Dataset("cofw", "COFW", "29", 1.0, "read_cofw",
            "the dataset's own boxes, [left top width height] (METHOD §11.2)", COFW),
    Dataset("mtfl", "MTFL/AFLW", "5", 1.0, "read_mtfl",
            "none given: a square centred on the tight box of the five points, MTFL_BOX_SCALE x its larger "
            "side (METHOD §12.14)", AFLW),
    Dataset("generic", "generic data", "68", 1.0, "read_generic",
            "the box file's `left right top bottom` line of each picture (METHOD §11.4)"),
)}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def make_lines() -> str:
    """The Makefile's `layout_<dataset> := N` lines: each dataset's own layout."""
    return "".join(f"layout_{d.name} := {d.layout}\n" for d in DATASETS.values())


def table() -> str:
    rows = ["| dataset | layout | crop scale | reader | box | paper's benchmark |", "|---|---|---|---|---|---|"]
    for d in DATASETS.values():
        bench = (f"{d.benchmark.test_set}: mean error {d.benchmark.mean_error:.2f}%" if d.benchmark else "none")
        rows.append(f"| {d.name} ({d.title}) | {d.layout} | {d.crop_scale:g} | {d.reader} | {d.box} | {bench} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcl.method.datasets", description="The datasets' table.")
    ap.add_argument("--make", action="store_true", help="print the Makefile's layout_<dataset> := N lines")
    args = ap.parse_args(argv)
    sys.stdout.write(make_lines() if args.make else table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
