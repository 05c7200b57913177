"""Learning curves: a stage trained in Caffe, scored on the test split every K iterations
with its BatchNorm statistics recomputed (mcl/caffe/bnstats.py), so each point is what the
stage's product would be at that length."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from mcl.caffe import bnstats
from mcl.caffe.forward import load_net
from mcl.caffe.proto import caffe_pb2
from mcl.caffe.runfiles import run_layout
from mcl.data.splits import load_split
from mcl.evaluation.evaluate import evaluate_model
from mcl.evaluation.report import save_figure
from mcl.method.stages import learning_rate


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
            point = {"iter": solver.iter, "lr": _rate(sp, solver.iter),
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


# ---- the curve of a stage already trained (KEEP_SNAPSHOTS=on): its kept snapshots scored -----------

LOSS_RE = re.compile(r"Iteration (\d+), loss = (\S+)")


def training_loss(log_path: Path) -> list[tuple[int, float]]:
    """(iteration, Eq. 4 loss of that iteration's batch) from a stage's log, the last run's lines winning
    where a resumed stage logged an iteration twice."""
    seen: dict[int, float] = {}
    if Path(log_path).exists():
        for m in LOSS_RE.finditer(Path(log_path).read_text(errors="replace")):
            try:
                seen[int(m.group(1))] = float(m.group(2))
            except ValueError:
                continue
    return sorted(seen.items())


def smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """Mean of each run of `window` logged losses (a batch's loss is noisy), at the run's last iteration."""
    out = []
    for k in range(0, len(points) - window + 1, window):
        chunk = points[k:k + window]
        out.append((chunk[-1][0], float(np.mean([v for _, v in chunk]))))
    return out


def snapshot_curve(run: Path, name: str, split: str = "val", bn_batches: int = 20, log=print) -> dict:
    """The learning curve of a trained stage `name`: every model kept in snapshots/<name>_curve/
    (tools/run_stage.py --keep-snapshots) scored on `split` with its BatchNorm statistics recomputed
    over `bn_batches` training batches, as the stage's product would have them at that length.
    Scored on the validation split (settings are chosen there, never on a test set)."""
    from mcl.caffe.runfiles import curve_dir

    run = Path(run).resolve()
    folder = curve_dir(run, name)
    models = sorted(((int(m.group(1)), p) for p in folder.glob("*.caffemodel")
                     if (m := re.search(r"_iter_(\d+)\.caffemodel$", p.name))), key=lambda t: t[0])
    if not models:
        raise ValueError(f"{folder}: no kept snapshots (train the stage with --keep-snapshots, "
                         "KEEP_SNAPSHOTS=on)")
    sp = text_format.Parse((run / "solvers" / f"{name}_solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    layout = run_layout(run)
    data = load_split(run, split)
    deploy = run / "nets" / "deploy.prototxt"
    train_net = run / sp.train_net
    points = []
    with tempfile.TemporaryDirectory(prefix="mcl-curve-") as tmp:
        for it, model in models:
            fixed = Path(tmp) / "fixed.caffemodel"
            bnstats.recompute(run, train_net, model, fixed, bn_batches)
            r = evaluate_model(load_net(deploy, fixed), data, layout)["inter_ocular"]
            points.append({"iter": it, "lr": _rate(sp, it), "mean_error": r["mean_error"],
                           "failure_rate": r["failure_rate"]["0.10"]})
            log(f"[{name}] iter {it}: {split} mean error {100 * r['mean_error']:.2f}%")
    loss = training_loss(run / "logs" / f"{name}.log")
    return {"run": str(run), "stage": name, "split": split, "faces": int(len(data["data"])),
            "max_iter": sp.max_iter, "stepsize": sp.stepsize, "base_lr": sp.base_lr, "gamma": sp.gamma,
            "batch_size": _batch(train_net), "bn_batches": bn_batches, "points": points,
            "training_loss": smooth(loss, max(1, len(loss) // 50))}


def _rate(sp, it: int) -> float:
    """The solver's learning rate at iteration `it` (METHOD §5.2; our solvers are "step" or "fixed")."""
    return learning_rate(it, sp.base_lr, sp.stepsize, sp.gamma, "step" if sp.lr_policy == "step" else "fixed")


def plot_snapshot_curves(docs: dict[str, dict], path: Path, title: str = "learning curves") -> None:
    """Validation error of each curve (left) and its training loss (right), one colour per curve,
    the learning-rate steps marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for k, (label, doc) in enumerate(docs.items()):
        colour = f"C{k}"
        it = [p["iter"] for p in doc["points"]]
        ax.plot(it, [100 * p["mean_error"] for p in doc["points"]], "-o", ms=3, color=colour, label=label)
        if doc.get("training_loss"):
            li, lv = zip(*doc["training_loss"])
            bx.plot(li, lv, "-", lw=1, color=colour, label=label)
        if doc.get("stepsize"):
            for s in range(doc["stepsize"], doc["max_iter"], doc["stepsize"]):
                for a in (ax, bx):
                    a.axvline(s, color=colour, lw=0.6, ls=":")
    ax.set(xlabel="iteration", ylabel=f"{next(iter(docs.values()))['split']} mean error (% of d)",
           title=title)
    bx.set(xlabel="iteration", ylabel="training loss (Eq. 4, batch mean)", yscale="log",
           title="training loss (dotted: learning-rate steps)")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, Path(path))
