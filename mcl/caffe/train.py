"""Training one stage of Algorithm 1 in real Caffe (pycaffe's SGDSolver), resumably.

The work runs in a child process (`python -m mcl.caffe.train`) whose stderr, Caffe's
full glog output, goes to `<run>/logs/<stage>.log`; it reports progress as JSON
lines on stdout, which the parent shows as a progress bar.

Resuming: the latest complete snapshot is restored and the data layers are moved
forward by one batch per finished iteration (HDF5Data and LMDB Data read in a
fixed order with shuffle off), so an interrupted-and-resumed stage ends with the
same weights as an uninterrupted one. The final model is written under a
temporary name and renamed: a caffemodel under its final name is a finished stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DATA_LAYER_TYPES = ("HDF5Data", "Data")
SNAPSHOT_RE = re.compile(r"_iter_(\d+)\.solverstate$")


class StageError(RuntimeError):
    """A stage that cannot start: a missing input or a model that does not fit the net."""


@dataclass
class StageSpec:
    run: Path
    name: str  # file stem under nets/ and solvers/: stage1, stage2, stage3, heads, head_<c>, pre_bm
    init: Path | None  # caffemodel to start from (by layer name), None for random init
    out: Path  # final caffemodel
    engine: str = "caffe"  # caffe (pycaffe, the reference) or torch (mcl.engine, Caffe's numerics in PyTorch)
    device: str = "cpu"  # torch engine only: cpu or cuda

    @property
    def solver_path(self) -> Path:
        return self.run / "solvers" / f"{self.name}_solver.prototxt"

    @property
    def log_path(self) -> Path:
        return self.run / "logs" / f"{self.name}.log"

    @property
    def snapshot_prefix(self) -> Path:
        return self.run / "snapshots" / self.name


def snapshots(spec: StageSpec) -> list[tuple[int, Path]]:
    """(iteration, solverstate) of every snapshot whose caffemodel is there too, newest first."""
    folder = spec.snapshot_prefix.parent
    found = []
    if folder.is_dir():
        for p in folder.glob(f"{spec.snapshot_prefix.name}_iter_*.solverstate"):
            m = SNAPSHOT_RE.search(p.name)
            if m and p.with_suffix(".caffemodel").exists():
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def loss_weights_of(net_param) -> dict[str, float]:
    """Loss top -> its loss_weight (EuclideanLoss; Caffe's default 1): the terms of Eq. 4's total."""
    return {top: (lay.loss_weight[0] if len(lay.loss_weight) else 1.0)
            for lay in net_param.layer if lay.type == "EuclideanLoss" for top in lay.top}


def _worker(spec: StageSpec, stop_after: int | None) -> int:
    """Runs in the child: Caffe's log on stderr, progress JSON on stdout."""
    import caffe
    from google.protobuf import text_format

    from mcl.caffe.proto import caffe_pb2

    caffe.set_mode_cpu()
    os.chdir(spec.run)
    sp = text_format.Parse(spec.solver_path.read_text(), caffe_pb2.SolverParameter())
    net_param = text_format.Parse((spec.run / sp.train_net).read_text(), caffe_pb2.NetParameter())
    weights = loss_weights_of(net_param)
    n_data = sum(1 for lay in net_param.layer if lay.type in DATA_LAYER_TYPES)
    solver = caffe.SGDSolver(str(spec.solver_path))
    start = 0
    for it, state in snapshots(spec):
        from mcl.run.verify import snapshot_intact
        if not snapshot_intact(state, solver.net):  # cut short by a kill: Caffe would abort on it
            continue
        try:
            solver.restore(str(state))
        except Exception:  # a snapshot cut short by a kill: try the one before
            continue
        start = it
        break
    if start:
        for _ in range(start):  # the batches the finished iterations consumed
            solver.net._forward(0, n_data - 1)
        print(json.dumps({"event": "resumed", "iter": start, "from": str(state)}), flush=True)
    elif spec.init is not None:
        from mcl.caffe.caffemodel import ModelError, check_fits, load
        try:  # Caffe would abort on a shape mismatch: check first, report by name
            check_fits(load(spec.init), solver.net, spec.init, require_all=False)
        except ModelError as exc:
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
            return 3
        solver.net.copy_from(str(spec.init))
        print(json.dumps({"event": "init", "from": str(spec.init)}), flush=True)

    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    t0 = time.time()
    while solver.iter < sp.max_iter:
        solver.step(1)
        it = solver.iter
        if it % sp.display == 0 or it == sp.max_iter:
            loss = sum(w * float(solver.net.blobs[t].data) for t, w in weights.items())
            lr = sp.base_lr * sp.gamma ** (it // sp.stepsize) if sp.lr_policy == "step" else sp.base_lr
            print(json.dumps({"event": "iter", "iter": it, "max_iter": sp.max_iter, "loss": loss, "lr": lr,
                              "elapsed": time.time() - t0, "start": start}), flush=True)
        if interrupted:
            solver.snapshot()  # resume exactly here next time
            print(json.dumps({"event": "interrupted", "iter": it}), flush=True)
            return 130
        if stop_after is not None and it >= stop_after:
            os._exit(137)  # as if killed: no snapshot beyond the periodic ones
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.out.with_name(f".{spec.out.name}.tmp")
    solver.net.save(str(tmp))
    os.replace(tmp, spec.out)
    print(json.dumps({"event": "done", "iter": solver.iter, "out": str(spec.out)}), flush=True)
    return 0


def run_stage(spec: StageSpec, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train `spec` in a child process; returns a summary. Raises StageError on failure."""
    if not spec.solver_path.exists():
        raise StageError(f"{spec.solver_path}: solver missing (run `make nets` for this run)")
    if spec.init is not None and not Path(spec.init).exists():
        raise StageError(f"{spec.init}: the model this stage starts from is missing")
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    spec.snapshot_prefix.parent.mkdir(parents=True, exist_ok=True)
    module = "mcl.engine" if spec.engine == "torch" else "mcl.caffe.train"
    cmd = [sys.executable, "-m", module, "--run", str(spec.run), "--name", spec.name, "--out", str(spec.out)]
    if spec.engine == "torch":
        cmd += ["--device", spec.device]
    if spec.init is not None:
        cmd += ["--init", str(Path(spec.init).resolve())]
    if stop_after is not None:
        cmd += ["--stop-after", str(stop_after)]
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    summary = {"stage": spec.name, "resumed_from": 0, "last": None}
    bar = None
    t0 = time.time()
    with open(spec.log_path, "a") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            for line in proc.stdout:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev["event"] == "error":
                    summary["error"] = ev["message"]
                elif ev["event"] == "resumed":
                    summary["resumed_from"] = ev["iter"]
                    print(f"[{spec.name}] resuming from iteration {ev['iter']} ({ev['from']})", flush=True)
                elif ev["event"] == "iter":
                    summary["last"] = ev
                    if progress and bar is None and sys.stdout.isatty():
                        from tqdm import tqdm
                        bar = tqdm(total=ev["max_iter"], initial=ev["start"], desc=spec.name, unit="it",
                                   dynamic_ncols=True, file=sys.stdout)
                    if bar is not None:
                        bar.update(ev["iter"] - bar.n)
                        bar.set_postfix(loss=f"{ev['loss']:.4g}", lr=f"{ev['lr']:.3g}")
                    elif progress and _tenth(ev):
                        left = ev["elapsed"] / max(1, ev["iter"] - ev["start"]) * (ev["max_iter"] - ev["iter"])
                        print(f"[{spec.name}] iter {ev['iter']}/{ev['max_iter']} loss {ev['loss']:.4g} "
                              f"lr {ev['lr']:.3g}, about {left:.0f} s left", flush=True)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    if bar is not None:
        bar.close()
    summary["wall_time_s"] = time.time() - t0
    if rc == 130:
        raise StageError(f"{spec.name}: interrupted; a snapshot was written and the next run resumes from it")
    if "error" in summary:
        raise StageError(summary["error"])
    if rc != 0:
        what = "Caffe" if spec.engine == "caffe" else "the torch engine"
        raise StageError(f"{spec.name}: {what} failed (exit {rc}); see {spec.log_path}")
    for _, state in snapshots(spec)[1:]:  # a finished stage keeps only its last snapshot
        state.unlink(missing_ok=True)
        state.with_suffix(".caffemodel").unlink(missing_ok=True)
    return summary


def _tenth(ev: dict) -> bool:
    """Whether this progress event crosses a tenth of the stage (for logs without a terminal)."""
    step = max(1, ev["max_iter"] // 10)
    return ev["iter"] == ev["max_iter"] or ev["iter"] % step == 0


def _stop_with_parent() -> None:
    """SIGTERM this worker (it snapshots and exits) when the tool that started it dies,
    even killed with -9; an orphan would go on training, and writing snapshots under the
    names the next run resumes from, until its next progress line hit a closed pipe."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the tool died before prctl took effect
        sys.exit(130)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Worker process of one training stage (used by tools/run_stage.py).")
    ap.add_argument("--run", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init")
    ap.add_argument("--stop-after", type=int, help="exit abruptly after this iteration (tests of resuming)")
    a = ap.parse_args(argv)
    spec = StageSpec(Path(a.run).resolve(), a.name, Path(a.init) if a.init else None, Path(a.out).resolve())
    _stop_with_parent()
    return _worker(spec, a.stop_after)


if __name__ == "__main__":
    sys.exit(main())
