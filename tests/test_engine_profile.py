"""benchmarks/engine_profile.py (`make bench-engine`'s profile of a torch-engine step), on a tiny setting:
layout 5, batch 8, one thread, a few steps. The parts add up to the step timed on its own, none is
negative, the FLOPs of known convolutions are the numbers worked out by hand, the instrumented step
computes what Solver.step() computes, and the table has its columns.

The sums are checked on the thread's CPU time (profile_stage(clock="cpu"), one thread): the wall-clock
time less what other processes took of the core, so that a machine shared with other jobs does not
decide the test; the benchmark's own figures are wall-clock (the child process's run, below).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import bench_engine  # benchmarks/ (pyproject.toml: pytest's pythonpath)
import engine_profile as ep

LAYOUT, BATCH, THREADS = "5", 8, 1
TOLERANCE = 0.10  # the parts' sum against the step timed on its own
ITERS = 21  # steps of each kind (plain, instrumented), in turn: medians steady enough on a shared machine


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("engine-profile")
    bench_engine.write_run(run, LAYOUT, BATCH, rows=4 * BATCH)
    return run


@pytest.fixture(scope="module")
def machine():
    return ep.measure_machine(THREADS, quick=True)


@pytest.fixture(scope="module")
def profiles(run, machine):
    torch.set_num_threads(THREADS)
    return {stage: ep.profile_stage(run, stage, THREADS, warmup=2, iters=ITERS, machine=machine, clock="cpu")
            for stage in ep.STAGES}


def sum_problems(res: dict, tolerance: float = TOLERANCE) -> list[str]:
    """What is wrong with a profile's sums: a negative part, or parts that miss the measured step."""
    bad = [f"{p} is negative ({ms:.3f} ms)" for p, ms in res["parts_ms"].items() if ms < 0]
    total = sum(res["parts_ms"].values())
    if abs(total - res["step_ms"]) > tolerance * res["step_ms"]:
        bad.append(f"the parts sum to {total:.3f} ms, the step took {res['step_ms']:.3f} ms")
    return bad


def test_the_flops_of_a_small_convolution_by_hand():
    # conv11 of the nets at batch 8: 1 -> 32 channels, 3x3, 50x50 maps kept (pad 1):
    # 2 * 8 * 32 * 50 * 50 * 1 * 3 * 3 = 11,520,000.
    assert ep.conv_flops(8, 32, 50, 50, 1, 3, 3) == 11_520_000
    # A grouped one: 2 * 1 * 4 * 2 * 2 * (6 / 2) * 1 * 1 = 96.
    assert ep.conv_flops(1, 4, 2, 2, 6, 1, 1, group=2) == 96


def test_the_nets_convolutions_are_counted_from_their_shapes(profiles):
    work = {w["name"]: w for w in profiles["stage1"]["work"]}
    # conv11: the first layer has no data gradient: its backward is the weight gradient alone.
    assert (work["conv11"]["flop_fwd"], work["conv11"]["flop_bwd"]) == (11_520_000, 11_520_000)
    # conv12, 32 -> 32 on 50x50: 2 * 8 * 32 * 50 * 50 * 32 * 9 = 368,640,000; backward twice that.
    assert (work["conv12"]["flop_fwd"], work["conv12"]["flop_bwd"]) == (368_640_000, 737_280_000)
    # Stage 2: conv41 (96 -> 128 on 7x7) is the first that trains, reading the fixed pool3: no data gradient.
    # 2 * 8 * 128 * 7 * 7 * 96 * 9 = 86,704,128.
    work2 = {w["name"]: w for w in profiles["stage2"]["work"]}
    assert (work2["conv41"]["flop_fwd"], work2["conv41"]["flop_bwd"]) == (86_704_128, 86_704_128)
    assert "conv32" not in work2  # computed once per row (the fixed prefix), not per step
    heads = profiles["heads"]["floor"]
    assert heads["conv_fwd"]["flop"] == heads["conv_bwd"]["flop"] == 0


@pytest.mark.parametrize("stage", ep.STAGES)
def test_the_parts_add_up_to_the_step_timed_on_its_own(profiles, stage):
    res = profiles[stage]
    assert set(res["parts_ms"]) == set(ep.PARTS)
    assert len(res["plain_ms"]) == ITERS  # the step, timed apart from the parts
    assert sum_problems(res) == [], ep.format_table(res, LAYOUT, BATCH)
    assert res["step_ms"] > 0 and res["floor_ms"] > 0 and res["step_ratio"] > 0


def test_the_cpu_clock_is_for_one_thread(run):
    with pytest.raises(ValueError, match="one thread"):
        ep.profile_stage(run, "heads", 2, clock="cpu")


def test_the_sum_check_can_fail(profiles):
    res = copy.deepcopy(profiles["stage1"])
    res["parts_ms"]["conv_fwd"] += 0.5 * res["step_ms"]
    assert any("sum to" in p for p in sum_problems(res))
    res["parts_ms"]["other"] = -1.0
    assert any("other is negative" in p for p in sum_problems(res))


def test_the_instrumented_step_is_the_engines_step(run):
    """Two solvers from the same weights, one stepped plainly, one through the profiler: the same blobs.
    (Stage 1 trains on finite values; the heads of an untrained net overflow, the fixed BatchNorms having
    no statistics yet, so there NaN stands for NaN.)"""
    import numpy as np

    from mcl.engine.solver import Solver
    torch.set_num_threads(THREADS)
    for stage in ("stage1", "stage2", "heads"):
        a, b = (Solver(run, run / "solvers" / f"{stage}_solver.prototxt", fillers="torch") for _ in range(2))
        prof = ep.StepProfiler(b)
        for _ in range(2):
            a.step()
            prof.step()
        assert a.iter == b.iter == 2
        assert np.array_equal(a.last_losses.numpy(), b.last_losses.numpy(), equal_nan=True)
        if stage == "stage1":
            assert np.isfinite(a.loss)
        blobs_a, blobs_b = a.blobs(), b.blobs()
        assert blobs_a.keys() == blobs_b.keys()
        for name in blobs_a:
            for x, y in zip(blobs_a[name], blobs_b[name]):
                assert np.array_equal(x, y, equal_nan=True), (stage, name)


def test_the_table_has_its_columns(profiles):
    text = ep.format_table(profiles["stage1"], LAYOUT, BATCH)
    header = text.splitlines()[1].split()
    for column in ("part", "ms", "floor", "ratio", "GFLOP", "MB"):
        assert column in header
    for part in ep.PARTS:
        assert ep.LABELS[part] in text
    assert "total (the measured step)" in text


def test_the_machine_is_measured(machine):
    assert machine["peak_gflops"] > 0 and machine["bandwidth_gbs"] > 0 and machine["threads"] == THREADS
    assert machine["cpu"]["torch_capability"] and machine["cpu"]["model"]


def test_the_profile_runs_in_a_child_and_prints_its_report(capsys):
    out = ep.profile([LAYOUT], BATCH, THREADS, bench_engine.write_run, warmup=1, iters=2, stages=("heads",),
                     quick=True)
    printed = capsys.readouterr().out
    assert "fp32 peak" in printed and "memory bandwidth" in printed and "largest gaps to the floor" in printed
    res = out["layouts"][LAYOUT]["heads"]
    assert res["step_ms"] > 0 and set(res["parts_ms"]) == set(ep.PARTS)
    json.dumps(out)  # the benchmark's --json takes it as it is


def test_the_benchmark_options_choose_or_skip_the_profile(monkeypatch):
    seen = []
    monkeypatch.setattr(bench_engine, "compare_engines", lambda *a, **kw: seen.append(kw["profile_layouts"]))
    bench_engine.main(["--no-profile"])
    bench_engine.main(["--profile-layouts", "68"])
    bench_engine.main([])
    assert seen == [(), ["68"], ["5", "68"]]


def test_the_bf16_projection_scales_each_stage_by_its_measured_ratio():
    """Hours by hand: stage 1 (240k iterations at 100 ms) and stage 2 (60k at 50 ms) twice as fast in bf16,
    the heads (60k at 10 ms) 0.8x as fast, their fixed pass (1 ms over 1,000 rows) as timed."""
    doc = {"precisions": ["fp32", "bf16"], "results": {"68": {"2": {
        "stage1": {"fp32": {"ms_per_iter": 300.0}, "bf16": {"ms_per_iter": 150.0}},
        "stage2": {"fp32": {"ms_per_iter": 100.0}, "bf16": {"ms_per_iter": 50.0}},
        "heads": {"fp32": {"ms_per_iter": 4.0}, "bf16": {"ms_per_iter": 5.0}}}}}}
    res = {"stage1": {"torch": 100.0, "fixed_ms_per_row": None}, "stage2": {"torch": 50.0, "fixed_ms_per_row": None},
           "heads": {"torch": 10.0, "fixed_ms_per_row": 1.0}}
    schedule = {"stage1": {"stage1": 180000, "stage3": 60000}, "stage2": {"stage2": 60000},
                "heads": {"heads": 60000}}
    p = bench_engine.bf16_projection(doc, "68", 2, res, schedule, rows=1000)
    fp32 = (240000 * 100 + 60000 * 50 + 60000 * 10 + 1000) / 3.6e6
    bf16 = (240000 * 50 + 60000 * 25 + 60000 * 12.5 + 1000) / 3.6e6
    assert p["fp32"] == pytest.approx(fp32) and p["total"] == pytest.approx(bf16)
    assert bench_engine.bf16_projection({**doc, "precisions": ["fp32"]}, "68", 2, res, schedule, 1000) is None
    assert bench_engine.bf16_projection(doc, "5", 2, res, schedule, 1000) is None
