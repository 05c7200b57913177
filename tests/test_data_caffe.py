"""HDF5 and LMDB give the same network input through real Caffe (no mocks).

A tiny net reads one split both ways: a Data layer on `<split>_lmdb` with
transform_param { mean_value: 128 scale: 0.0078125 }, a Data layer on
`<split>_targets_lmdb` sliced into landmarks and inv_iod, and an HDF5Data layer on
`<split>.txt`. Caffe runs in the folder that contains data/, as the training nets do.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mcl.data.augment import AugmentSettings
from mcl.data.pipeline import PrepareSettings, prepare
from mcl.data.writers import PIXEL_MEAN, PIXEL_SCALE, read_hdf5_list, read_lmdb

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe", reason="Caffe is installed by `make setup`")


def two_way_net(split: str, batch: int, n_points: int):
    from caffe import layers as L
    from caffe import params as P

    n = caffe.NetSpec()
    n.data_lmdb = L.Data(source=f"data/{split}_lmdb", backend=P.Data.LMDB, batch_size=batch,
                         transform_param=dict(mean_value=[PIXEL_MEAN], scale=PIXEL_SCALE))
    n.targets_lmdb = L.Data(source=f"data/{split}_targets_lmdb", backend=P.Data.LMDB, batch_size=batch)
    n.landmarks_4d, n.inv_iod_4d = L.Slice(n.targets_lmdb, slice_param=dict(axis=1, slice_point=[2 * n_points]),
                                           ntop=2)
    n.landmarks_lmdb = L.Flatten(n.landmarks_4d)  # (N, 2n, 1, 1) -> (N, 2n)
    # (N, 1, 1, 1) -> (N,), the shape of HDF5's inv_iod, as a Scale layer with axis 0 wants it
    n.inv_iod_lmdb = L.Reshape(n.inv_iod_4d, reshape_param=dict(shape=dict(dim=[0]), axis=0, num_axes=-1))
    n.data, n.landmarks, n.inv_iod = L.HDF5Data(source=f"data/{split}.txt", batch_size=batch, ntop=3)
    return n.to_proto()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("caffe_run")
    prepare(PrepareSettings(dataset="synth", out=str(run / "data"), n_train=10, n_test=6, val_fraction=0.2,
                            augment=AugmentSettings(copies=2), seed=3, progress=False, h5_max_mb=0.05))
    # about 4 crops per .h5 file, so a batch of 8 spans files, as large splits do
    assert len((run / "data" / "train.txt").read_text().splitlines()) == 4
    return run


@pytest.mark.parametrize("split,batch", [("train", 8), ("test", 3)])
def test_hdf5_and_lmdb_give_the_same_network_input(run_dir, split, batch, monkeypatch):
    monkeypatch.chdir(run_dir)  # list files hold data/<split>_NNN.h5, relative to the run folder
    proto = run_dir / f"two_way_{split}.prototxt"
    proto.write_text(str(two_way_net(split, batch, 68)))
    net = caffe.Net(str(proto), caffe.TEST)
    ref = read_hdf5_list(str(run_dir / "data" / f"{split}.txt"))
    seen = 0
    for step in range(2):
        net.forward()
        b = net.blobs
        assert b["data_lmdb"].data.shape == b["data"].data.shape == (batch, 1, 50, 50)
        np.testing.assert_array_equal(b["data_lmdb"].data, b["data"].data)
        np.testing.assert_array_equal(b["landmarks_lmdb"].data, b["landmarks"].data)
        assert b["inv_iod_lmdb"].data.shape == b["inv_iod"].data.shape == (batch,)
        np.testing.assert_array_equal(b["inv_iod_lmdb"].data, b["inv_iod"].data)
        idx = np.arange(seen, seen + batch) % len(ref["data"])
        np.testing.assert_array_equal(b["data"].data, ref["data"][idx])  # Caffe read what we wrote
        seen += batch
    assert np.abs(b["data"].data).max() <= 1.0 and b["data"].data.std() > 0.05


def test_lmdb_datums_have_the_documented_layout(run_dir):
    images = read_lmdb(str(run_dir / "data" / "test_lmdb"))
    targets = read_lmdb(str(run_dir / "data" / "test_targets_lmdb"))
    assert [k for k, _ in images] == [f"{i:08d}" for i in range(6)] == [k for k, _ in targets]
    d = images[0][1]
    assert (d.channels, d.height, d.width, len(d.data), len(d.float_data)) == (1, 50, 50, 2500, 0)
    t = targets[0][1]
    assert (t.channels, t.height, t.width, len(t.float_data)) == (137, 1, 1, 137)
    ref = read_hdf5_list(str(run_dir / "data" / "test.txt"))
    pixels = np.frombuffer(d.data, np.uint8).astype(np.float32)
    np.testing.assert_array_equal((pixels - 128) * np.float32(0.0078125), ref["data"][0].ravel())
    np.testing.assert_array_equal(np.float32(t.float_data[:136]), ref["landmarks"][0])
    assert np.float32(t.float_data[136]) == ref["inv_iod"][0]
