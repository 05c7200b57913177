"""benchmarks/engine_candidates.py (`make bench-candidates`): candidate speed-ups of the torch engine's fp32 step,
side by side, on a tiny setting (layout 5, batch 4, one round of one timed step; the compiled candidates
through torch.compile's "eager" backend, which traces them as inductor would be given them without the
minutes of code generation). What is checked: every candidate lands in the JSON with a time or a recorded
error, the numerics of each against the fp32 baseline and float64, the machine and the load; a compile
that fails is recorded, not fatal; the verdict's rule (faster in every round, numerics within the bar);
--help; bad arguments exit 2 naming the option; SIGTERM ends the run and its workers, nothing written.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import engine_candidates as ec  # benchmarks/ (pyproject.toml: pytest's pythonpath)
from conftest import ROOT, descendants, wait_ended

SCRIPT = str(ROOT / "benchmarks/engine_candidates.py")
TINY = ["--layouts", "5", "--batch", "4", "--rounds", "1", "--iters", "1", "--warmup", "0"]


def bench(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("candidates") / "candidates.json"
    p = bench(*TINY, "--compile-backend", "eager", "--floor", "quick", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout, p.stderr, json.loads(out.read_text())


def test_every_candidate_has_a_result_or_an_error(measured):
    text, progress, doc = measured
    names = ec.parse_candidates(ec.default_candidates(2))
    assert doc["settings"]["candidates"] == names
    res = doc["layouts"]["5"]
    assert set(res["candidates"]) == set(names)
    for name, c in res["candidates"].items():
        assert ("ms_per_iter" in c and c["ms_per_iter"] > 0) or c.get("error"), name
        if "ms_per_iter" in c and name != "baseline":
            assert c["ratio"] > 0 and len(c["ratio_rounds"]) == 1, name
            assert c["verdict"].startswith("no verdict"), name  # one round decides nothing
        assert name in text, name
    assert "[candidates] layout 5 round 1/1" in progress


def test_the_machine_load_and_settings_are_recorded(measured):
    _, _, doc = measured
    m = doc["machine"]
    for key in ("model", "cores", "flags", "avx512", "amx", "openmp", "floor_figures"):
        assert key in m, key
    assert m["floor_figures"]["peak_gflops"] > 0 and m["floor_figures"]["bandwidth_gbs"] > 0
    assert len(m["floor_figures"]["measurements"]) == 2  # before the rounds and after the one round
    assert doc["torch"] and len(doc["load_average_start"]) == 3 and len(doc["load_average_end"]) == 3
    assert doc["settings"]["batch"] == 4 and doc["settings"]["threads"] == 2
    res = doc["layouts"]["5"]
    assert res["floor"]["floor_ms"] > 0 and res["candidates"]["baseline"]["vs_floor"] > 0
    assert len(res["load_average"]) == 2
    assert res["candidates"]["threads_1"]["threads"] == 1
    assert res["candidates"]["omp_active"]["env"]["OMP_WAIT_POLICY"] == "ACTIVE"
    assert res["candidates"]["baseline"]["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_numerics_are_checked(measured):
    _, _, doc = measured
    res = doc["layouts"]["5"]
    base = res["baseline_numerics"]
    assert 0 < base["grad_vs_float64"]["relerr"] < 1e-2  # fp32 is not float64, but close
    for name, c in res["candidates"].items():
        if name == "baseline" or "ms_per_iter" not in c:
            continue
        n = c["numerics"]
        for key in ("grad_vs_fp32", "grad_vs_float64", "bn_scale_grad_vs_float64", "blobs_after_step_vs_fp32"):
            assert {"relerr", "relerr_blob", "max_abs", "max_abs_blob"} <= set(n[key]), (name, key)
        assert isinstance(n["within_bar"], bool) and isinstance(n["identical"], bool)
    # Each candidate is a change to the engine before its kernels (nchw_pytorch): the feed's changes and
    # dynamo's eager backend compute what that computes, bit for bit, so they differ from the baseline (the
    # channels-last kernels) exactly as it does; the kernels on NCHW maps do not.
    before = res["candidates"]["nchw_pytorch"]["numerics"]
    for name in ("uint8_feed", "prefetch", "uint8_prefetch", "bn_compiled", "compile_step"):
        n = res["candidates"][name]["numerics"]
        for key in ("grad_vs_fp32", "grad_vs_float64", "blobs_after_step_vs_fp32"):
            assert n[key] == before[key], (name, key)
    assert res["candidates"]["nchw_kernels"]["numerics"]["grad_vs_fp32"] != before["grad_vs_fp32"]
    # Another thread count sums in another order: close, not identical.
    t1 = res["candidates"]["threads_1"]["numerics"]
    assert t1["blobs_after_step_vs_fp32"]["relerr"] <= ec.BAR
    for name in ec.COMPILED:
        assert "compile_s" in res["candidates"][name], name


def test_a_failed_compile_is_recorded(tmp_path):
    out = tmp_path / "c.json"
    p = bench(*TINY, "--candidates", "baseline,bn_compiled,uint8_feed", "--compile-backend", "no_such_backend",
              "--floor", "off", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    cands = json.loads(out.read_text())["layouts"]["5"]["candidates"]
    assert "no_such_backend" in cands["bn_compiled"]["error"] and cands["bn_compiled"]["verdict"] == "failed"
    assert cands["uint8_feed"]["ms_per_iter"] > 0 and "error" not in cands["uint8_feed"]
    assert "failed" in p.stdout


@pytest.mark.parametrize("cand, within, want", [
    ([90, 95, 97], True, "helps"),  # faster in every round
    ([90, 99, 103], True, "no clear difference"),  # one round slower: within the spread
    ([110, 120, 105], True, "hurts"),
    ([90, 95, 97], False, "faster, numerics outside the bar"),
])
def test_the_verdict_needs_every_round(cand, within, want):
    base = [100, 98, 102]  # the baseline's turn beside the candidate's, round by round
    times, paired = {"x": [[c] for c in cand]}, {"x": [[b] for b in base]}
    num = {"x": {"within_bar": within}}
    res = ec.summarise(["baseline", "x"], times, paired, {}, {}, num, floor_ms=50.0)["candidates"]
    out = res["x"]
    assert out["verdict"] == want
    assert out["ratio_rounds"] == pytest.approx([c / b for c, b in zip(cand, base)])
    assert out["vs_floor"] == pytest.approx(sorted(cand)[1] / 50.0)
    assert res["baseline"]["ms_per_iter"] == 100 and res["baseline"]["vs_floor"] == pytest.approx(2.0)


def test_help_and_bad_arguments():
    p = bench("--help", timeout=60)
    assert p.returncode == 0 and "channels_last" in p.stdout and "--rounds" in p.stdout
    for args, named in ((["--layouts", "7"], "--layouts"), (["--candidates", "baseline,warp_drive"], "--candidates"),
                        (["--candidates", "channels_last+omp_active"], "--candidates"), (["--rounds", "0"], "--rounds"),
                        (["--candidates", "threads_x"], "--candidates"), (["--batch", "0"], "--batch")):
        p = bench(*args, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert named in p.stderr, (args, p.stderr)


def test_sigterm_ends_the_run_and_its_workers(tmp_path):
    out = tmp_path / "c.json"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--layouts", "5", "--batch", "4", "--rounds", "100000",
                             "--warmup", "0", "--candidates", "baseline,threads_1", "--floor", "off",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids = {}
    for _ in range(600):  # until both workers are there (at most a minute)
        kids = descendants(proc.pid)
        if len(kids) >= 2:
            break
        time.sleep(0.1)
    assert len(kids) >= 2, "the workers did not start"
    time.sleep(3)  # rounds under way
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert wait_ended(kids, 30) == [], "a worker outlived the benchmark"
    assert not out.exists()
    assert "SIGTERM" in proc.stderr.read()
