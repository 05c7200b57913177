"""Learning curves: a stage trained in Caffe, scored on the test split every K iterations
with its BatchNorm statistics recomputed (mcl/caffe/bnstats.py), so each point is what the
stage's product would be at that length."""

from __future__ import annotations

import os
import time
from pathlib import Path

from google.protobuf import text_format

from mcl.caffe import bnstats
from mcl.caffe.forward import load_net
from mcl.caffe.proto import caffe_pb2
from mcl.caffe.runfiles import run_layout
from mcl.data.splits import load_split
from mcl.evaluation.evaluate import evaluate_model
from mcl.evaluation.report import save_figure


def learning_curve(run: Path, stage: str, tmp: Path, max_iter: int, stepsize: int, every: int,
                   base_lr: float | None = None, init: Path | None = None, bn_batches: int = 60, log=print) -> dict:
    import caffe
    run = Path(run).resolve()
    layout = run_layout(run)
    sp = text_format.Parse((run / "solvers" / f"{stage}_solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    sp.max_iter, sp.stepsize = max_iter, stepsize
    sp.snapshot, sp.snapshot_prefix = 0, str(tmp / "snap")
    sp.train_net = str(run / sp.train_net)
    if base_lr is not None:
        sp.base_lr = base_lr
    solver_path = tmp / "solver.prototxt"
    solver_path.write_text(text_format.MessageToString(sp))
    data = load_split(run, "test")
    deploy = run / "nets" / "deploy.prototxt"
    caffe.set_mode_cpu()
    cwd = os.getcwd()
    os.chdir(run)
    try:
        solver = caffe.SGDSolver(str(solver_path))
        if init is not None:
            solver.net.copy_from(str(init))
        points, t0 = [], time.time()
        while solver.iter < max_iter:
            solver.step(min(every, max_iter - solver.iter))
            raw, fixed = tmp / "raw.caffemodel", tmp / "fixed.caffemodel"
            solver.net.save(str(raw))
            bnstats.recompute(run, Path(sp.train_net), raw, fixed, bn_batches)
            point = {"iter": solver.iter, "lr": sp.base_lr * sp.gamma ** (solver.iter // stepsize),
                     "train_seconds": time.time() - t0}
            for label, model in (("running", raw), ("recomputed", fixed)):
                r = evaluate_model(load_net(deploy, model), data, layout)["inter_ocular"]
                point[label] = {"mean_error": r["mean_error"], "failure_rate": r["failure_rate"]["0.10"]}
            points.append(point)
            log(f"[{stage}] iter {solver.iter}: test mean error {100 * point['recomputed']['mean_error']:.2f}% "
                f"(running statistics {100 * point['running']['mean_error']:.2f}%), {point['train_seconds']:.0f} s")
    finally:
        os.chdir(cwd)
    return {"run": str(run), "stage": stage, "max_iter": max_iter, "stepsize": stepsize, "base_lr": sp.base_lr,
            "gamma": sp.gamma, "batch_size": _batch(run / sp.train_net), "bn_batches": bn_batches, "points": points}


def _batch(net_path: Path) -> int | None:
    net = text_format.Parse(Path(net_path).read_text(), caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "HDF5Data":
            return layer.hdf5_data_param.batch_size
        if layer.type == "Data":
            return layer.data_param.batch_size
    return None


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [p["iter"] for p in doc["points"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, style in (("recomputed", "-o"), ("running", "--x")):
        ax.plot(it, [100 * p[label]["mean_error"] for p in doc["points"]], style, ms=3,
                label=f"BatchNorm statistics {label}")
    ax.axhline(8, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="iteration", ylabel="test mean error (% of d)", ylim=(0, None),
           title=f"{doc['stage']}: lr {doc['base_lr']:g} x{doc['gamma']:g} every {doc['stepsize']}, "
                 f"batch {doc['batch_size']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, Path(path))
