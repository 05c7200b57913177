"""The method for any PyTorch model (mcl.method.pytorch) and its audit on a second architecture.

Eq. 4 against hand arithmetic and against our Caffe loss layers run in Caffe; Eq. 2-3's assembly
exact on every layout; the heads' start; Eq. 5 / Eq. 9 against the Caffe pipeline's own tool;
the schedule against the demo's table; the update against Caffe's SGD written out by hand; the batches
in a Caffe data layer's order; determinism; named errors; tools/audit_model.py end to end
(its report, its ONNX export read by tools/predict.py, exit 2 on bad input).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import new_run, tool
from torch import nn

from mcl.caffe import caffemodel, netgen
from mcl.caffe.proto import caffe_pb2
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.pytorch import (
    LandmarkLoss,
    LayoutMismatchError,
    ModelError,
    MultiCenterHeads,
    Schedule,
    ShapeLayerError,
    StageSchedule,
    algorithm1,
    assemble_heads,
)

# A fixed batch: 2 faces, 3 landmarks (x1 y1 x2 y2 x3 y3), d = 2 and 1, weights 1, 2, 0.5.
PRED = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]]
TARGET = [[0.0, 0.0, 3.0, 3.0, 5.0, 8.0], [0.0, 1.0, 1.0, 1.0, 0.0, 2.0]]
D = [2.0, 1.0]
U = [1.0, 2.0, 0.5]


def eq4_by_hand(pred, target, d, u):
    """Eq. 4 term by term: mean over faces of sum_j u_j ((dx)^2 + (dy)^2) / (2 d^2)."""
    total = 0.0
    for p, g, di in zip(pred, target, d):
        face = 0.0
        for j, uj in enumerate(u):
            face += uj * ((p[2 * j] - g[2 * j]) ** 2 + (p[2 * j + 1] - g[2 * j + 1]) ** 2) / (2 * di ** 2)
        total += face
    return total / len(pred)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_loss_is_eq4_by_hand():
    # Face 1: squared distances 5, 1, 4 -> (5 + 2 + 2) / 8 = 1.125; face 2: 1, 0, 4 -> (1 + 0 + 2) / 2 = 1.5.
    assert eq4_by_hand(PRED, TARGET, D, U) == pytest.approx(1.3125)
    assert float(LandmarkLoss(U)(t(PRED), t(TARGET), t(D))) == pytest.approx(1.3125, rel=1e-7)
    # u_j = 1: (10 / 8 + 5 / 2) / 2
    assert float(LandmarkLoss()(t(PRED), t(TARGET), t(D))) == pytest.approx(1.875, rel=1e-7)
    rng = np.random.default_rng(4)
    p, g = rng.uniform(0, 50, (5, 10)), rng.uniform(0, 50, (5, 10))
    d, u = rng.uniform(10, 30, 5), rng.uniform(0.1, 3, 5)
    assert float(LandmarkLoss(u)(t(p), t(g), t(d))) == pytest.approx(eq4_by_hand(p, g, d, u), rel=1e-5)


def _input(net, name, shape):
    layer = net.layer.add()
    layer.name, layer.type = name, "Input"
    layer.top.append(name)
    layer.input_param.shape.add().dim.extend(shape)


def test_loss_equals_our_caffe_loss_layers(caffe, tmp_path):
    """The same predictions through netgen.eq4_loss (Scale by 1/d, Slice, weighted EuclideanLoss) in Caffe."""
    layout = get_layout(68)
    n, batch = layout.n_points, 6
    rng = np.random.default_rng(8)
    pred = rng.uniform(0, 50, (batch, 2 * n)).astype(np.float32)
    target = rng.uniform(0, 50, (batch, 2 * n)).astype(np.float32)
    d = rng.uniform(12, 30, batch).astype(np.float32)
    u = rng.uniform(0.2, 3.0, n)
    net = caffe_pb2.NetParameter()
    net.name = "eq4_check"
    _input(net, "pred", [batch, 2 * n])
    _input(net, "landmarks", [batch, 2 * n])
    _input(net, "inv_iod", [batch])
    netgen.eq4_loss(net, "pred", "landmarks", "inv_iod", u)
    path = tmp_path / "eq4.prototxt"
    path.write_text(netgen.to_text(net))
    c = caffe.Net(str(path), caffe.TRAIN)
    c.blobs["pred"].data[...] = pred
    c.blobs["landmarks"].data[...] = target
    c.blobs["inv_iod"].data[...] = 1.0 / d
    out = c.forward()
    weights = netgen.loss_weights_of(net)
    caffe_total = sum(weights[top] * float(out[top]) for top in weights)
    ours = float(LandmarkLoss(u)(t(pred), t(target), t(d)))
    assert caffe_total > 0
    assert ours == pytest.approx(caffe_total, rel=1e-5)
    assert ours == pytest.approx(eq4_by_hand(pred.astype(np.float64), target, d, u), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LAYOUTS, key=int))
def test_assembled_layer_reproduces_each_heads_own_clusters_exactly(name):
    layout = get_layout(name)
    torch.manual_seed(int(name))
    shape = nn.Linear(32, 2 * layout.n_points)
    heads = MultiCenterHeads(shape, layout)
    with torch.no_grad():  # heads as fine-tuning leaves them: each different
        for head in heads.heads.values():
            head.weight.add_(torch.randn_like(head.weight))
            head.bias.add_(torch.randn_like(head.bias))
    am = assemble_heads(heads)
    assert isinstance(am, nn.Linear) and (am.in_features, am.out_features) == (32, 2 * layout.n_points)
    x = torch.randn(9, 32)
    with torch.no_grad():
        got, each = am(x), heads(x)
    assert list(each) == list(layout.cluster_names)
    for cluster, members in layout.clusters:
        rows = [r for j in members for r in (2 * j, 2 * j + 1)]
        head = heads.heads[cluster]
        assert torch.equal(am.weight[rows], head.weight[rows]) and torch.equal(am.bias[rows], head.bias[rows])
        assert torch.equal(got[:, rows], each[cluster][:, rows])
    covered = sorted(j for _, members in layout.clusters for j in members)
    assert covered == list(range(layout.n_points))


def test_every_head_starts_from_the_shape_layer():
    layout = get_layout(68)
    torch.manual_seed(1)
    shape = nn.Linear(16, 136)
    heads = MultiCenterHeads(shape, 68)
    assert list(heads.heads) == ["left_eye", "right_eye", "nose", "mouth", "left_contour", "chin", "right_contour"]
    for head in heads.heads.values():
        assert torch.equal(head.weight, shape.weight) and torch.equal(head.bias, shape.bias)
        assert head.weight.data_ptr() != shape.weight.data_ptr()
    before = shape.weight.clone()
    with torch.no_grad():
        heads.heads["nose"].weight.zero_()
    assert torch.equal(shape.weight, before) and layout.m == len(heads.heads)


def test_schedule_is_the_pipelines():
    """Schedule.from_stages reads mcl.method.stages: the demo's table (docs/DEMO.md) and the paper's at a scale."""
    demo = Schedule.from_stages(schedule="demo")
    assert demo.stages == {"stage1": StageSchedule(1500, 600, 0.02), "stage2": StageSchedule(60, 30, 0.001),
                           "stage3": StageSchedule(150, 75, 0.001), "heads": StageSchedule(150, 75, 0.001),
                           "equal_budget": StageSchedule(360, 75, 0.001)}
    paper = Schedule.from_stages(0.01)
    assert paper.stages["stage1"] == StageSchedule(1800, 300, 0.02)
    assert paper.stages["equal_budget"].iterations == 1800
    assert (paper.batch_size, paper.momentum, paper.weight_decay, paper.gamma) == (64, 0.9, 0.0005, 0.3)


def small_model(n_points: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 2 * n_points))


def toy_data(n_points: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1, 20, 20)).astype(np.float32),
            rng.uniform(5, 15, (n, 2 * n_points)).astype(np.float32), rng.uniform(4, 8, n).astype(np.float32))


TINY = Schedule({s: StageSchedule(6, 3, 0.01) for s in ("stage1", "stage2", "stage3", "heads", "equal_budget")},
                batch_size=8)


def test_eq5_and_eq9_are_those_of_the_caffe_pipeline(caffe, tmp_path):
    """tools/compute_weights.py (the pipeline's Eq. 5 / Eq. 9 step, in Caffe) on a model; algorithm1 given the
    same validation errors trains with the same weights, to the last bit."""
    run = new_run(tmp_path / "run", layout=5)
    net = caffe.Net(str(run / "nets/deploy.prototxt"), caffe.TEST)
    for layer in net.layers:
        if layer.type == "BatchNorm":  # the statistics of a net that has seen data: mean 0, variance 1
            layer.blobs[0].data[...], layer.blobs[1].data[...], layer.blobs[2].data[...] = 0, 1, 1
    net.save(str(run / "model.caffemodel"))
    docs = {}
    for eq in (5, 9):
        tool("tools/compute_weights.py", "--run", run, "--model", run / "model.caffemodel", "--eq", eq,
             "--out", run / f"eq{eq}.json")
        docs[eq] = json.loads((run / f"eq{eq}.json").read_text())
    # algorithm1 asks for BM's errors (Eq. 5), then WM's (Eq. 9): here the errors each file came from.
    given = iter([np.asarray(docs[5]["errors"]), np.asarray(docs[9]["errors"])])
    res = algorithm1(small_model(5), 5, toy_data(5, 16, 1), toy_data(5, 8, 2), TINY, fixed_in_stage2=["0", "1"],
                     val_errors=lambda model: next(given), equal_budget=False)
    assert len(docs[5]["errors"]) == 5 and min(docs[5]["errors"]) > 0
    assert res.errors["bm"].tolist() == docs[5]["errors"] and res.errors["wm"].tolist() == docs[9]["errors"]
    assert res.weights["eq5"].tolist() == docs[5]["weights"]
    assert {c: v.tolist() for c, v in res.weights["eq9"].items()} == docs[9]["clusters"]
    # Eq. 5 by hand (n b_j / sum b), and Eq. 8 for the left eye (|P| = 1, n = 5, alpha 125): u_P = 625 / 129.
    b = docs[5]["errors"]
    assert docs[5]["weights"] == pytest.approx([5 * x / sum(b) for x in b], rel=1e-12)
    assert docs[9]["clusters"]["left_eye"][0] == pytest.approx(625 / 129, rel=1e-12)


def test_algorithm1_is_deterministic(one_thread):
    train, val = toy_data(5, 24, 1), toy_data(5, 8, 2)

    def once(seed):
        res = algorithm1(small_model(5), "5", train, val, TINY, fixed_in_stage2=["0", "1"], seed=seed)
        return {k: {n: v.clone() for n, v in getattr(res, k).state_dict().items()}
                for k in ("bm", "wm", "am", "equal_budget")}, res

    a, res = once(3)
    b, _ = once(3)
    for k in a:
        assert a[k].keys() == b[k].keys()
        assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
    c, _ = once(4)  # another batch order: other bits
    assert not torch.equal(a["bm"]["8.weight"], c["bm"]["8.weight"])
    assert res.fixed_in_stage2 == ("0", "1") and res.stages["stage2"]["iterations"] == 6
    assert not torch.equal(a["wm"]["0.weight"], a["bm"]["0.weight"])  # stage 3 trains every layer


def test_stage2_leaves_the_fixed_layers_alone(one_thread):
    train, val = toy_data(5, 24, 1), toy_data(5, 8, 2)
    sch = Schedule({**TINY.stages, "stage3": StageSchedule(0, 3, 0.01)}, batch_size=8)
    res = algorithm1(small_model(5), 5, train, val, sch, fixed_in_stage2=["0", "1"], equal_budget=False)
    bm, wm = res.bm.state_dict(), res.wm.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.equal(bm[key], wm[key]), key
    assert not torch.equal(bm["3.weight"], wm["3.weight"])


def test_training_is_caffes_sgd_update(one_thread):
    """Two iterations of stage 1 on a linear model against Caffe's SGD written out by hand (METHOD §5.2):
    history = lr_mult lr (g + decay_mult weight_decay w) + momentum history, w -= history; a bias at lr_mult 2,
    decay_mult 0; lr = base_lr gamma^floor(it / stepsize). The batch is the whole training set (B = N), so the
    gradient does not depend on the order of the rows; gradients by autograd of Eq. 4 written here, in float64."""
    rng = np.random.default_rng(7)
    n, points = 12, 5
    images = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    targets = rng.normal(size=(n, 2 * points)).astype(np.float32)
    d = rng.uniform(1, 2, n).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2 * points))
    base_lr, gamma, momentum, decay = 0.1, 0.3, 0.9, 0.05
    idle = StageSchedule(0, 1, base_lr)
    sch = Schedule({"stage1": StageSchedule(2, 1, base_lr), "stage2": idle, "stage3": idle, "heads": idle,
                    "equal_budget": idle}, batch_size=n, momentum=momentum, weight_decay=decay, gamma=gamma)
    res = algorithm1(model, 5, (images, targets, d), (images[:4], targets[:4], d[:4]), sch, fixed_in_stage2=[],
                     equal_budget=False)

    x, t_, d_ = (torch.from_numpy(a).double() for a in (images.reshape(n, 16), targets, d))

    def grads(w, b):
        w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
        loss = (((x @ w.T + b - t_) / d_[:, None]) ** 2).sum(1).mean() / 2  # Eq. 4, u_j = 1
        loss.backward()
        return w.grad, b.grad

    w, b = model[1].weight.detach().double(), model[1].bias.detach().double()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for it in range(2):
        lr = base_lr * gamma ** (it // 1)
        gw, gb = grads(w, b)
        vw = momentum * vw + lr * (gw + decay * w)
        vb = momentum * vb + 2 * lr * gb
        w, b = w - vw, b - vb
    got = res.bm[1]
    assert not torch.allclose(got.weight.double(), model[1].weight.double(), atol=1e-3)  # it did train
    np.testing.assert_allclose(got.weight.detach().double().numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.bias.detach().double().numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_every_stage_reads_the_rows_as_a_caffe_data_layer(one_thread):
    """The batches: one seeded order of the training rows; iteration k of every stage takes rows kB .. kB+B-1
    of it modulo N (Caffe's HDF5Data / Data layers over the once-shuffled split), each stage from batch 0."""
    n, batch = 20, 8
    _, targets, d = toy_data(5, n, 1)
    images = np.broadcast_to((np.arange(n, dtype=np.float32) / 64)[:, None, None, None], (n, 1, 20, 20)).copy()
    seen: list[list[int]] = []
    model = small_model(5)
    model.register_forward_pre_hook(
        lambda m, inp: seen.append(torch.round(inp[0][:, 0, 0, 0] * 64).long().tolist()) if m.training else None)
    sch = Schedule(TINY.stages, batch_size=batch)
    algorithm1(model, 5, (images, targets, d), toy_data(5, 8, 2), sch, fixed_in_stage2=["0", "1"], seed=5)
    # stage 1, stage 2, stage 3 and the control train the model (the heads train on fixed features)
    assert len(seen) == 4 * 6 and all(len(rows) == batch for rows in seen)
    stages = [sum(seen[6 * s:6 * s + 6], []) for s in range(4)]
    assert stages[1] == stages[0] and stages[2] == stages[0] and stages[3] == stages[0]
    rows = stages[0]  # 48 rows: 2.4 passes over the 20
    assert sorted(rows[:n]) == list(range(n))
    assert rows == [rows[i % n] for i in range(len(rows))]
    assert rows[:n] != list(range(n))  # a seeded order, not the rows as given


class AddsAfterTheShapeLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.shape_pred = nn.Linear(3, 10)

    def forward(self, x):
        return self.shape_pred(x.mean(dim=(1, 2, 3))[:, None].expand(-1, 3)) + 1.0


def test_bad_input_is_a_named_error():
    # One ModelError for a caffemodel that does not fit and a PyTorch model that cannot be trained as asked.
    assert ModelError is caffemodel.ModelError and issubclass(ShapeLayerError, ModelError)
    train, val = toy_data(5, 16, 1), toy_data(5, 8, 2)
    no_linear = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.ReLU())
    with pytest.raises(ShapeLayerError, match="nn.Linear"):
        algorithm1(no_linear, 5, train, val, TINY, fixed_in_stage2=["0"])
    with pytest.raises(LayoutMismatchError, match="layout 68"):
        algorithm1(small_model(5), 68, train, val, TINY, fixed_in_stage2=["0"])
    with pytest.raises(ModelError, match="'conv9'"):
        algorithm1(small_model(5), 5, train, val, TINY, fixed_in_stage2=["conv9"])
    with pytest.raises(ModelError, match="shape prediction layer"):
        algorithm1(small_model(5), 5, train, val, TINY, fixed_in_stage2=["8"])
    with pytest.raises(ShapeLayerError, match="not its layer"):
        algorithm1(AddsAfterTheShapeLayer(), 5, train, val, TINY, fixed_in_stage2=[])
    with pytest.raises(LayoutMismatchError, match="targets"):
        algorithm1(small_model(5), 5, (train[0], train[1][:, :8], train[2]), val, TINY, fixed_in_stage2=["0"])
    with pytest.raises(LayoutMismatchError):
        MultiCenterHeads(nn.Linear(8, 10), 68)
    with pytest.raises(ShapeLayerError):
        MultiCenterHeads(nn.Conv2d(8, 10, 1), 5)
    with pytest.raises(LayoutMismatchError, match="4 loss weights for 3 landmarks"):
        LandmarkLoss([1, 1, 1, 1])(t(PRED), t(TARGET), t(D))
    with pytest.raises(LayoutMismatchError):
        LandmarkLoss()(t(PRED), t(TARGET)[:, :4], t(D))


def test_audit_model_tool_end_to_end(tmp_path):
    """tools/audit_model.py on a small run: the report, AM's ONNX export and tools/predict.py reading its card."""
    run = new_run(tmp_path / "run", layout=5)
    proc = tool("tools/audit_model.py", "--run", run, "--model", "mobilenet_v2_0.5", "--threads", 1, "--quiet",
                timeout=300)
    out = run / "audit_model" / "mobilenet_v2_0.5"
    doc = json.loads((out / "report.json").read_text())
    for key in ("architecture", "engine", "device", "schedule", "seed", "paths", "numbers", "paired", "ordering",
                "caffe_net", "paper", "loss_weights", "stages", "time_per_iteration_s", "wall_time_s", "port",
                "inputs"):
        assert key in doc, key
    assert set(doc["numbers"]) == {"BM", "WM", "AM", "BM + equal budget"}
    assert {"WM vs BM", "AM vs WM", "WM vs BM + equal budget", "AM vs BM + equal budget"} <= set(doc["paired"])
    assert doc["device"] == "cpu" and doc["seed"] == 0 and doc["threads"] == 1
    assert doc["schedule"]["scale"] == 0.0002 and doc["schedule"]["stages"]["stage1"]["iterations"] == 36
    assert doc["schedule"]["stages"]["equal_budget"]["iterations"] == 36  # 12 + 12 + 12
    assert {k: v["value"] for k, v in doc["paper"]["figures"].items()} == {
        "dan.reported": 7.57, "dan.retrained": 7.97, "dan.weighting": 7.81}
    assert doc["am_vs_heads_max_abs_diff"] == 0.0
    assert doc["architecture"]["name"] == "mobilenet_v2_0.5" and "torchvision" in doc["architecture"]["source"]
    assert doc["caffe_net"]["available"] is False
    assert "BM + equal budget" in (out / "report.md").read_text() and "7.97" in (out / "report.md").read_text()
    assert "audit_model: wrote" in proc.stdout

    card = json.loads((out / "am.onnx.json").read_text())
    assert card["layout"] == "5" and card["architecture"]["family"] == "MobileNetV2"
    assert card["check"]["max_abs_diff"]["shape_pred"] <= card["check"]["allowed"]["shape_pred"]
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.random.default_rng(0).integers(0, 256, (90, 90)).astype(np.uint8))
    tool("tools/predict.py", face, "--box", 15, 15, 75, 75, "--model", out / "am.onnx", "--out", tmp_path / "pred")
    pred = json.loads((tmp_path / "pred" / "face.json").read_text())
    assert pred["layout"] == "5" and np.asarray(pred["points"]).shape == (5, 2)
    assert np.all(np.isfinite(pred["points"]))

    bad = tool("tools/audit_model.py", "--run", tmp_path / "nowhere", "--model", "mobilenet_v2_0.5", check=False)
    assert bad.returncode == 2 and "AuditModelError" in bad.stderr and "not a run folder" in bad.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.json").write_text(json.dumps({"layout": "5", "schedule_scale": 0.0002}))
    bad = tool("tools/audit_model.py", "--run", tmp_path / "empty", "--model", "mobilenet_v2_0.5", check=False)
    assert bad.returncode == 2 and "SplitError" in bad.stderr
    bad = tool("tools/audit_model.py", "--run", run, "--model", "resnet_9000", check=False)
    assert bad.returncode == 2 and "BackboneError" in bad.stderr and "mobilenet_v2" in bad.stderr
