"""Speed as the paper measures it (METHOD §7.2, Sec. IV-A-3): one core, batch 1, forward only.

The timing runs in a child process whose environment sets every BLAS thread
count to 1 (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, overriding
whatever the caller's environment says: a user's settings must not change what
the report calls single-core), pinned to one core with sched_setaffinity before
Caffe is imported. Each forward pass is timed on its own; the figure is the
median, with the quartiles and extremes as its spread. `caffe time` (Caffe's own
benchmark: forward and backward over N iterations, fillers' weights) runs under
the same rules beside it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mcl.caffe import netgen
from mcl.caffe.check import caffe_tool
from mcl.method import paper
from mcl.method.layouts import get_layout

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 3
DEFAULT_CAFFE_ITERATIONS = 20
ROOT = Path(__file__).resolve().parents[2]
_CAFFE_FORWARD_RE = re.compile(r"Average Forward pass:\s*([0-9.eE+-]+)\s*ms")
_CAFFE_FB_RE = re.compile(r"Average Forward-Backward:\s*([0-9.eE+-]+)\s*ms")


class SpeedError(RuntimeError):
    """A timing that could not be taken (the child failed, caffe time printed no figure)."""


def single_core_env(extra: dict | None = None) -> dict:
    """The caller's environment with every BLAS thread count forced to 1 and this package importable."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def pick_core(core: int | None = None) -> int:
    """The core to pin to: `core` if this process may run on it, else the first allowed one."""
    allowed = sorted(os.sched_getaffinity(0))
    if core is None:
        return allowed[0]
    if core not in allowed:
        raise SpeedError(f"core {core} is not among the cores this process may use ({allowed})")
    return core


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summarize(samples_ms) -> dict:
    """Median and spread of per-pass times."""
    s = np.asarray(samples_ms, dtype=np.float64)
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return {"median_ms": float(med), "fps": float(1000.0 / med), "q1_ms": float(q1), "q3_ms": float(q3),
            "iqr_ms": float(q3 - q1), "min_ms": float(s.min()), "max_ms": float(s.max()), "mean_ms": float(s.mean()),
            "repeats": int(len(s))}


def time_forward(deploy: Path, weights: Path | None = None, repeats: int = DEFAULT_REPEATS,
                 warmup: int = DEFAULT_WARMUP, core: int | None = None, timeout: float = 600) -> dict:
    """Per-pass forward times of a deploy net at batch 1 on one pinned core, one BLAS thread."""
    if repeats < 1:
        raise SpeedError("repeats must be at least 1")
    for p in (deploy, weights):
        if p is not None and not Path(p).exists():
            raise SpeedError(f"{p}: missing")
    core = pick_core(core)
    job = {"deploy": str(Path(deploy).resolve()), "weights": str(Path(weights).resolve()) if weights else None,
           "repeats": int(repeats), "warmup": int(warmup), "core": core}
    proc = subprocess.run([sys.executable, "-m", "mcl.caffe.speed", "--child", json.dumps(job)], capture_output=True,
                          text=True, env=single_core_env({"GLOG_minloglevel": "2"}), timeout=timeout)
    if proc.returncode != 0:
        raise SpeedError(f"timing {deploy} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not last:
        raise SpeedError(f"timing {deploy}: the child printed no result")
    child = json.loads(last[-1])
    out = summarize(child["samples_ms"])
    out.update(warmup=int(warmup), core=core, affinity=child["affinity"], threads=child["threads"],
               weights="given" if weights else "fillers (random)", samples_ms=child["samples_ms"])
    return out


def _child(job: dict) -> None:
    """Runs in the child: pin first, then import Caffe, then time."""
    os.sched_setaffinity(0, {job["core"]})
    threads = {v: os.environ.get(v) for v in THREAD_VARS}
    if any(t != "1" for t in threads.values()):
        raise SystemExit(f"BLAS thread variables not forced to 1: {threads}")
    import caffe
    caffe.set_mode_cpu()
    if job["weights"]:
        net = caffe.Net(job["deploy"], caffe.TEST, weights=job["weights"])
    else:
        net = caffe.Net(job["deploy"], caffe.TEST)
    name = net.inputs[0]
    shape = (1,) + tuple(net.blobs[name].data.shape[1:])
    net.blobs[name].reshape(*shape)
    net.blobs[name].data[...] = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(job["warmup"]):
        net.forward()
    samples = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        net.forward()
        samples.append((time.perf_counter() - t0) * 1000.0)
    print(json.dumps({"samples_ms": samples, "affinity": sorted(os.sched_getaffinity(0)), "threads": threads}))


def caffe_time(deploy: Path, iterations: int = DEFAULT_CAFFE_ITERATIONS, core: int | None = None,
               tool: str | None = None, timeout: float = 600) -> dict:
    """`caffe time -phase TEST` on one pinned core, one BLAS thread: Caffe's average forward pass.

    caffe time loads no weights (the nets keep their fillers' values); the time
    of a forward pass does not depend on them.
    """
    tool = tool or caffe_tool()
    core = pick_core(core)
    cmd = [tool, "time", "-model", str(deploy), "-iterations", str(int(iterations)), "-phase", "TEST"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=single_core_env({"GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}),
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    log = proc.stdout + proc.stderr
    fwd, fb = _CAFFE_FORWARD_RE.search(log), _CAFFE_FB_RE.search(log)
    if proc.returncode != 0 or not fwd:
        raise SpeedError(f"caffe time on {deploy} failed ({proc.returncode}): {log.strip()[-1500:]}")
    return {"forward_ms": float(fwd[1]), "forward_backward_ms": float(fb[1]) if fb else None,
            "iterations": int(iterations), "phase": "TEST", "core": core, "tool": tool,
            "weights": "fillers (caffe time loads none)"}


def measure_layouts(layouts=("5", "29", "68"), weights: dict | None = None, repeats: int = DEFAULT_REPEATS,
                    warmup: int = DEFAULT_WARMUP, caffe_iterations: int = DEFAULT_CAFFE_ITERATIONS,
                    core: int | None = None, deploys: dict | None = None) -> dict:
    """The 5-, 29- and 68-point deploy nets timed side by side, with the paper's row.

    `weights` maps a layout to a caffemodel (default: random fillers); `deploys` maps
    a layout to a deploy prototxt (default: mcl.caffe.netgen.deploy_net, the BM net, which
    AM equals in cost). caffe_iterations 0 skips `caffe time`.
    """
    weights, deploys = weights or {}, deploys or {}
    core = pick_core(core)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcl-speed-") as tmp:
        for name in layouts:
            layout = get_layout(name)
            deploy = deploys.get(layout.name)
            if deploy is None:
                deploy = Path(tmp) / f"deploy_{layout.name}.prototxt"
                deploy.write_text(netgen.to_text(netgen.deploy_net(layout)))
            row = {"name": f"BM/AM deploy, {layout.n_points} points", "layout": layout.name,
                   "deploy": str(deploys.get(layout.name, "mcl.caffe.netgen.deploy_net"))}
            row.update(time_forward(deploy, weights.get(layout.name), repeats, warmup, core))
            row["caffe_time"] = caffe_time(deploy, caffe_iterations, core) if caffe_iterations > 0 else None
            row["caffe_time_ms"] = row["caffe_time"]["forward_ms"] if row["caffe_time"] else None
            rows.append(row)
    note = (f"Batch 1, forward only, BLAS threads forced to 1, pinned to core {core} of {cpu_name()}: median of "
            f"{repeats} timed passes after {warmup} warm-up; `caffe time -phase TEST` over {caffe_iterations} "
            f"iterations beside it. The paper's row is its 68-point net on one core of an i5-6200U.")
    return {"rows": rows, "paper": paper.speed_reference(), "note": note,
            "settings": {"batch": 1, "threads": 1, "thread_vars": list(THREAD_VARS), "core": core,
                         "repeats": repeats, "warmup": warmup, "caffe_iterations": caffe_iterations,
                         "cpu": cpu_name(), "statistic": "median of per-pass times; spread: quartiles, min, max"}}


def layouts_side_by_side(repeats: int = DEFAULT_REPEATS, **kwargs) -> dict:
    """measure_layouts for the 5-, 29- and 68-point nets (the audit's speed table)."""
    return measure_layouts(("5", "29", "68"), repeats=repeats, **kwargs)


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        _child(json.loads(argv[1]))
        return 0
    print("internal: python -m mcl.caffe.speed --child JOB (use tools/bench_speed.py)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
