"""The Caffe the project built: it imports, its tool runs, and a net made of every
layer type the paper needs trains, snapshots and times (issue: foundation)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import run_caffe, synthetic_batch, write_hdf5, write_lmdb
from google.protobuf import text_format


def test_import_caffe_and_layer_types(caffe):
    from mcl.caffe.check import REQUIRED_LAYERS
    assert set(REQUIRED_LAYERS) <= set(caffe.layer_type_list())


def test_caffe_tool_version(caffe_tool):
    out = run_caffe(caffe_tool, "--version")
    assert re.search(r"caffe version 1\.0\.0", out), out


def tiny_net(caffe, phase: str, batch: int = 16):
    """Every layer type of the paper: LMDB Data + HDF5Data in, conv/BN/Scale/ReLU,
    MAX and global AVE pooling, InnerProduct, Slice, EuclideanLoss with loss_weight."""
    from caffe import layers as L
    from caffe import params as P
    n = caffe.NetSpec()
    if phase == "deploy":
        n.data = L.Input(shape=dict(dim=[1, 1, 50, 50]))
    else:
        n.data = L.Data(source="data/train_lmdb", backend=P.Data.LMDB, batch_size=batch,
                        transform_param=dict(mean_value=[128], scale=0.0078125))
        n.landmarks, n.inv_iod = L.HDF5Data(source="data/train.txt", batch_size=batch, ntop=2)
    n.conv1 = L.Convolution(n.data, num_output=8, kernel_size=3, pad=1, weight_filler=dict(type="msra"))
    n.conv1_bn = L.BatchNorm(n.conv1, in_place=True, param=[dict(lr_mult=0, decay_mult=0)] * 3)
    n.conv1_scale = L.Scale(n.conv1, in_place=True, bias_term=True)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=16, kernel_size=3, pad=1, weight_filler=dict(type="msra"))
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.gap = L.Pooling(n.conv2, pool=P.Pooling.AVE, global_pooling=True)
    n.pred = L.InnerProduct(n.gap, num_output=4, weight_filler=dict(type="xavier"))
    if phase != "deploy":
        n.pred_a, n.pred_b = L.Slice(n.pred, slice_param=dict(axis=1, slice_point=[2]), ntop=2)
        n.gt_a, n.gt_b = L.Slice(n.landmarks, slice_param=dict(axis=1, slice_point=[2]), ntop=2)
        n.loss_a = L.EuclideanLoss(n.pred_a, n.gt_a, loss_weight=1.5)
        n.loss_b = L.EuclideanLoss(n.pred_b, n.gt_b, loss_weight=0.5)
        n.silence = L.Silence(n.inv_iod, ntop=0)
    return n.to_proto()


@pytest.fixture
def toy_run(tmp_path, caffe, monkeypatch):
    """A two-point toy net's run folder (not conftest's tiny_run): LMDB and HDF5 data, nets, solver."""
    images, points, iod = synthetic_batch(64, 2, seed=3)
    write_lmdb(tmp_path, "train", images, points, iod)
    write_hdf5(tmp_path, "train", images, points / 10.0, iod)  # targets in tenths of pixels
    (tmp_path / "train.prototxt").write_text(str(tiny_net(caffe, "train")))
    (tmp_path / "deploy.prototxt").write_text(str(tiny_net(caffe, "deploy")))
    from mcl.caffe.proto import caffe_pb2
    s = caffe_pb2.SolverParameter(train_net="train.prototxt", base_lr=0.01, lr_policy="fixed",
                                  momentum=0.9, weight_decay=0.0005, max_iter=60, snapshot=60,
                                  snapshot_prefix="snapshots/tiny", display=1, random_seed=7,
                                  solver_mode=caffe_pb2.SolverParameter.CPU)
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "solver.prototxt").write_text(text_format.MessageToString(s))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _first_last(losses, k=10):
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def test_pycaffe_solver_trains_and_snapshots(toy_run, caffe):
    solver = caffe.SGDSolver("solver.prototxt")
    losses = []
    for _ in range(60):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss_a"].data) * 1.5 + float(solver.net.blobs["loss_b"].data) * 0.5)
    first, last = _first_last(losses)
    assert last < 0.5 * first, (first, last)
    snap = toy_run / "snapshots" / "tiny_iter_60.caffemodel"
    assert snap.exists() and (toy_run / "snapshots" / "tiny_iter_60.solverstate").exists()
    net = caffe.Net("deploy.prototxt", str(snap), caffe.TEST)
    np.testing.assert_array_equal(net.params["pred"][0].data, solver.net.params["pred"][0].data)
    np.testing.assert_array_equal(net.params["conv1_bn"][0].data, solver.net.params["conv1_bn"][0].data)


def test_caffe_train_tool_trains_and_snapshots(toy_run, caffe, caffe_tool):
    log = run_caffe(caffe_tool, "train", "--solver=solver.prototxt", cwd=toy_run)
    losses = [float(x) for x in re.findall(r"Iteration \d+ .*?, loss = ([0-9.eE+-]+)", log)]
    assert len(losses) >= 50, log[-2000:]
    first, last = _first_last(losses)
    assert last < 0.5 * first, (first, last)
    snap = toy_run / "snapshots" / "tiny_iter_60.caffemodel"
    net = caffe.Net("deploy.prototxt", str(snap), caffe.TEST)
    out = net.forward(data=np.zeros((1, 1, 50, 50), np.float32))["pred"]
    assert out.shape == (1, 4) and np.all(np.isfinite(out))
    # Resuming from the solverstate continues the iteration count.
    s = (toy_run / "solver.prototxt").read_text().replace("max_iter: 60", "max_iter: 70")
    (toy_run / "solver.prototxt").write_text(s)
    log = run_caffe(caffe_tool, "train", "--solver=solver.prototxt",
                    "--snapshot=snapshots/tiny_iter_60.solverstate", cwd=toy_run)
    assert "Iteration 70" in log and (toy_run / "snapshots" / "tiny_iter_70.caffemodel").exists()


def test_caffe_time_on_deploy(toy_run, caffe_tool):
    log = run_caffe(caffe_tool, "time", "--model=deploy.prototxt", "--iterations=3", cwd=toy_run)
    m = re.search(r"Average Forward pass: ([0-9.]+) ms", log)
    assert m and float(m.group(1)) > 0, log[-1500:]
