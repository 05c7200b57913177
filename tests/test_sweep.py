"""The audit across seeds (`make sweep`, docs/CLUSTER.md): its statistics against values computed
by hand, and the sweep run locally and through a real one-node Slurm cluster (tests/slurm_cluster.py):
the same bits either way, a job cancelled by Slurm resumed to the same bits, an interrupted make
leaving no job in the queue.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MAKE_TINY, ROOT, tool
from slurm_cluster import Cluster

from mcl.evaluation import sweep

# ---- the statistics, on a small fixed table ----------------------------------------------------


def _result(mean_error: float, left_eye: float = 0.05) -> dict:
    return {"inter_ocular": {"mean_error": mean_error, "failure_rate": {"0.10": 0.0}, "auc": {"0.10": 0.5},
                             "per_cluster": {"left_eye": left_eye, "mouth": 0.05}}}


def _write_audit(folder: Path, seed: int, bm: float, wm: float, am: float, eb: float | None = None) -> Path:
    doc = {"settings": {"run": str(folder), "seed": seed, "dataset": "synth", "layout": "68", "schedule": "demo",
                        "schedule_scale": 0.01, "engine": "torch", "device": "cpu", "batch_size": 64},
           "models": {"BM": _result(bm), "WM": _result(wm), "AM": _result(am)}, "ablations": {}}
    if eb is not None:
        doc["ablations"]["equal_budget"] = {"numbers": {"BM": _result(bm), "BM + equal budget": _result(eb),
                                                        "WM": _result(wm), "AM": _result(am)}}
    (folder / "audit").mkdir(parents=True)
    (folder / "audit" / "audit.json").write_text(json.dumps(doc))
    return folder


# Mean errors of three seeds, and the figures below worked out by hand (t(0.975, 2) = 4.302653):
#   BM 0.10 0.12 0.11: mean 0.11, sd 0.01, half-width 4.302653 * 0.01 / sqrt(3) = 0.0248414
#   WM - BM: -0.010 -0.010 -0.005: mean -0.0083333, sd 0.0028868, half-width 0.0071711: [-0.0155044, -0.0011622]
#   AM - WM: -0.005 -0.010 -0.005: mean -0.0066667, same sd: [-0.0138378, +0.0005044], which holds zero
TABLE = {0: (0.10, 0.090, 0.085, 0.095), 1: (0.12, 0.110, 0.100, 0.118), 2: (0.11, 0.105, 0.100, 0.109)}


@pytest.fixture
def table(tmp_path):
    return [_write_audit(tmp_path / f"synth-68-s{s}", s, *v) for s, v in TABLE.items()]


def test_model_statistics_equal_hand_computed_values(table):
    doc = sweep.gather(table)
    bm = doc["models"]["BM"]["mean_error"]
    assert bm["mean"] == pytest.approx(0.11, abs=1e-12)
    assert bm["sd"] == pytest.approx(0.01, abs=1e-9)
    assert bm["ci95"] == pytest.approx([0.0851586, 0.1348414], abs=1e-7)
    assert bm["per_seed"] == {"0": 0.10, "1": 0.12, "2": 0.11}
    assert doc["seeds"] == [0, 1, 2]
    assert set(doc) >= {"settings", "seeds", "models", "claims"}
    assert doc["settings"]["engine"] == "torch" and doc["settings"]["schedule"] == "demo"


def test_claims_verdicts_follow_the_interval(table):
    claims = sweep.gather(table)["claims"]
    wm = claims["wm_vs_bm"]
    assert wm["per_seed"] == pytest.approx({"0": -0.010, "1": -0.010, "2": -0.005}, abs=1e-12)
    assert wm["mean"] == pytest.approx(-0.0083333, abs=1e-7)
    assert wm["ci95"] == pytest.approx([-0.0155044, -0.0011622], abs=1e-7)
    assert wm["verdict"] == "holds beyond seed noise" and wm["seeds_agreeing"] == 3
    am = claims["am_vs_wm"]
    assert am["ci95"] == pytest.approx([-0.0138378, 0.0005044], abs=1e-7)
    assert am["verdict"] == "not beyond seed noise" and am["seeds_agreeing"] == 3
    assert am["sign_test_p"] == pytest.approx(0.25)  # 3 of 3 below zero: 2 * 0.5 ** 3
    # AM against the control: 0.085 - 0.095, 0.100 - 0.118, 0.100 - 0.109
    eb = claims["am_vs_equal_budget"]
    assert eb["per_seed"] == pytest.approx({"0": -0.010, "1": -0.018, "2": -0.009}, abs=1e-12)


def test_a_diverged_seed_is_named_and_left_out(table, tmp_path):
    bad = _write_audit(tmp_path / "synth-68-s3", 3, 0.11, math.nan, 0.10, 0.10)
    doc = sweep.gather(table + [bad])
    assert doc["diverged"] == [{"seed": 3, "run": str(bad), "models": ["WM"], "dataset": "synth-68"}]
    assert doc["models"]["WM"]["mean_error"]["per_seed"].keys() == {"0", "1", "2"}
    assert doc["models"]["WM"]["diverged_seeds"] == [3]
    # BM of seed 3 is finite and counts: 0.10 0.12 0.11 0.11, mean 0.11, sd 0.0081650,
    # half-width t(0.975, 3) = 3.182446 times 0.0081650 / 2 = 0.0129923
    bm = doc["models"]["BM"]["mean_error"]
    assert bm["n"] == 4 and bm["ci95"] == pytest.approx([0.0970077, 0.1229923], abs=1e-7)
    wm = doc["claims"]["wm_vs_bm"]
    assert wm["per_seed"].keys() == {"0", "1", "2"} and wm["diverged_seeds"] == [3]
    assert "3" in doc["claims"]["am_vs_bm"]["per_seed"]  # AM and BM of seed 3 are finite
    md = sweep.markdown(doc)
    assert "Diverged seeds" in md and f"seed 3 ({bad}): WM" in md


def test_the_same_difference_on_every_seed_is_decided_by_the_sign_test(tmp_path):
    """A failure rate that moves by the same step on every seed gives a zero-width t interval: with
    two seeds the sign test's p is 0.5, so nothing holds; six seeds that all agree give p = 2 / 64."""
    def runs(n):
        out = []
        for s in range(n):
            folder = _write_audit(tmp_path / f"n{n}" / f"s{s}", s, 0.10, 0.09, 0.08)
            doc = json.loads((folder / "audit" / "audit.json").read_text())
            doc["models"]["BM"]["inter_ocular"]["failure_rate"]["0.10"] = 0.20
            doc["models"]["AM"]["inter_ocular"]["failure_rate"]["0.10"] = 0.19
            (folder / "audit" / "audit.json").write_text(json.dumps(doc))
            out.append(folder)
        return out
    two = sweep.gather(runs(2))["claims"]["am_failure_vs_bm"]
    assert two["ci95"] == pytest.approx([-0.01, -0.01]) and two["verdict"] == "not beyond seed noise"
    six = sweep.gather(runs(6))["claims"]["am_failure_vs_bm"]
    assert six["sign_test_p"] == pytest.approx(0.03125) and six["verdict"] == "holds beyond seed noise"


def test_one_seed_gives_no_interval_and_no_verdict(table):
    doc = sweep.gather(table[:1])
    assert doc["claims"]["wm_vs_bm"]["ci95"] is None
    assert doc["claims"]["wm_vs_bm"]["verdict"] == "fewer than two seeds: no interval"


def test_a_run_without_its_audit_is_a_named_error(tmp_path, table):
    proc = tool("tools/sweep.py", "--out", tmp_path / "out", *table, tmp_path / "missing", check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'missing' / 'audit' / 'audit.json'}: missing" in proc.stderr
    assert not (tmp_path / "out" / "sweep.json").exists()


def test_the_report_and_plot_are_written(tmp_path, table):
    proc = tool("tools/sweep.py", "--out", tmp_path / "out", *table)
    assert proc.returncode == 0
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert doc["plots"] == ["sweep_synth-68.png"] and (tmp_path / "out" / "sweep_synth-68.png").stat().st_size > 0
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "| WM < BM | s0: -1.000, s1: -1.000, s2: -0.500 | -0.833 [-1.550, -0.116] | 3 of 3 |" in md


# ---- the sweep itself, locally and through Slurm -------------------------------------------------

SWEEP_TINY = [s for s in MAKE_TINY if not s.startswith("SEED=")] + ["AUDIT_PARTS=equal_budget", "SEEDS=0 1"]


def make_sweep(sweep_dir: Path, *extra: str, env=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", "-j2", "sweep", f"SWEEP={sweep_dir}", *SWEEP_TINY, *extra], check=False,
                          cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def products(run: Path) -> dict[str, bytes | list]:
    """What training made: every model's bytes and every loss-weight vector."""
    out = {p.name: p.read_bytes() for p in sorted((run / "models").glob("*.caffemodel"))}
    for p in sorted((run / "loss_weights").glob("*.json")):
        doc = json.loads(p.read_text())
        out[p.name] = doc.get("weights") or doc["clusters"]  # Eq. 5: one vector; Eq. 9: one per cluster
    return out


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "local"
    make_sweep(folder)
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    c.start()  # raises (the test fails, it does not skip) with the reason when Slurm cannot start
    yield c
    c.stop()


def test_local_sweep_writes_the_report(local_sweep):
    folder = local_sweep
    doc = json.loads((folder / "sweep.json").read_text())
    assert doc["seeds"] == [0, 1]
    assert sorted(doc["runs"]) == [str(folder / "synth-5-s0"), str(folder / "synth-5-s1")]
    assert doc["models"]["equal_budget: BM + equal budget"]["mean_error"]["n"] == 2
    assert products(folder / "synth-5-s0") != products(folder / "synth-5-s1")  # the seeds differ
    again = make_sweep(folder)
    assert "run_stage.py" not in again.stdout and "tools/sweep.py" not in again.stdout  # nothing to do


def test_sweep_through_slurm_gives_the_same_bits(local_sweep, cluster, tmp_path):
    folder = local_sweep
    before = len(cluster.allocations())
    make_sweep(tmp_path / "slurm", "LAUNCH_TRAIN=srun -c1 -J mcl-train", "LAUNCH=srun -c1 -J mcl-light",
               env=cluster.env)
    jobs = cluster.allocations()[before:]
    # 2 seeds x (stage 1, 2, 3, heads, equal budget) training jobs, and the light work beside them
    assert len(jobs) >= 10, cluster.log("slurmctld")[-2000:]
    for seed in (0, 1):
        assert products(tmp_path / "slurm" / f"synth-5-s{seed}") == products(folder / f"synth-5-s{seed}")
    local = json.loads((folder / "sweep.json").read_text())
    slurm = json.loads((tmp_path / "slurm" / "sweep.json").read_text())
    assert slurm["claims"]["wm_vs_bm"]["per_seed"] == local["claims"]["wm_vs_bm"]["per_seed"]


def _wait_for(predicate, seconds: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_job_cancelled_by_slurm_resumes_to_the_same_bits(local_sweep, cluster, tmp_path):
    folder = local_sweep
    sw = tmp_path / "slurm"
    args = ["make", "sweep", f"SWEEP={sw}", *[s for s in SWEEP_TINY if not s.startswith("SEEDS=")], "SEEDS=0",
            "LAUNCH_TRAIN=srun -c1 -J mcl-train"]
    proc = subprocess.Popen(args, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    snaps = sw / "synth-5-s0" / "snapshots"
    _wait_for(lambda: list(snaps.glob("stage1_iter_*.solverstate")), 300, "stage 1's first snapshot")
    job = _wait_for(lambda: cluster.jobs("mcl-train"), 30, "the training job in the queue")
    subprocess.run(["scancel", job[0]], env=cluster.env, check=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (sw / "synth-5-s0" / "models" / "bm.caffemodel").exists(), "stage 1 ended before it was cancelled"
    log = sw / "synth-5-s0" / "logs" / "stage1.log"
    assert "job failed" in err and "stage stage1" in err and str(log) in err, err[-2000:]
    assert list(snaps.glob("stage1_iter_*.solverstate"))  # the periodic snapshots are kept
    again = subprocess.run(args, check=False, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[stage1] resuming from iteration" in again.stdout
    assert products(sw / "synth-5-s0") == products(folder / "synth-5-s0")


@pytest.mark.parametrize("how", ["SIGINT to the terminal's group", "SIGTERM to make"])
def test_interrupting_make_leaves_no_job_in_the_queue(cluster, tmp_path, how):
    sw = tmp_path / "slurm"
    args = ["make", "-j2", "sweep", f"SWEEP={sw}", *[s for s in SWEEP_TINY if not s.startswith("SCALE=")],
            "SCALE=0.002", "LAUNCH_TRAIN=srun -c1 -J mcl-train"]  # stage 1: 360 iterations, long enough
    proc = subprocess.Popen(args, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for(lambda: len([j for j in cluster.jobs("mcl-train", "RUNNING")]) == 2, 300, "both seeds' stage 1 "
              "running", step=0.2)
    if how.startswith("SIGINT"):
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"make did not end after {how}")
    assert proc.returncode != 0
    assert "the job was cancelled" in err, err[-2000:]
    _wait_for(lambda: not cluster.jobs(), 30, "an empty queue", step=0.2)
    shutil.rmtree(sw, ignore_errors=True)
