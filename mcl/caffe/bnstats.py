"""The BatchNorm statistics step run after every training stage.

Caffe's BatchNorm keeps running sums with `moving_average_fraction` 0.999,
normalised by its scale-factor blob: close to a plain average over every
iteration so far. Over the paper's 180k iterations it ends up describing the
final weights; over a few hundred it averages in the early, random-weight phase,
and what the net computes in TEST phase is not what it learned in TRAIN phase.

The step (setting `recomputed`, the default) zeroes the three blobs of every
BatchNorm layer of the stage's final model and runs Caffe's own TRAIN-phase
forward pass of the stage's train net over its first training batches, with
every BatchNorm computing batch statistics (`use_global_stats` cleared, so a
fixed layer's statistics are recomputed too) and `moving_average_fraction` 1,
so the stored statistics are the plain mean over those batches of Caffe's batch
means and (m/(m-1)-corrected) batch variances. Nothing but the BatchNorm blobs
changes. Setting `running` keeps Caffe's raw statistics (the paper-literal
reading): the product is then the model exactly as Caffe wrote it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from mcl.caffe import caffemodel, netgen
from mcl.caffe.proto import caffe_pb2
from mcl.fileio import atomic_write

SETTINGS = ("recomputed", "running")
DEFAULT = "recomputed"
# Training batches the statistics are recomputed over (at most one pass over the split).
DEFAULT_BATCHES = 60


class StatsError(ValueError):
    """A model or net the statistics step cannot work on."""


def raw_path(product: Path) -> Path:
    """Where the model as Caffe wrote it is kept beside the stage's product."""
    product = Path(product)
    return product.with_name(product.stem + ".raw" + product.suffix)


def stats_net(train_net) -> object:
    """The stage's train net with every BatchNorm computing and accumulating batch statistics."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(train_net)
    for layer in net.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.use_global_stats = False
            layer.batch_norm_param.moving_average_fraction = 1.0
    return net


def _batch_size_and_count(run: Path, net) -> tuple[int, int]:
    """The data layer's batch size and the number of training samples it reads."""
    import h5py
    for layer in net.layer:
        if layer.type == "HDF5Data":
            listing = run / layer.hdf5_data_param.source
            if not listing.exists():
                raise StatsError(f"{listing}: list file of the training data missing")
            n = 0
            for line in listing.read_text().splitlines():
                if line.strip():
                    with h5py.File(run / line.strip(), "r") as h:
                        n += len(h["data"])
            return layer.hdf5_data_param.batch_size, n
        if layer.type == "Data":
            import lmdb
            env = lmdb.open(str(run / layer.data_param.source), readonly=True, lock=False)
            n = env.stat()["entries"]
            env.close()
            return layer.data_param.batch_size, n
    raise StatsError("the train net has no HDF5Data or Data layer to read training batches from")


def batches_for(run: Path, net, requested: int) -> int:
    """`requested` batches, at most one pass over the training split."""
    batch, n = _batch_size_and_count(run, net)
    if n == 0:
        raise StatsError(f"{run}: the training split is empty")
    return max(1, min(requested, math.ceil(n / batch)))


def bn_layers(model) -> list[str]:
    return [lay.name for lay in caffemodel._layers(model) if lay.type == "BatchNorm"]


def recompute(run: Path, train_net_path: Path, model_path: Path, out: Path, batches: int = DEFAULT_BATCHES) -> dict:
    """Write `model_path` with recomputed BatchNorm statistics to `out`; returns what was done.

    Runs pycaffe in this process with the run folder as working directory (the
    nets' data paths are relative to it).
    """
    os.environ.setdefault("GLOG_minloglevel", "2")  # Caffe's net-construction log stays out of the console
    import caffe
    run, out = Path(run).resolve(), Path(out)
    train_net_path, model_path = Path(train_net_path).resolve(), Path(model_path).resolve()
    model = caffemodel.load(model_path)
    names = bn_layers(model)
    net_param = text_format.Parse(train_net_path.read_text(), caffe_pb2.NetParameter())
    snet = stats_net(net_param)
    n_batches = batches_for(run, snet, batches)
    tmp_net = out.with_name(f".{out.stem}.bnstats.prototxt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_net.write_text(text_format.MessageToString(snet))
    caffe.set_mode_cpu()
    cwd = os.getcwd()
    try:
        os.chdir(run)
        net = caffe.Net(str(tmp_net), caffe.TRAIN)
    finally:
        os.chdir(cwd)
        tmp_net.unlink(missing_ok=True)
    caffemodel.check_fits(model, net, model_path, require_all=False)
    net.copy_from(str(model_path))
    missing = [n for n in names if n not in net.params]
    if missing:
        raise StatsError(f"{model_path}: BatchNorm layer {missing[0]!r} is not in {train_net_path}")
    for name in names:
        for blob in net.params[name]:
            blob.data[...] = 0
    for _ in range(n_batches):
        net.forward()
    fresh = {name: [np.array(b.data, dtype=np.float32) for b in net.params[name]] for name in names}
    for lay in caffemodel._layers(model):
        if lay.name in fresh:
            for blob, arr in zip(lay.blobs, fresh[lay.name]):
                caffemodel.set_blob(blob, arr)
    caffemodel.save(model, out)
    return {"bn_stats": "recomputed", "bn_batches": n_batches, "bn_layers": len(names),
            "bn_net": str(train_net_path.relative_to(run)) if train_net_path.is_relative_to(run) else str(train_net_path)}


def finish_stage(run: Path, train_net_path: Path, raw: Path, product: Path, setting: str,
                 batches: int = DEFAULT_BATCHES) -> dict:
    """The statistics step: `raw` (as Caffe wrote it) -> the stage's `product` under `setting`."""
    if setting not in SETTINGS:
        raise StatsError(f"BatchNorm statistics setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "running":
        _copy(raw, product)  # byte for byte: `running` is the model Caffe wrote
        return {"bn_stats": "running"}
    return recompute(run, train_net_path, raw, product, batches)


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, Path(src).read_bytes())


def phase_losses(run: Path, train_net_path: Path, model: Path, batches: int = 1) -> dict:
    """Eq. 4 loss of `model` on the first training batches in Caffe's TRAIN and TEST phases.

    TRAIN normalises with batch statistics, TEST with the stored ones: where the
    stored statistics describe the weights, the two are close.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    run = Path(run).resolve()
    net_param = text_format.Parse(Path(train_net_path).read_text(), caffe_pb2.NetParameter())
    weights = netgen.loss_weights_of(net_param)
    caffe.set_mode_cpu()
    out = {}
    cwd = os.getcwd()
    for phase_name, phase in (("train_phase", caffe.TRAIN), ("test_phase", caffe.TEST)):
        os.chdir(run)
        try:
            net = caffe.Net(str(Path(train_net_path).resolve()), phase)
        finally:
            os.chdir(cwd)
        net.copy_from(str(Path(model).resolve()))
        total = 0.0
        for _ in range(batches):
            net.forward()
            total += sum(w * float(net.blobs[t].data) for t, w in weights.items())
        out[phase_name] = total / batches
    return out
