"""mcl.torchnet against real pycaffe, layer by layer: deploy nets of every layout, a layer zoo
(pooling corner cases, Slice, Reshape, Scale forms), train nets in TRAIN phase with
BatchNorm's blob updates and the gradients of every learnable blob."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcl import torchnet
from mcl.caffe import netgen
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import STAGES
from mcl.torchnet import random_blobs

ATOL = 1e-4
LAYOUT_NAMES = sorted(LAYOUTS, key=int)


pytestmark = pytest.mark.usefixtures("one_thread")


def caffe_net(caffe, tmp_path, net_param, phase, blobs, name="net"):
    path = tmp_path / f"{name}.prototxt"
    path.write_text(netgen.to_text(net_param))
    net = caffe.Net(str(path), caffe.TRAIN if phase == "TRAIN" else caffe.TEST)
    for layer, arrays in blobs.items():
        for i, a in enumerate(arrays):
            net.params[layer][i].data[...] = a.reshape(net.params[layer][i].data.shape)
    return net


def compare_layer_by_layer(cnet, tnet, inputs):
    """Forward both up to every layer in turn; every top equal within ATOL."""
    for name, value in inputs.items():
        cnet.blobs[name].data[...] = value
    feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}
    checked = 0
    for lname in cnet._layer_names:
        if lname not in tnet.layer_names or tnet.layer(lname).spec.type in torchnet.INPUT_TYPES:
            continue
        cnet.forward(end=lname)
        with torch.no_grad():
            got = tnet(feeds, upto=lname)
        for top in cnet.top_names[lname]:
            want = cnet.blobs[top].data
            have = got[top].numpy()
            assert have.shape == want.shape, (lname, top, have.shape, want.shape)
            np.testing.assert_allclose(have, want, rtol=0, atol=ATOL, err_msg=f"layer {lname} top {top}")
        checked += 1
    return checked


@pytest.mark.parametrize("layout_name", LAYOUT_NAMES)
@pytest.mark.parametrize("variant", ["bm", "pre_bm", "heads"])
def test_deploy_nets_equal_caffe_layer_by_layer(caffe, tmp_path, layout_name, variant):
    layout = get_layout(layout_name)
    if variant == "heads":
        net_param = netgen.deploy_net(layout, clusters=layout.cluster_names)
    else:
        net_param = netgen.deploy_net(layout, variant=variant)
    net_param.layer[0].input_param.shape[0].dim[0] = 2
    tnet = torchnet.from_netparameter(net_param, "TEST")
    assert tnet.input_names == ["data"]
    blobs = random_blobs(tnet, seed=int(layout_name))
    tnet.load_caffe_blobs(blobs)
    cnet = caffe_net(caffe, tmp_path, net_param, "TEST", blobs)
    x = np.random.default_rng(1).normal(0, 1, (2, 1, 50, 50)).astype(np.float32)
    assert compare_layer_by_layer(cnet, tnet, {"data": x}) == len(net_param.layer) - 1
    # the blobs go out as they came in, in Caffe's shapes
    back = tnet.caffe_blobs()
    for name, arrays in blobs.items():
        for a, b, p in zip(arrays, back[name], cnet.params[name]):
            assert b.shape == p.data.shape and np.array_equal(a, b)


ZOO = """
name: "zoo"
layer { name: "in" type: "Input" top: "x" top: "s" input_param { shape { dim: 2 dim: 3 dim: 10 dim: 11 } shape { dim: 2 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride: 2 } }
layer { name: "conv_nb" type: "Convolution" bottom: "x" top: "cnb" convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false group: 1 } }
layer { name: "max_p1" type: "Pooling" bottom: "x" top: "m1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ave_p1" type: "Pooling" bottom: "x" top: "a1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ave_ceil" type: "Pooling" bottom: "x" top: "a2" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "ave_p2" type: "Pooling" bottom: "x" top: "a3" pooling_param { pool: AVE kernel_size: 3 stride: 3 pad: 2 } }
layer { name: "max_p2" type: "Pooling" bottom: "x" top: "m3" pooling_param { pool: MAX kernel_size: 3 stride: 3 pad: 2 } }
layer { name: "max_s3" type: "Pooling" bottom: "x" top: "m4" pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
layer { name: "max_floor" type: "Pooling" bottom: "x" top: "m5" pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }
layer { name: "gmax" type: "Pooling" bottom: "x" top: "gm" pooling_param { pool: MAX global_pooling: true } }
layer { name: "gave" type: "Pooling" bottom: "x" top: "ga" pooling_param { pool: AVE global_pooling: true } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" relu_param { negative_slope: 0.1 } }
layer { name: "sc2" type: "Scale" bottom: "c" bottom: "s" top: "c2" scale_param { axis: 0 } }
layer { name: "sc3" type: "Scale" bottom: "cnb" top: "c3" scale_param { axis: 1 num_axes: 2 } }
layer { name: "flat" type: "Flatten" bottom: "a1" top: "fa1" }
layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "ip" inner_product_param { num_output: 6 } }
layer { name: "ipt" type: "InnerProduct" bottom: "m1" top: "ipt" inner_product_param { num_output: 5 transpose: true bias_term: false } }
layer { name: "sl" type: "Slice" bottom: "ip" top: "ip1" top: "ip2" top: "ip3" slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
layer { name: "sl_eq" type: "Slice" bottom: "ip" top: "e1" top: "e2" }
layer { name: "rs" type: "Reshape" bottom: "ip2" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 1 } } }
layer { name: "rs2" type: "Reshape" bottom: "ga" top: "rs2" reshape_param { shape { dim: -1 } axis: 1 } }
layer { name: "cat" type: "Concat" bottom: "e1" bottom: "e2" top: "cat" }
layer { name: "sum" type: "Eltwise" bottom: "e1" bottom: "e2" top: "sum" eltwise_param { coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "e1" bottom: "e2" top: "prod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "e1" bottom: "e2" top: "emax" eltwise_param { operation: MAX } }
"""


def test_layer_zoo_equals_caffe(caffe, tmp_path):
    net_param = netgen.parse_net(ZOO)
    tnet = torchnet.from_netparameter(net_param, "TEST")
    assert tnet.input_names == ["x", "s"]
    blobs = random_blobs(tnet, seed=3)
    tnet.load_caffe_blobs(blobs)
    cnet = caffe_net(caffe, tmp_path, net_param, "TEST", blobs, "zoo")
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(0, 1, (2, 3, 10, 11)).astype(np.float32),
              "s": np.array([0.5, -2.0], np.float32)}
    assert compare_layer_by_layer(cnet, tnet, inputs) == len(net_param.layer) - 1
    # both the native torch pooling and the explicit Caffe windows were exercised
    assert not tnet.layer("ave_p2").native and tnet.layer("max_p1").native


def train_net_with_inputs(layout, stage_name, batch):
    """The train net (HDF5Data) for torch, and the same net with an Input layer for pycaffe."""
    net_param = netgen.train_net(layout, STAGES[stage_name], netgen.DataSpec(batch_size=batch))
    fed = netgen.parse_net(netgen.to_text(net_param))
    data = fed.layer[0]
    assert data.type == "HDF5Data"
    data.type = "Input"
    data.ClearField("hdf5_data_param")
    for dims in ([batch, 1, 50, 50], [batch, 2 * layout.n_points], [batch]):
        data.input_param.shape.add().dim.extend(dims)
    return net_param, fed


@pytest.mark.parametrize("stage_name", ["stage1", "stage2"])
def test_train_phase_equals_caffe_with_batchnorm_updates_and_gradients(caffe, tmp_path, stage_name):
    layout = get_layout("5")
    batch = 4
    net_param, fed = train_net_with_inputs(layout, stage_name, batch)
    shapes = {"data": (batch, 1, 50, 50), "landmarks": (batch, 2 * layout.n_points), "inv_iod": (batch,)}
    tnet = torchnet.from_netparameter(net_param, "TRAIN", input_shapes=shapes)
    assert tnet.phase == "TRAIN" and tnet.input_names == ["data", "landmarks", "inv_iod"]
    assert tnet.loss_weights == {f"loss_{j:02d}": 1.0 for j in range(1, layout.n_points + 1)}
    blobs = random_blobs(tnet, seed=5)
    tnet.load_caffe_blobs(blobs)
    cnet = caffe_net(caffe, tmp_path, fed, "TRAIN", blobs)
    rng = np.random.default_rng(2)
    inputs = {"data": rng.normal(0, 1, shapes["data"]).astype(np.float32),
              "landmarks": rng.uniform(0, 50, shapes["landmarks"]).astype(np.float32),
              "inv_iod": rng.uniform(0.04, 0.06, shapes["inv_iod"]).astype(np.float32)}
    for k, v in inputs.items():
        cnet.blobs[k].data[...] = v
    cnet.forward()
    cnet.backward()
    out = tnet({k: torch.from_numpy(v) for k, v in inputs.items()})
    for top in cnet.blobs:
        if top in out:
            np.testing.assert_allclose(out[top].detach().numpy(), cnet.blobs[top].data, rtol=1e-5, atol=ATOL,
                                       err_msg=top)
    # BatchNorm's three blobs moved exactly as Caffe moved them (and frozen ones did not move)
    after = tnet.caffe_blobs()
    moved = 0
    for name in after:
        if tnet.layer(name).spec.type == "BatchNorm":
            for i, (a, p) in enumerate(zip(after[name], cnet.params[name])):
                np.testing.assert_allclose(a, p.data, rtol=1e-5, atol=ATOL, err_msg=f"{name} blob {i}")
            moved += not np.array_equal(after[name][2], blobs[name][2])
    assert moved == (9 if stage_name == "stage1" else 3)
    # gradients of the weighted loss equal Caffe's diffs, blob by blob, in net.params order
    loss = sum(w * out[t] for t, w in tnet.loss_weights.items())
    loss.backward()
    params = tnet.blob_params()
    caffe_order = [(n, i) for n in cnet.params if tnet.layer(n).spec.type != "BatchNorm"
                   for i in range(len(cnet.params[n]))]
    assert [(n, i) for n, i, *_ in params] == caffe_order
    for name, i, t, lr, decay in params:
        want = cnet.params[name][i].diff
        if lr == 0:
            assert t.grad is None and not t.requires_grad
            continue
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(t.grad.numpy().reshape(want.shape), want, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"{name} blob {i} gradient")
    mults = {(n, i): (lr, d) for n, i, _, lr, d in params}
    assert mults[("conv41", 0)] == (1.0, 1.0) and mults[("conv41", 1)] == (2.0, 0.0)
    assert mults[("conv11", 0)] == ((1.0, 1.0) if stage_name == "stage1" else (0.0, 0.0))


def test_batchnorm_zero_factor_follows_caffe(caffe, tmp_path):
    """A BatchNorm whose scale factor is 0 uses mean 0 and variance 0 (Caffe's rule), x / sqrt(eps)."""
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
"""
    net_param = netgen.parse_net(text)
    tnet = torchnet.from_netparameter(net_param)
    blobs = {"bn": [np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32), np.zeros(1, np.float32)]}
    tnet.load_caffe_blobs(blobs)
    cnet = caffe_net(caffe, tmp_path, net_param, "TEST", blobs)
    x = np.random.default_rng(0).normal(0, 1, (1, 2, 3, 3)).astype(np.float32)
    cnet.blobs["x"].data[...] = x
    cnet.forward()
    y = tnet({"x": torch.from_numpy(x)})["y"].numpy()
    np.testing.assert_allclose(y, cnet.blobs["y"].data, rtol=1e-5)
    np.testing.assert_allclose(y, x / np.sqrt(1e-5), rtol=1e-5)


def test_phase_rules_v1_layers_and_errors():
    text = """
input: "x"
input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "b" type: "ReLU" bottom: "x" top: "b" exclude { phase: TRAIN } }
"""
    net_param = netgen.parse_net(text)
    assert torchnet.from_netparameter(net_param, "TRAIN").layer_names == ["input", "a"]
    assert torchnet.from_netparameter(net_param, "TEST").layer_names == ["input", "b"]
    v1 = netgen.parse_net("""
input: "x" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "x" top: "c" blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 3 kernel_size: 3 } }
layers { name: "pool" type: POOLING bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "p" top: "y" inner_product_param { num_output: 2 } }
""")
    tnet = torchnet.from_netparameter(v1)
    assert [(n, i, lr, d) for n, i, _, lr, d in tnet.blob_params()] == [
        ("conv", 0, 1.0, 1.0), ("conv", 1, 2.0, 0.0), ("ip", 0, 1.0, 1.0), ("ip", 1, 1.0, 1.0)]
    assert tnet({"x": torch.zeros(1, 2, 5, 5)})["y"].shape == (1, 2)
    # legacy 4-axis blobs (an InnerProduct weight stored as 1 x 1 x N x K) are accepted as Caffe does
    legacy = {k: [a.reshape((1, 1) + a.shape) if a.ndim == 2 else a for a in v] for k, v in tnet.caffe_blobs().items()}
    tnet.load_caffe_blobs(legacy)

    bad = netgen.parse_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 } } }\n'
                           'layer { name: "lrn1" type: "LRN" bottom: "x" top: "y" }')
    with pytest.raises(torchnet.NetError, match="'lrn1'.*LRN.*not supported"):
        torchnet.from_netparameter(bad)
    with pytest.raises(torchnet.NetError, match="'conv'.*do not fit"):
        tnet.load_caffe_blobs({"conv": [np.zeros((3, 2, 2, 2), np.float32), np.zeros(3, np.float32)],
                               "ip": tnet.caffe_blobs()["ip"]})
    with pytest.raises(torchnet.NetError, match="no blobs given for layer.*ip"):
        tnet.load_caffe_blobs({"conv": tnet.caffe_blobs()["conv"]})
    bn_lr = netgen.parse_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 } } }\n'
                             'layer { name: "bn1" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 1 } }')
    with pytest.raises(torchnet.NetError, match="'bn1'.*lr_mult"):
        torchnet.from_netparameter(bn_lr)


def test_deferred_setup_from_first_forward():
    layout = get_layout("5")
    net_param = netgen.train_net(layout, STAGES["stage1"], netgen.DataSpec(batch_size=2))
    tnet = torchnet.from_netparameter(net_param, "TRAIN")
    with pytest.raises(torchnet.NetError, match="input shapes"):
        tnet.blob_params()
    out = tnet({"data": torch.zeros(2, 1, 50, 50), "landmarks": torch.zeros(2, 10), "inv_iod": torch.ones(2)})
    assert out["shape_pred"].shape == (2, 10) and len(tnet.blob_params()) == 2 * 9 * 2 + 2
