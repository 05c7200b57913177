"""benchmarks/engine_threads.py (`make bench-threads`): the torch engine's step against the thread count,
fp32 and bf16 (the engine's PRECISION=bf16) side by side, on a tiny setting (layout 5, batch 8, 1 and 2 threads, two
timed steps). What is checked: every (layout, threads, stage, precision) is measured in a child of its
own and lands in the JSON and the table; bf16 is measured only where the CPU lists bfloat16
instructions, and said so where not; the speed-up and efficiency columns are the arithmetic worked out
by hand; bad input exits with status 2 and a message naming the option.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import engine_threads as et  # benchmarks/ (pyproject.toml: pytest's pythonpath)
from conftest import ROOT, descendants, wait_ended

TINY = ["--layouts", "5", "--threads", "1,2", "--stages", "stage1,heads", "--batch", "8", "--iters", "2",
        "--warmup", "1", "--block", "1"]


def test_the_table_does_the_arithmetic():
    doc = {"cpu": "x", "cores": 2, "torch": "t", "load_average_start": (0.5, 0, 0), "load_average_end": (0.7, 0, 0),
           "bf16": "measured (autocast)", "precisions": ["fp32", "bf16"], "stages": ["stage1"],
           "results": {"68": {"1": {"stage1": {"fp32": {"ms_per_iter": 300.0}, "bf16": {"ms_per_iter": 150.0}}},
                              "2": {"stage1": {"fp32": {"ms_per_iter": 200.0}, "bf16": {"ms_per_iter": 80.0}}}}}}
    text = et.table(doc)
    # 300 / 200 = 1.50x from 1 to 2 threads, 1.50 / 2 = 75% efficiency; fp32 / bf16 = 200 / 80 = 2.50x.
    assert "| 68 | stage1 | 2 | 200.0 | 1.50x | 75% | 80.0 | 2.50x |" in text
    assert "| 68 | stage1 | 1 | 300.0 | 1.00x | 100% | 150.0 | 2.00x |" in text
    assert "vector peaks" not in text  # none measured: no line
    text = et.table({**doc, "peaks": {"fp32_gflops": 100.0, "bf16_gflops": 190.0}})
    assert "fp32 FMA 100.0 GFLOP/s, AVX-512 BF16 190.0 (1.90x)" in text  # 190 / 100


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("threads") / "threads.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/engine_threads.py"), *TINY,
                        "--precisions", "fp32,bf16", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout, json.loads(out.read_text())


def test_every_setting_is_measured_and_recorded(measured):
    text, doc = measured
    assert set(doc["results"]) == {"5"}
    assert set(doc["results"]["5"]) == {"1", "2"}
    want = ["fp32", "bf16"] if et.bf16_support() else ["fp32"]
    assert doc["precisions"] == want
    for n, res in doc["results"]["5"].items():
        for stage in ("stage1", "heads"):
            for prec in want:
                r = res[stage][prec]
                assert len(r["all_ms"]) == 2 and r["ms_per_iter"] > 0, (n, stage, prec)
            assert res[stage]["loss_finite"], (n, stage)
        assert "stage2" not in res
    for key in ("cpu", "cores", "torch", "bf16_instructions", "load_average_start", "batch", "iters"):
        assert key in doc, key
    assert doc["batch"] == 8
    header = "| layout | stage | threads | fp32 ms/iter | speed-up vs 1 | efficiency |"
    assert header in text
    assert ("bf16 ms/iter" in text) == ("bf16" in want)
    assert text.count("| 5 | stage1 |") == 2 and text.count("| 5 | heads |") == 2


def test_bf16_is_not_measured_where_the_cpu_lacks_it(monkeypatch):
    from mcl.engine import device

    monkeypatch.setattr(device, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "fma"})
    doc = et.measure(["5"], [1], ["heads"], ["fp32", "bf16"], batch=8, warmup=0, iters=1, block=1, timeout=300,
                     log=lambda *a, **k: None)
    assert doc["precisions"] == ["fp32"]
    assert doc["bf16"].startswith("not measured") and "avx512_bf16" in doc["bf16"]
    assert set(doc["results"]["5"]["1"]["heads"]) == {"fp32", "loss_finite"}
    assert "bf16 ms/iter" not in et.table(doc)


@pytest.mark.parametrize("args, named", [(["--threads", "0"], "--threads"), (["--layouts", "7"], "--layouts"),
                                         (["--precisions", "fp16"], "--precisions"), (["--iters", "0"], "--iters"),
                                         (["--stages", "stage9"], "--stages")])
def test_bad_input_is_named(args, named):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/engine_threads.py"), *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert named in p.stderr


def test_sigterm_ends_the_benchmark_and_its_child(tmp_path):
    """SIGTERM while a child trains: the parent exits 143, the child ends with it, no JSON is written."""
    out = tmp_path / "t.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/engine_threads.py"), "--layouts", "5",
                             "--threads", "1", "--batch", "8", "--iters", "100000", "--warmup", "0",
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kids = {}
    for _ in range(600):  # until the child is there (at most a minute)
        kids = descendants(proc.pid)
        if kids:
            break
        time.sleep(0.1)
    assert kids, "no child process started"
    time.sleep(2)  # the child is training now
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    assert wait_ended(kids, 30) == [], "the child outlived the benchmark"
    assert not out.exists()
