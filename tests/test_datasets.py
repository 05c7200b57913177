"""The dataset table (mcl/method/datasets.py): its facts are the ones the readers and the data
preparation use, and they are the paper's.

The expected values are written out here as METHOD states them (§8 and §11: 300-W 68 points, COFW
29, MTFL/AFLW 5; §12.11: crop scale 1.25 for 300-W and the synthetic set, 1.0 for the others; §10:
the paper's mean errors), never taken from the code under test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT
from fixtures_data import write_300w, write_cofw, write_generic, write_mtfl

from mcl.data import readers
from mcl.data.augment import AugmentSettings
from mcl.data.pipeline import PrepareSettings, prepare
from mcl.method import paper
from mcl.method.datasets import DATASETS, get_dataset

# METHOD §8, §11 (layouts) and §12.11 (crop scale), as the paper and its readings give them.
EXPECTED = {
    "synth": ("68", 1.25),
    "ibug": ("68", 1.25),
    "cofw": ("29", 1.0),
    "mtfl": ("5", 1.0),
    "generic": ("68", 1.0),
}
WRITERS = {
    "ibug": lambda root: write_300w(root, per_subset=2),
    "cofw": lambda root: write_cofw(root, n_train=4, n_test=2),
    "mtfl": lambda root: write_mtfl(root, n=4),
    "generic": lambda root: write_generic(root, n=4),
}


def test_the_table_holds_every_dataset_with_the_papers_layout_and_crop_scale():
    assert set(DATASETS) == set(EXPECTED)
    for name, (layout, crop_scale) in EXPECTED.items():
        d = get_dataset(name)
        assert (d.layout, d.crop_scale) == (layout, crop_scale), name
        assert callable(getattr(readers, d.reader, None)), f"{name}: no reader {d.reader!r} in mcl.data.readers"
        assert d.box, name


@pytest.mark.parametrize("name", ["synth", "ibug", "cofw", "mtfl", "generic"])
def test_each_format_prepared_comes_out_in_the_tables_layout_and_crop_scale(tmp_path, name):
    """A tiny dataset of each on-disk format through the data preparation, no layout or crop scale asked:
    the manifest and the targets carry the dataset's own (the paper's) layout and crop scale."""
    layout, crop_scale = EXPECTED[name]
    if name == "synth":
        extra = {"n_train": 8, "n_test": 2}
    else:
        root = tmp_path / name
        root.mkdir()
        WRITERS[name](str(root))
        extra = {"data_root": str(root)}
    m = prepare(PrepareSettings(dataset=name, out=str(tmp_path / "data"), progress=False, workers=1,
                                val_fraction=0.3, formats=("hdf5",), augment=AugmentSettings(copies=1), **extra))
    assert m["settings"]["layout"] == layout
    assert m["settings"]["crop_scale"] == crop_scale
    assert m["caffe"]["targets"].startswith(f"landmarks (2n = {2 * int(layout)})")
    assert (m["settings"]["layout"], m["settings"]["crop_scale"]) == (get_dataset(name).layout,
                                                                      get_dataset(name).crop_scale)


@pytest.mark.parametrize("name", ["ibug", "cofw", "mtfl", "generic"])
def test_the_tables_reader_is_the_one_that_reads_the_dataset(tmp_path, name):
    """read_dataset reads each dataset with the reader the table names, in the table's layout when none
    is asked for."""
    WRITERS[name](str(tmp_path))
    spec = get_dataset(name)
    test_split = "challenging" if name == "ibug" else "test"
    train, test = readers.read_dataset(name, str(tmp_path), None)
    direct = getattr(readers, spec.reader)
    assert [s.sample_id for s in train.samples] == [s.sample_id for s in direct(str(tmp_path), "train").samples]
    assert [s.sample_id for s in test.samples] == [s.sample_id for s in direct(str(tmp_path), test_split).samples]
    assert {s.layout for s in train.samples + test.samples} == {EXPECTED[name][0]}


def test_the_papers_benchmark_figures_come_from_the_table():
    # METHOD §10: mean error (%) AFLW 5 points 5.38, COFW 6.00, IBUG 8.51; test faces 2,995, 507, 135.
    for dataset, layout, value, test_faces in (("mtfl", "5", 5.38, 2995), ("cofw", "29", 6.00, 507),
                                               ("ibug", "68", 8.51, 135)):
        bench = get_dataset(dataset).benchmark
        assert bench is not None and bench.mean_error == value
        fig = paper.mean_error(dataset, layout)
        assert fig is not None and fig.value == value and fig.key == f"mean_error.{bench.name}"
        assert paper.value(f"split.{bench.name}.test") == test_faces
    assert get_dataset("synth").benchmark is None and get_dataset("generic").benchmark is None
    assert paper.mean_error("ibug", "68", "common") is None and paper.mean_error("cofw", "5") is None


def test_an_unknown_dataset_is_a_named_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope': choose one of synth, ibug, cofw, mtfl, generic"):
        get_dataset("nope")
    with pytest.raises(readers.DataError, match="unknown dataset 'nope'"):
        readers.read_dataset("nope", str(tmp_path), None)
    assert paper.mean_error("nope", "68") is None


def test_make_lines_print_each_datasets_layout_and_agree_with_the_makefile():
    out = subprocess.run([sys.executable, "-m", "mcl.method.datasets", "--make"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines() == [f"layout_{name} := {layout}" for name, (layout, _) in EXPECTED.items()]
    # Layout lines the Makefile still writes by hand (if any) say what the table says.
    written = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines()
               if line.startswith("layout_") and ":=" in line]
    assert set(written) <= set(out.splitlines()), written
