"""The staged pipeline (Algorithm 1) in real Caffe on tiny schedules: weights of Eq. 5/9,
stages chained through their tools, assembly, interrupt-and-resume, bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import PY, ROOT, new_run, tool

from mcl.caffe import assemble, caffemodel, netgen, reweight
from mcl.method import loss_weights
from mcl.method.layouts import LAYOUTS, get_layout
from mcl.method.stages import ALPHA
from mcl.run.stage import StageError, StageSpec, run_stage

# ---- weights (pure) ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LAYOUTS, key=int))
def test_weights_satisfy_eq5_to_eq9(name):
    layout = get_layout(name)
    errors = np.random.default_rng(int(name)).uniform(0.01, 0.2, layout.n_points)
    u = loss_weights.eq5(errors)
    assert u.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(u / errors, (u / errors)[0])  # proportional to b_j
    per_cluster = loss_weights.eq9(errors, layout, ALPHA)
    assert list(per_cluster) == list(layout.cluster_names)
    for cname, members in layout.clusters:
        w = per_cluster[cname]
        in_p = np.zeros(layout.n_points, bool)
        in_p[list(members)] = True
        size_p, size_q = in_p.sum(), (~in_p).sum()
        u_p, u_q = w[in_p].sum() / size_p, w[~in_p].sum() / size_q  # group means
        assert size_p * u_p + size_q * u_q == pytest.approx(layout.n_points)  # Eq. 7
        assert u_p == pytest.approx(ALPHA * u_q)  # Eq. 6
        assert (u_p, u_q) == pytest.approx(loss_weights.eq8(layout.n_points, size_p, ALPHA))  # Eq. 8
        for mask in (in_p, ~in_p):  # Eq. 9: proportional to w_j inside each group
            np.testing.assert_allclose(w[mask] / errors[mask], (w[mask] / errors[mask])[0])


def test_eq5_refuses_bad_errors():
    with pytest.raises(loss_weights.WeightsError, match="finite"):
        loss_weights.eq5([0.1, np.nan, 0.2])


# ---- the chain of stages through the tools -------------------------------------------------

@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    layout = get_layout(5)
    run = new_run(tmp_path_factory.mktemp("chain"), layout)
    m, w = run / "models", run / "loss_weights"
    stage, weights = "tools/run_stage.py", "tools/compute_weights.py"
    tool(stage, "--run", run, "--stage", "stage1")
    tool(weights, "--run", run, "--model", m / "bm.caffemodel", "--eq", 5, "--out", w / "bm_eq5.json")
    tool(stage, "--run", run, "--stage", "stage2", "--init", m / "bm.caffemodel", "--loss-weights", w / "bm_eq5.json")
    tool(stage, "--run", run, "--stage", "stage3", "--init", m / "stage2.caffemodel",
         "--loss-weights", w / "bm_eq5.json")
    tool(weights, "--run", run, "--model", m / "wm.caffemodel", "--eq", 9, "--out", w / "wm_eq9.json")
    tool(stage, "--run", run, "--stage", "heads", "--init", m / "wm.caffemodel", "--loss-weights", w / "wm_eq9.json")
    out = tool("tools/assemble.py", "--run", run, "--heads", m / "heads.caffemodel")
    assert "self-check on" in out.stdout and "exact" in out.stdout
    return run, layout


def test_chain_writes_every_artifact_with_a_complete_manifest(chained):
    run, layout = chained
    artifacts = ["models/bm.caffemodel", "loss_weights/bm_eq5.json", "models/stage2.caffemodel", "models/wm.caffemodel",
                 "loss_weights/wm_eq9.json", "models/heads.caffemodel", "models/am.caffemodel"]
    doc = json.loads((run / "manifest.json").read_text())["artifacts"]
    for a in artifacts:
        assert (run / a).exists(), a
        e = doc[a]
        assert e["caffe_version"] == "1.0.0" and e["wall_time_s"] >= 0 and e["inputs"] and len(e["sha256"]) == 64
    for a in ("models/bm.caffemodel", "models/wm.caffemodel", "models/heads.caffemodel"):
        s = doc[a]["settings"]
        assert (s["schedule_scale"], s["seed"], s["layout"], s["batch_size"]) == (0.0002, 1, "5", 8)
    assert doc["models/bm.caffemodel"]["settings"]["base_lr"] == 0.02
    assert doc["models/wm.caffemodel"]["settings"]["base_lr"] == 0.001
    assert (run / "logs" / "stage1.log").read_text().count("Iteration") > 0  # Caffe's own log
    # The nets trained with the weights the tools computed: copies named after them, which the stages'
    # solvers train; the generated nets keep u_j = 1 (nets/ is make_nets' alone).
    u = json.loads((run / "loss_weights/bm_eq5.json").read_text())["weights"]
    net = netgen.parse_net((run / "stage_nets/stage3.bm_eq5_train.prototxt").read_text())
    np.testing.assert_array_equal(reweight.read_back(net, layout)[None], np.float32(u))
    solver = (run / "stage_nets/stage3.bm_eq5_solver.prototxt").read_text()
    assert 'train_net: "stage_nets/stage3.bm_eq5_train.prototxt"' in solver and 'snapshot_prefix: "snapshots/stage3"' in solver
    generated = netgen.parse_net((run / "nets/stage3_train.prototxt").read_text())
    np.testing.assert_array_equal(reweight.read_back(generated, layout)[None], np.ones(layout.n_points, np.float32))
    assert doc["models/wm.caffemodel"]["inputs"].get("stage_nets/stage3.bm_eq5_train.prototxt")


def test_am_is_the_splice_of_the_heads_and_costs_what_bm_costs(chained, caffe):
    run, layout = chained
    heads = caffemodel.blobs(caffemodel.load(run / "models/heads.caffemodel"))
    am = caffemodel.blobs(caffemodel.load(run / "models/am.caffemodel"))
    owner = layout.cluster_of()
    for j in range(layout.n_points):
        Wi, bi = heads[netgen.head_layer_name(layout.cluster_names[owner[j]])]
        np.testing.assert_array_equal(am["shape_pred"][0][2 * j:2 * j + 2], Wi[2 * j:2 * j + 2])
        np.testing.assert_array_equal(am["shape_pred"][1][2 * j:2 * j + 2], bi[2 * j:2 * j + 2])
    bm = caffe.Net(str(run / "nets/deploy.prototxt"), str(run / "models/bm.caffemodel"), caffe.TEST)
    amn = caffe.Net(str(run / "models/am_deploy.prototxt"), str(run / "models/am.caffemodel"), caffe.TEST)
    assert {k: [b.data.shape for b in v] for k, v in bm.params.items()} == \
           {k: [b.data.shape for b in v] for k, v in amn.params.items()}
    assert {k: v.data.shape for k, v in bm.blobs.items()} == {k: v.data.shape for k, v in amn.blobs.items()}
    # The shared layers are WM's: the head stage fixed them.
    wm = caffemodel.blobs(caffemodel.load(run / "models/wm.caffemodel"))
    for name in ("conv11", "conv43", "conv43_bn"):
        for a, b in zip(am[name], wm[name]):
            np.testing.assert_array_equal(a, b)


def test_assembly_refuses_a_tampered_self_check(chained, caffe):
    run, layout = chained
    heads_model = caffemodel.load(run / "models/heads.caffemodel")
    am = assemble.assemble({c: (heads_model, "heads") for c in layout.cluster_names}, layout)
    shape = caffemodel.layer(am, "shape_pred")
    W = caffemodel.blob_array(shape.blobs[0])
    W[0, 0] += 1e-3
    caffemodel.set_blob(shape.blobs[0], W)
    caffemodel.save(am, run / "tampered.caffemodel")
    from mcl.caffe.forward import load_net
    nets = {c: load_net(run / "nets/heads_deploy.prototxt", run / "models/heads.caffemodel") for c in layout.cluster_names[:1]}
    nets.update({c: nets[layout.cluster_names[0]] for c in layout.cluster_names})
    am_net = load_net(run / "models/am_deploy.prototxt", run / "tampered.caffemodel")
    with pytest.raises(caffemodel.ModelError, match="differs from its heads"):
        assemble.verify(nets, am_net, np.random.default_rng(0).uniform(-1, 1, (4, 1, 50, 50)).astype(np.float32), layout)


def test_separate_head_runs_assemble_like_the_joint_run(chained, tmp_path):
    run, layout = chained
    sep = tmp_path / "sep"
    shutil.copytree(run, sep)
    m, w = sep / "models", sep / "loss_weights"
    for p in (m / "heads.caffemodel", m / "am.caffemodel", m / "am_deploy.prototxt"):
        p.unlink()
    out = tool("tools/run_stage.py", "--run", sep, "--stage", "heads", "--separate", "--init", m / "wm.caffemodel",
               "--loss-weights", w / "wm_eq9.json")
    assert f"{layout.m} separate head runs" in out.stdout
    tool("tools/assemble.py", "--run", sep, "--heads", m / "heads_separate.json")
    joint = caffemodel.blobs(caffemodel.load(run / "models/am.caffemodel"))["shape_pred"]
    separate = caffemodel.blobs(caffemodel.load(m / "am.caffemodel"))["shape_pred"]
    for a, b in zip(joint, separate):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# ---- interruption ---------------------------------------------------------------------------

# Per engine: what the stage killed after iteration 20 fails with, and the iteration it resumes
# from. The torch run's newest snapshot (18) is also cut short, as if killed while writing it.
KILLED = {"caffe": ("Caffe failed", None, 18), "torch": ("torch engine failed", "stage1_iter_18.caffemodel", 15)}


@pytest.mark.parametrize("source", ["hdf5", "lmdb"])
@pytest.mark.parametrize("engine", ["caffe", "torch"])
def test_killed_stage_resumes_to_the_same_weights(tmp_path, monkeypatch, engine, source):
    """Stage 1 (36 iterations, a snapshot every 3) killed, then resumed: the bits of the
    uninterrupted run, in either engine, with the same progress events."""
    fails, cut, resumes_from = KILLED[engine]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    a = new_run(tmp_path / "a", source=source, n_train=60)  # 60 faces, batch 8: batches wrap mid-batch
    b = tmp_path / "b"
    shutil.copytree(a, b)
    whole = run_stage(StageSpec(a, "stage1", None, a / "models/bm.caffemodel", engine=engine), progress=False)
    spec = StageSpec(b, "stage1", None, b / "models/bm.caffemodel", engine=engine)
    with pytest.raises(StageError, match=fails):
        run_stage(spec, progress=False, stop_after=20)  # dies after iteration 20, last snapshot at 18
    assert not spec.out.exists()  # nothing under the final name
    if cut is not None:
        (b / "snapshots" / cut).write_bytes(b"cut short")
    resumed = run_stage(spec, progress=False)
    assert resumed["resumed_from"] == resumes_from
    ma, mb = (caffemodel.blobs(caffemodel.load(p)) for p in (a / "models/bm.caffemodel", spec.out))
    assert ma.keys() == mb.keys()
    for name in ma:
        for x, y in zip(ma[name], mb[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)
    # The progress events are the Caffe worker's in both engines; the torch engine's log reads like Caffe's.
    assert set(whole["last"]) == {"event", "iter", "max_iter", "loss", "lr", "elapsed", "start"}
    assert (whole["last"]["iter"], whole["last"]["max_iter"], resumed["last"]["start"]) == (36, 36, resumes_from)
    assert whole["last"]["loss"] == resumed["last"]["loss"]
    if engine == "torch":
        log = (a / "logs" / "stage1.log").read_text()
        assert "Iteration 35, loss = " in log and "Snapshotting solver state" in log


def test_ctrl_c_snapshots_and_resumes(tmp_path):
    import signal
    import time
    layout = get_layout(5)
    run = new_run(tmp_path / "r", layout, scale=0.001)  # 180 iterations: long enough to interrupt
    # As from a terminal: SIGINT at its default in the tool even where this suite runs in the background
    # (an asynchronous command of a non-interactive shell starts with SIGINT ignored, and so its children).
    proc = subprocess.Popen([PY, str(ROOT / "tools/run_stage.py"), "--run", str(run), "--stage", "stage1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # the first snapshot ends the wait; a loaded machine may take minutes to it
    while not list((run / "snapshots").glob("stage1_iter_*.solverstate")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (2, 130), (out, err)
    assert "interrupted" in err and not (run / "models/bm.caffemodel").exists()
    out = tool("tools/run_stage.py", "--run", run, "--stage", "stage1", "--out", run / "models/bm.caffemodel")
    assert "resuming from iteration" in out.stdout and (run / "models/bm.caffemodel").exists()


# ---- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs_are_named(chained, tmp_path):
    run, layout = chained
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage2", "--init", tmp_path / "nope.caffemodel",
             "--out", tmp_path / "x.caffemodel", check=False)
    assert r.returncode == 2 and "nope.caffemodel" in r.stderr and "missing" in r.stderr
    other = tmp_path / "w68.json"
    other.write_text(json.dumps(loss_weights.document(get_layout(68), "eq5", weights=[1.0] * 68)))
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage2", "--init", run / "models/bm.caffemodel",
             "--loss-weights", other, "--out", tmp_path / "x.caffemodel", check=False)
    assert r.returncode == 2 and "layout 68" in r.stderr and "layout 5" in r.stderr
    assert not (tmp_path / "x.caffemodel").exists()
    # A caffemodel of another layout (68-point BM) does not fit this run's 5-point deploy net.
    big = new_run(tmp_path / "big", get_layout(68), scale=0.00001, batch=2)
    run_stage(StageSpec(big, "stage1", None, big / "models/bm.caffemodel"), progress=False)
    r = tool("tools/compute_weights.py", "--run", run, "--model", big / "models/bm.caffemodel", "--eq", 5,
             "--out", tmp_path / "w.json", check=False)
    assert r.returncode == 2 and "bm.caffemodel" in r.stderr and "does not fit" in r.stderr
    assert not (tmp_path / "w.json").exists()
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage2", "--init", big / "models/bm.caffemodel",
             "--out", tmp_path / "x.caffemodel", check=False)
    assert r.returncode == 2 and "bm.caffemodel" in r.stderr and "does not fit" in r.stderr
    empty = tmp_path / "empty"
    shutil.copytree(run, empty, ignore=shutil.ignore_patterns("snapshots"))
    (empty / "data/val.txt").write_text("")
    r = tool("tools/compute_weights.py", "--run", empty, "--model", run / "models/bm.caffemodel", "--eq", 5,
             "--out", tmp_path / "w.json", check=False)
    assert r.returncode == 2 and "val.txt" in r.stderr and "empty" in r.stderr


# ---- the optional warm-up (METHOD §5.5 [interp]) --------------------------------------------

def test_step1_resumes_from_the_warmup_solverstate(tmp_path):
    """WARMUP=on: the warm-up trains at lr 0.002 (fixed) and step 1 continues from its last
    solverstate, i.e. from its iteration, weights and momentum, as if resumed after a kill."""
    from mcl.caffe.proto import caffe_pb2
    layout = get_layout(5)
    run = new_run(tmp_path / "run", layout, scale=0.001)  # warm-up 9 iterations, step 1 180
    warm = tool("tools/run_stage.py", "--run", run, "--stage", "warmup")
    assert "warmup.caffemodel" in warm.stdout
    state = run / "snapshots" / "warmup_iter_9.solverstate"
    assert state.exists() and (run / "snapshots" / "warmup_iter_9.caffemodel").exists()
    log = (run / "logs" / "warmup.log").read_text()
    assert "lr = 0.002" in log and "lr = 0.02" not in log
    ss = caffe_pb2.SolverState()
    ss.ParseFromString(state.read_bytes())
    assert ss.iter == 9 and len(ss.history) > 0
    out = tool("tools/run_stage.py", "--run", run, "--stage", "stage1", "--warmup").stdout
    assert "from the warm-up's solverstate at iteration 9" in out and "resuming from iteration 9" in out
    entry = json.loads((run / "manifest.json").read_text())["artifacts"]["models/bm.raw.caffemodel"]
    assert entry["warmup"] == "snapshots/warmup_iter_9.solverstate" and entry["resumed_from_iter"] == 9
    stage1_log = (run / "logs" / "stage1.log").read_text()
    assert "Iteration 10" in stage1_log and "Iteration 0," not in stage1_log  # it did not start over
    # A stage that is not step 1 refuses the warm-up.
    bad = tool("tools/run_stage.py", "--run", run, "--stage", "stage3", "--init", run / "models" / "bm.caffemodel",
               "--warmup", check=False)
    assert bad.returncode == 2 and "only step 1" in bad.stderr


# ---- the stage table's rows as tools/run_stage.py's defaults (tests/test_stage_table.py) ----

def test_a_stage_without_init_starts_from_the_tables_model_and_says_when_it_is_missing(tmp_path):
    """stage2 without --init starts from BM (not from the fillers); where BM is not there, a named error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = tool("tools/run_stage.py", "--run", empty, "--stage", "stage2", check=False)
    assert r.returncode == 2 and "models/bm.caffemodel" in r.stderr and "stage table" in r.stderr, r.stderr
    assert not (empty / "models").exists()


def test_an_override_is_said_and_recorded(chained, tmp_path):
    run, _ = chained
    out = tmp_path / "x.caffemodel"
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage3", "--init", run / "models/bm.caffemodel",
             "--loss-weights", "uniform", "--out", out)
    assert "--init models/bm.caffemodel overrides the stage table's models/stage2.caffemodel" in r.stderr
    assert "--loss-weights u_j = 1 overrides the stage table's loss_weights/bm_eq5.json" in r.stderr
    entry = json.loads((run / "manifest.json").read_text())["artifacts"][str(out)]
    assert entry["table_overrides"]["init"] == {"table": "models/stage2.caffemodel", "given": "models/bm.caffemodel"}
    assert entry["table_overrides"]["loss_weights"]["given"] == "u_j = 1"
    assert entry["table_overrides"]["out"]["table"] == "models/wm.caffemodel"
