"""Proofs in real Caffe that the generated nets and solvers compute what the paper says
(METHOD §2-5): they load and time, Eq. 4 equals NumPy, freezing holds, parameter counts,
solver settings, joint heads = separate heads, loss-weight rewriting."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from conftest import ROOT, run_caffe, synthetic_batch, write_hdf5, write_lmdb

from mcl.caffe import caffemodel, netgen, reweight
from mcl.caffe.proto import caffe_pb2
from mcl.caffe.runfiles import (net_files, reference_files, run_files, run_layout, run_settings, stage_file_paths,
                                stage_files)
from mcl.method import loss_weights
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import ALL_CONVS, FIRST_SIX, STAGES

LAYOUT_NAMES = sorted(LAYOUTS, key=int)


def write_net(path, net):
    path.write_text(netgen.to_text(net))
    return str(path)


def make_run(tmp_path, layout, n_samples=16, seed=0):
    images, points, iod = synthetic_batch(n_samples, layout.n_points, seed)
    write_hdf5(tmp_path, "train", images, points, iod)
    write_lmdb(tmp_path, "train", images, points, iod)
    return images, points, iod


def test_reference_files_regenerate_byte_for_byte():
    for name in LAYOUT_NAMES:
        for rel, text in reference_files(get_layout(name)).items():
            path = ROOT / rel
            assert path.exists(), f"{rel} is not committed: run `make nets`"
            assert path.read_text() == text, f"{rel} differs from the generator: run `make nets`"


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_every_net_loads(tmp_path, monkeypatch, caffe, name):
    layout = get_layout(name)
    make_run(tmp_path, layout)
    monkeypatch.chdir(tmp_path)
    for source in ("hdf5", "lmdb"):
        for net_name, proto in net_files(layout, source, batch_size=4).items():
            if net_name.endswith("deploy"):
                continue
            net = caffe.Net(write_net(tmp_path / f"{net_name}.prototxt", proto), caffe.TRAIN)
            outputs = [b for b in net.outputs]
            heads = layout.m if net_name == "heads_train" else 1
            assert len(outputs) == heads * layout.n_points, (net_name, outputs)
            assert net.blobs["landmarks"].data.shape == (4, 2 * layout.n_points)
            assert net.blobs["inv_iod"].data.shape == (4,)
    for net_name in ("deploy", "pre_bm_deploy", "heads_deploy"):
        net = caffe.Net(write_net(tmp_path / f"{net_name}.prototxt", net_files(layout)[net_name]), caffe.TEST)
        out = net.forward(data=np.zeros((1, 1, 50, 50), np.float32))
        assert all(v.shape == (1, 2 * layout.n_points) for v in out.values())
        assert len(out) == (layout.m if net_name == "heads_deploy" else 1)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_caffe_time_runs_on_every_deploy_net(name, caffe_tool):
    for net_name in ("deploy", "pre_bm_deploy", "heads_deploy"):
        path = ROOT / "prototxt" / name / f"{net_name}.prototxt"
        log = run_caffe(caffe_tool, "time", f"--model={path}", "--iterations=1")
        assert "Average Forward pass" in log, log[-1000:]


def test_feature_map_sizes_follow_ceil_pooling(caffe, tmp_path):
    net = caffe.Net(write_net(tmp_path / "d.prototxt", netgen.deploy_net(get_layout(68))), caffe.TEST)
    assert [net.blobs[p].data.shape[-1] for p in ("pool1", "pool2", "pool3")] == [25, 13, 7]
    assert net.blobs["conv43"].data.shape == (1, 1024, 7, 7) and net.blobs["pool4"].data.shape[:2] == (1, 1024)
    pre = caffe.Net(write_net(tmp_path / "p.prototxt", netgen.deploy_net(get_layout(68), "pre_bm")), caffe.TEST)
    assert pre.blobs["pool4"].data.shape == (1, 128, 4, 4)


def eq4_numpy(pred, gt, inv_iod, u):
    """Eq. 4 averaged over the batch, written directly from the paper."""
    n = len(u)
    p = pred.reshape(len(pred), n, 2) * inv_iod[:, None, None]
    g = gt.reshape(len(gt), n, 2) * inv_iod[:, None, None]
    per_face = (np.asarray(u)[None] * ((p - g) ** 2).sum(-1)).sum(-1) / 2.0
    return per_face.mean()


@pytest.mark.parametrize("source", ["hdf5", "lmdb"])
def test_eq4_loss_equals_numpy(tmp_path, monkeypatch, caffe, source):
    layout = get_layout(29)
    make_run(tmp_path, layout, n_samples=8, seed=5)
    monkeypatch.chdir(tmp_path)
    u = np.random.default_rng(11).uniform(0.2, 3.0, layout.n_points)
    net = caffe.Net(write_net(tmp_path / "n.prototxt",
                              netgen.train_net(layout, STAGES["stage2"], netgen.DataSpec(source, batch_size=8), u)),
                    caffe.TRAIN)
    total = net._forward(0, len(net.layers) - 1)  # Caffe's weighted loss of the forward pass
    expected = eq4_numpy(net.blobs["shape_pred"].data, net.blobs["landmarks"].data,
                         net.blobs["inv_iod"].data, u.astype(np.float32))
    assert expected > 0
    assert abs(total - expected) / expected < 1e-5, (total, expected)


# ---- stage freezing, on a briefly trained BM ---------------------------------------------

@pytest.fixture(scope="module")
def bm_run(tmp_path_factory, caffe):
    """Layout 5 data and a BM trained for a few iterations (its BatchNorm holds statistics)."""
    run = tmp_path_factory.mktemp("bm")
    layout = get_layout(5)
    make_run(run, layout, n_samples=32, seed=1)
    import os
    cwd = os.getcwd()
    os.chdir(run)
    try:
        solver = solver_for(caffe, run, layout, "stage1", netgen.train_net(
            layout, STAGES["stage1"], netgen.DataSpec(batch_size=8)))
        solver.step(5)
        solver.net.save(str(run / "bm.caffemodel"))
    finally:
        os.chdir(cwd)
    return run, layout


def solver_for(caffe, run, layout, stage_name, net_proto, seed=0, tag=None):
    from mcl.caffe import solvers
    tag = tag or stage_name
    write_net(run / f"{tag}.prototxt", net_proto)
    s = solvers.solver(STAGES[stage_name], f"{tag}.prototxt", f"snap_{tag}", scale=0.001, seed=seed)
    (run / f"{tag}_solver.prototxt").write_text(netgen.to_text(s))
    return caffe.SGDSolver(str(run / f"{tag}_solver.prototxt"))


def params_of(net):
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def frozen_layers_of(frozen_convs):
    return {x for c in frozen_convs for x in (c, f"{c}_bn", f"{c}_bn_scale")}


@pytest.mark.parametrize("stage_name,frozen_bn", [("stage1", "global"), ("stage2", "global"), ("stage3", "global"),
                                                   ("heads", "global"), ("stage2", "batch"), ("heads", "batch")])
def test_frozen_layers_stay_bit_identical(bm_run, monkeypatch, caffe, stage_name, frozen_bn):
    """Fixed convs and Scales never move; a fixed BatchNorm's statistics stay under
    `global` and move under `batch` (METHOD §5.3's two readings)."""
    run, layout = bm_run
    monkeypatch.chdir(run)
    stage = STAGES[stage_name]
    data = netgen.DataSpec(batch_size=8)
    if stage_name == "heads":
        proto = netgen.heads_net(layout, stage, data=data, frozen_bn=frozen_bn)
        init = caffemodel.init_heads(caffemodel.load(run / "bm.caffemodel"), layout.cluster_names)
        caffemodel.save(init, run / "heads_init.caffemodel")
        weights = run / "heads_init.caffemodel"
    else:
        proto, weights = netgen.train_net(layout, stage, data, frozen_bn=frozen_bn), run / "bm.caffemodel"
    solver = solver_for(caffe, run, layout, stage_name, proto, tag=f"{stage_name}_{frozen_bn}")
    solver.net.copy_from(str(weights))
    before = params_of(solver.net)
    solver.step(3)
    after = params_of(solver.net)
    frozen = frozen_layers_of(stage.frozen)
    assert frozen == frozen_layers_of({"stage2": FIRST_SIX, "heads": ALL_CONVS}.get(stage_name, ()))
    changed = {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}
    for name in before:
        if name in frozen and name.endswith("_bn") and frozen_bn == "batch":
            assert name in changed, f"{stage_name}: fixed BatchNorm {name} kept its statistics under 'batch'"
        elif name in frozen:
            assert name not in changed, f"{stage_name}: fixed layer {name} changed"
        elif not name.endswith("_bn"):
            assert name in changed, f"{stage_name}: trainable layer {name} did not change"
    if stage_name == "heads":
        heads = {netgen.head_layer_name(c) for c in layout.cluster_names}
        bns = {f"{c}_bn" for c in ALL_CONVS} if frozen_bn == "batch" else set()
        assert changed == heads | bns


def test_batchnorm_blobs_are_never_updated_by_the_solver(bm_run, monkeypatch, caffe):
    """A trainable layer's BatchNorm blobs after one solver step equal those after one
    plain forward pass: the moving averages change, the solver adds nothing."""
    run, layout = bm_run
    monkeypatch.chdir(run)
    proto = netgen.train_net(layout, STAGES["stage1"], netgen.DataSpec(batch_size=8))
    solver = solver_for(caffe, run, layout, "stage1", proto, tag="bn_check")
    solver.net.copy_from(str(run / "bm.caffemodel"))
    plain = caffe.Net(str(run / "bn_check.prototxt"), str(run / "bm.caffemodel"), caffe.TRAIN)
    solver.step(1)
    plain.forward()
    for c in ALL_CONVS:
        for a, b in zip(solver.net.params[f"{c}_bn"], plain.params[f"{c}_bn"]):
            np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(solver.net.params["conv11"][0].data, plain.params["conv11"][0].data)


# ---- parameter counts, solvers ---------------------------------------------------------

def count(net, layers):
    return sum(b.data.size for name in layers for b in net.params[name])


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_parameter_counts_match_section_2(tmp_path, caffe, name):
    layout = get_layout(name)
    D = layout.feature_dim
    bm = caffe.Net(write_net(tmp_path / "bm.prototxt", netgen.deploy_net(layout)), caffe.TEST)
    # BatchNorm's third blob is Caffe's scalar moving-average factor, not a feature parameter.
    bn_stats = sum(b.data.size for b in bm.params["conv43_bn"][:2])
    assert count(bm, ["conv43"]) + bn_stats + count(bm, ["conv43_bn_scale"]) == (3 * 3 * 128 + 1) * D + 2 * D + 2 * D
    pre = caffe.Net(write_net(tmp_path / "pre.prototxt", netgen.deploy_net(layout, "pre_bm")), caffe.TEST)
    assert count(pre, ["fc5"]) == (4 * 4 * 128 + 1) * D
    assert count(bm, ["shape_pred"]) == count(pre, ["fc6"]) == (D + 1) * 2 * layout.n_points


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_solvers_carry_the_papers_hyperparameters(scale):
    from google.protobuf import text_format

    from mcl.caffe.proto import caffe_pb2
    layout = get_layout(68)
    files = run_files(layout, scale=scale, seed=42)
    # equal_budget: the audit's control, BM continued at the fine-tuning rate for stages 2, 3 and heads
    expected_lr = {"stage1": 0.02, "pre_bm": 0.02, "stage2": 0.001, "stage3": 0.001, "heads": 0.001,
                   "equal_budget": 0.001}
    solvers = [p for p in files if p.startswith("solvers/")]
    assert len(solvers) == 7 + layout.m
    # the optional warm-up (METHOD §5.5 [interp]): a tenth of step 1's rate, fixed, for 5% of its iterations
    warm = text_format.Parse(files["solvers/warmup_solver.prototxt"], caffe_pb2.SolverParameter())
    assert (warm.base_lr, warm.lr_policy, warm.max_iter) == (pytest.approx(0.002), "fixed", round(9000 * scale))
    assert warm.snapshot == warm.max_iter  # step 1 resumes from its last solverstate
    for path in solvers:
        base = path.split("/")[1][: -len("_solver.prototxt")]
        if base == "warmup":
            continue
        s = text_format.Parse(files[path], caffe_pb2.SolverParameter())
        key = "heads" if base.startswith("head") else base
        assert s.base_lr == pytest.approx(expected_lr[key])
        want = 3 * round(60000 * scale) if key == "equal_budget" else \
            round({"stage1": 180000, "pre_bm": 180000}.get(key, 60000) * scale)
        assert s.max_iter == want
        assert (s.lr_policy, s.gamma, s.stepsize) == ("step", pytest.approx(0.3), round(30000 * scale))
        assert (s.momentum, s.weight_decay) == (pytest.approx(0.9), pytest.approx(0.0005))
        assert s.solver_mode == caffe_pb2.SolverParameter.CPU and s.random_seed == 42
        assert s.type == "SGD" and f"scale {scale:g}" in files[path].splitlines()[0]
        net = netgen.parse_net(files[s.train_net])
        assert net.layer[0].hdf5_data_param.batch_size == 64


def test_committed_solvers_are_scale_one():
    from google.protobuf import text_format

    from mcl.caffe.proto import caffe_pb2
    s = text_format.Parse((ROOT / "solvers/68/stage1_solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    assert (s.base_lr, s.max_iter, s.stepsize) == (pytest.approx(0.02), 180000, 30000)


# ---- joint multi-center training equals separate runs --------------------------------------

@pytest.mark.parametrize("frozen_bn", ["global", "batch"])
def test_joint_heads_equal_separate_head_runs(bm_run, monkeypatch, caffe, frozen_bn):
    """Under both readings of a fixed BatchNorm: the trunk's weights are fixed and every
    run reads the same batches, so its statistics (moving or not) agree too."""
    run, layout = bm_run
    monkeypatch.chdir(run)
    init = caffemodel.init_heads(caffemodel.load(run / "bm.caffemodel"), layout.cluster_names)
    caffemodel.save(init, run / "joint_init.caffemodel")
    data = netgen.DataSpec(batch_size=8)
    rng = np.random.default_rng(2)
    weights = {c: rng.uniform(0.1, 3, layout.n_points) for c in layout.cluster_names}
    joint = solver_for(caffe, run, layout, "heads", netgen.heads_net(layout, STAGES["heads"], data=data, weights=weights,
                                                                     frozen_bn=frozen_bn), seed=9, tag="joint")
    joint.net.copy_from(str(run / "joint_init.caffemodel"))
    joint.step(6)
    for c in layout.cluster_names:
        single = solver_for(caffe, run, layout, "heads",
                            netgen.heads_net(layout, STAGES["heads"], [c], data=data, weights=weights,
                                             frozen_bn=frozen_bn), seed=9, tag=f"single_{c}")
        single.net.copy_from(str(run / "joint_init.caffemodel"))
        start = single.net.params[netgen.head_layer_name(c)][0].data.copy()
        single.step(6)
        name = netgen.head_layer_name(c)
        assert not np.array_equal(start, single.net.params[name][0].data)
        for a, b in zip(joint.net.params[name], single.net.params[name]):
            np.testing.assert_allclose(a.data, b.data, atol=1e-5, rtol=0)
        for conv in ALL_CONVS:  # the trunk's statistics: the same in every run
            for a, b in zip(joint.net.params[f"{conv}_bn"], single.net.params[f"{conv}_bn"]):
                np.testing.assert_array_equal(a.data, b.data)


# ---- loss-weight rewriting -------------------------------------------------------------

def test_rewriting_weights_round_trips_exactly(tmp_path):
    layout = get_layout(68)
    rng = np.random.default_rng(4)
    u = rng.uniform(0.1, 4, layout.n_points)
    doc = loss_weights.document(layout, "eq5", weights=u)
    net, changes = reweight.rewrite(netgen.train_net(layout, STAGES["stage2"]), doc)
    assert len(changes) == layout.n_points and all(ch.old == 1.0 for ch in changes)
    back = reweight.read_back(netgen.parse_net(netgen.to_text(net)), layout)
    np.testing.assert_array_equal(back[None], u.astype(np.float32))
    per_cluster = loss_weights.eq9(rng.uniform(0.5, 2, layout.n_points), layout)
    doc9 = loss_weights.document(layout, "eq9", clusters=per_cluster)
    heads, _ = reweight.rewrite(netgen.heads_net(layout, STAGES["heads"]), doc9)
    back = reweight.read_back(netgen.parse_net(netgen.to_text(heads)), layout)
    for c in layout.cluster_names:
        np.testing.assert_array_equal(back[c], per_cluster[c].astype(np.float32))


def test_mismatched_weights_are_refused():
    five, sixty_eight = get_layout(5), get_layout(68)
    net = netgen.train_net(sixty_eight, STAGES["stage2"])
    with pytest.raises(loss_weights.WeightsError, match=r"layout 5 \(5 landmarks\), but net mcl_68_stage2_hdf5 predicts 68"):
        reweight.rewrite(net, loss_weights.document(five, "eq5", weights=[1] * 5))
    net.name = "renamed"  # the net's name is a label only: its shape layer tells its landmarks
    with pytest.raises(loss_weights.WeightsError, match="but net renamed predicts 68 landmarks"):
        reweight.rewrite(net, loss_weights.document(five, "eq5", weights=[1] * 5))
    bad = {"layout": "68", "n_points": 68, "weights": [1.0] * 67}
    with pytest.raises(loss_weights.WeightsError, match="67 values, layout 68 has 68 landmarks"):
        reweight.rewrite(net, bad)
    single = loss_weights.document(sixty_eight, "eq5", weights=[1] * 68)
    with pytest.raises(loss_weights.WeightsError, match="head for cluster 'left_eye'"):
        reweight.rewrite(netgen.heads_net(sixty_eight, STAGES["heads"]), single)


def test_set_loss_weights_tool(tmp_path):
    layout = get_layout(5)
    net_path = tmp_path / "stage2_train.prototxt"
    net_path.write_text((ROOT / "prototxt/5/stage2_train.prototxt").read_text())
    (tmp_path / "w.json").write_text(__import__("json").dumps(loss_weights.document(layout, "eq5", weights=[0.5, 1.5, 1, 1, 1])))
    tool = [sys.executable, str(ROOT / "tools/set_loss_weights.py")]
    ok = subprocess.run(tool + [str(net_path), str(tmp_path / "w.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "loss_01" in ok.stdout and "0.5000" in ok.stdout and "rewrote 5 loss weights" in ok.stdout
    assert net_path.read_text().startswith("# MCL-Caffe net: layout 5")
    back = reweight.read_back(netgen.parse_net(net_path.read_text()), layout)[None]
    np.testing.assert_array_equal(back, np.float32([0.5, 1.5, 1, 1, 1]))
    (tmp_path / "bad.json").write_text('{"layout": "68", "n_points": 68, "weights": []}')
    bad = subprocess.run(tool + [str(net_path), str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad.json" in bad.stderr and "0 values" in bad.stderr


def test_stages_write_their_loss_weights_into_copies_and_leave_the_generated_nets_as_they_are(tmp_path):
    layout = get_layout(5)
    for rel, text in run_files(layout, 0.001, 3).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    generated = {p: p.read_text() for p in tmp_path.rglob("*.prototxt")}
    w = tmp_path / "loss_weights" / "bm_eq5.json"
    w.parent.mkdir()
    w.write_text(json.dumps(loss_weights.document(layout, "eq5", weights=[0.5, 1.5, 1, 1, 1])))
    # A stage of the table at u_j = 1 trains the generated files themselves.
    assert stage_files(tmp_path, "stage1") == (tmp_path / "nets/stage1_train.prototxt",
                                               tmp_path / "solvers/stage1_solver.prototxt", [])
    net, solver, changes = stage_files(tmp_path, "stage3", weights=w)
    assert net == tmp_path / "stage_nets/stage3.bm_eq5_train.prototxt" and len(changes) == 5
    assert (net, solver) == stage_file_paths(tmp_path, "stage3", weights=w)
    np.testing.assert_array_equal(reweight.read_back(netgen.parse_net(net.read_text()), layout)[None],
                                  np.float32([0.5, 1.5, 1, 1, 1]))
    sp = text_format.Parse(solver.read_text(), caffe_pb2.SolverParameter())
    assert (sp.train_net, sp.snapshot_prefix) == ("stage_nets/stage3.bm_eq5_train.prototxt", "snapshots/stage3")
    assert sp.base_lr == pytest.approx(0.001) and solver.read_text().startswith("# MCL-Caffe solver")
    # A named row trains a copy of its stage's files with its own snapshots; a head of its own files' copy.
    net, solver, _ = stage_files(tmp_path, "stage2", "wsam_stage2")
    assert net.read_text() == (tmp_path / "nets/stage2_train.prototxt").read_text()
    assert text_format.Parse(solver.read_text(), caffe_pb2.SolverParameter()).snapshot_prefix == "snapshots/wsam_stage2"
    c = layout.cluster_names[0]
    eq9 = tmp_path / "loss_weights" / "wm_eq9.json"
    eq9.write_text(json.dumps(loss_weights.document(layout, "eq9", clusters=loss_weights.eq9(np.full(5, .1), layout))))
    net, _, changes = stage_files(tmp_path, "heads", f"head_{c}", eq9)
    assert net.name == f"head_{c}.wm_eq9_train.prototxt" and len(changes) == layout.n_points
    # Written once: a second call leaves the copy untouched, and nets/ and solvers/ are as generated.
    before = net.stat().st_mtime_ns
    assert stage_files(tmp_path, "heads", f"head_{c}", eq9)[0].stat().st_mtime_ns == before
    assert {p: p.read_text() for p in generated} == generated
    with pytest.raises(reweight.WeightsError, match="bm_eq5.json"):
        stage_files(tmp_path, "heads", weights=w)  # Eq. 5's single vector for a net of heads


def test_a_runs_layout_is_its_run_json_and_a_nets_shape_layer_tells_its_landmarks(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"run\.json: missing: .*tools/make_nets\.py --run"):
        run_layout(run)
    run.mkdir()
    (run / "run.json").write_text(json.dumps(run_settings(get_layout(29))))
    assert run_layout(run) is get_layout(29)
    (run / "run.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(ValueError, match=r"run\.json: records no layout"):
        run_layout(run)
    for name in LAYOUT_NAMES:
        layout = get_layout(name)
        for net in net_files(layout).values():
            assert netgen.shape_points(net) == layout.n_points, net.name
    with pytest.raises(ValueError, match="no shape prediction layer"):
        netgen.shape_points(netgen.parse_net('name: "x" layer { name: "fc" type: "InnerProduct" }'))
