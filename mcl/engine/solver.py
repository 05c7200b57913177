"""A run's own solver and train net, trained in PyTorch with Caffe's numerics.

`Solver` is the torch counterpart of pycaffe's SGDSolver: it reads the solver
prototxt and the train net it names (mcl.torchnet builds the net from the
NetParameter, so there is no second description of the nets), feeds the net's
data layers as Caffe does (feeds.py), and updates as sgd_solver.cpp does (sgd.py: the one
update of mcl.method.sgd, with the solver file's settings).

Speed (`fast`, the default): each BatchNorm -> Scale -> ReLU chain runs as one fused
kernel, and each Eq. 4 group of sliced EuclideanLoss layers as one difference and one
reduction (fused.py); and where the shared layers are fixed (the heads), their
outputs are computed once per training row (fixed.py). That changes only where float32
results are rounded, never what is computed: tests/test_engine.py holds the engine to
Caffe with all of it on.
Maps (`maps`): in fp32 on a CPU the weights, so every map, are channels-last, and the
BatchNorm-Scale-ReLU chains and the poolings run the engine's own kernels (clkernels.py,
csrc/clkernels.c): oneDNN's convolutions need no reorder then. PyTorch's own channels-last
BatchNorm sums in float32 in one pass, and its gradients lose digits where they cancel
(docs/ENGINE.md); the engine's kernels sum in double (tests/test_clkernels.py).
MCL_FP32_MAPS=nchw keeps NCHW maps with the same kernels (docs/ENGINE.md, "Channels-last kernels",
compares the two); bf16 uses the kernels too, which read its bfloat16 maps as they are (the same
figures as on their float32 cast, clkernels.py). Where the kernels cannot be built (no C compiler)
the maps are NCHW with PyTorch's kernels, as before. The process keeps its freed memory (device.keep_heap): no page faults per step.

Precision (`precision`): "fp32" (the default, Caffe's numerics) or "bf16", opt-in where the
device has bfloat16 (device.check_precision, else PrecisionError): the forward pass of each step
runs under torch.autocast with bfloat16, so convolutions and matrix products compute in bfloat16,
while the parameters (the master weights), their gradients, the SGD update and its history stay
float32 tensors; BatchNorm casts its input back to float32, so the batch statistics and the
running-statistics blobs are float32 sums, and the Eq. 4 losses are float32. The snapshots are
the same float32 Caffe files. On a CPU the bf16 maps are channels-last (the weights are, so every
convolution's output is): oneDNN's bfloat16 kernels need no reorder then, and a 68-point stage-1
step took 155 ms against 197 ms in NCHW (fp32: 308 ms), side by side on a 2-core Intel Xeon with
AMX. Its BatchNorm then sums in one pass, which bf16 can afford: measured against float64 on one
stage-1 step, the convolutions' weight gradients were off by a median 0.35 of their norm in bf16
NCHW and 0.35 channels-last (fp32 NCHW: 1.2e-3), bfloat16's own rounding dominating.

Snapshots are Caffe's own files: `<prefix>_iter_<N>.caffemodel` (a NetParameter
with the blobs) and `<prefix>_iter_<N>.solverstate` (a SolverState with one
history blob per learnable blob, in Caffe's order), so the next stage, the
assembly and the evaluation read them unchanged, and Caffe can resume from them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from mcl import torchnet
from mcl.caffe import caffemodel
from mcl.caffe.proto import caffe_pb2
from mcl.engine import clkernels
from mcl.engine import feeds as feeding
from mcl.engine import fixed as fixed_cache
from mcl.engine.device import check_precision, configure_device
from mcl.engine.fillers import caffe_initial_blobs
from mcl.engine.fused import FusedNet
from mcl.engine.sgd import Blob, CaffeSGD, Settings
from mcl.fileio import atomic_write


FP32_MAPS = "MCL_FP32_MAPS"  # "nchw": fp32 maps NCHW (with the engine's kernels), else channels-last


class Solver:
    """SGD over one train net, iteration by iteration, as Caffe's SGDSolver::Step(1)."""

    def __init__(self, run, solver_path, device: str = "cpu", tf32: bool = False, fillers: str = "auto",
                 fast: bool = True, deterministic: bool = True, precision: str = "fp32"):
        self.device = torch.device(device)
        self.precision = check_precision(precision, self.device)  # PrecisionError before anything is built
        self.run = Path(run).resolve()
        self.solver_path = Path(solver_path)
        if not self.solver_path.is_absolute():
            self.solver_path = self.run / self.solver_path
        sp = text_format.Parse(self.solver_path.read_text(), caffe_pb2.SolverParameter())
        self.settings = Settings.from_proto(sp, str(self.solver_path))
        net_path = self.run / self.settings.train_net
        self.net_param = text_format.Parse(net_path.read_text(), caffe_pb2.NetParameter())
        configure_device(self.device, tf32, deterministic)  # before the first CUDA operation
        self.feeds = feeding.feeds(self.run, self.net_param, self.device)
        shapes = {top: tuple(t.shape) for top, t in feeding.batch(self.feeds, 0).items()}
        # torchnet draws the fillers' distributions from torch's generator: the weights when pycaffe is missing.
        self.net = torchnet.from_netparameter(self.net_param, "TRAIN", input_shapes=shapes,
                                              seed=max(self.settings.random_seed, 0)).to(self.device)
        if self.precision == "bf16" and self.device.type == "cpu":
            # oneDNN's bfloat16 convolutions (AMX) work on channels-last maps: with the weights channels-last
            # every convolution's output is, and no map is reordered (module docstring). Loading blobs copies
            # into these tensors, so they stay so.
            self.net.to(memory_format=torch.channels_last)
        self.init_source = self._initialise(fillers)
        self.loss_tops = list(self.net.loss_weights)
        self.loss_weights = [float(self.net.loss_weights[t]) for t in self.loss_tops]
        self._w = torch.tensor(self.loss_weights, dtype=torch.float32, device=self.device)
        self.sgd = CaffeSGD(self.settings, self._blobs())
        # Speed (module docstring): fused BatchNorm-Scale-ReLU kernels and Eq. 4 groups.
        self.fast = fast
        self.fused = FusedNet(self.net, fuse=fast)
        # fp32 on a CPU: channels-last maps with the engine's own BatchNorm-Scale-ReLU and pooling kernels
        # (clkernels.py), where they build; else NCHW maps and PyTorch's kernels (`maps` says which).
        self.maps = "channels-last" if self.precision == "bf16" and self.device.type == "cpu" else "NCHW"
        if fast and self.device.type == "cpu" and clkernels.load() is not None:
            self.fused.kernels = True
            self.maps = "NCHW, mcl kernels"
            if self.precision == "bf16" or os.environ.get(FP32_MAPS, "channels-last") != "nchw":
                self.net.to(memory_format=torch.channels_last)
                self.maps = "channels-last, mcl kernels"
        self.fixed_prefix = None
        if fast:
            self.fixed_prefix = fixed_cache.plan(self.net, self.feeds)
            if self.fixed_prefix is not None:
                self.fused.skip = frozenset(self.fixed_prefix.skip)
        self.iter = 0
        self.last_losses: torch.Tensor | None = None
        self.last_rate = self.settings.rate(0)

    # ---- weights ----------------------------------------------------------------------

    def _blobs(self) -> list[Blob]:
        out = []
        for layer, idx, tensor, lr, decay in self.net.blob_params():
            tensor.requires_grad_(lr != 0)  # Caffe computes no diff for lr_mult 0 (net.cpp)
            out.append(Blob(layer, idx, tensor, np.float32(lr), np.float32(decay)))
        return out

    def _rebind(self) -> None:
        """After blobs were loaded: the solver updates the net's current tensors."""
        fresh = self._blobs()
        if [(b.layer, b.index) for b in fresh] != [(b.layer, b.index) for b in self.sgd.blobs]:
            raise RuntimeError("the net's learnable blobs changed while loading weights")
        self.sgd.blobs = fresh

    def _initialise(self, fillers: str) -> str:
        """Caffe's own iteration-0 weights ("caffe"; "auto" where pycaffe imports), else torchnet's ("torch")."""
        if fillers not in ("auto", "caffe", "torch"):
            raise ValueError(f"fillers must be auto, caffe or torch, got {fillers!r}")
        if fillers != "torch":  # Caffe's solver aborts when its snapshot folder cannot be written
            (self.run / self.settings.snapshot_prefix).parent.mkdir(parents=True, exist_ok=True)
        blobs = caffe_initial_blobs(self.run, self.solver_path) if fillers != "torch" else None
        if blobs is None:
            if fillers == "caffe":
                raise RuntimeError("pycaffe is not importable: cannot draw Caffe's own initial weights")
            return "torch"
        self.net.load_caffe_blobs(blobs, strict=True)
        return "caffe"

    def blobs(self) -> dict[str, list[np.ndarray]]:
        """Every blob of the net by layer name (BatchNorm statistics included), as Caffe stores them."""
        return self.net.caffe_blobs()

    def copy_from(self, path) -> None:
        """Caffe's Net::CopyTrainedLayersFrom: blobs by layer name; layers not in the net are ignored.

        Raises caffemodel.ModelError naming the layer whose blobs do not fit (Caffe would abort).
        """
        have = caffemodel.blobs(caffemodel.load(path))
        mine = self.net.caffe_blobs()
        take = {}
        for name, arrays in have.items():
            if name not in mine:
                continue
            want = [a.shape for a in mine[name]]
            if len(want) != len(arrays) or any(a.size != int(np.prod(w)) for a, w in zip(arrays, want)):
                raise caffemodel.ModelError(
                    f"{path}: does not fit the net: layer {name!r} holds blobs {[a.shape for a in arrays]}, "
                    f"the net needs {want} (a model of another layout or net?)")
            take[name] = [a.reshape(w) for a, w in zip(arrays, want)]
        self.net.load_caffe_blobs(take, strict=False)
        self._rebind()

    def model_param(self):
        """The net as Caffe's Net::ToProto writes it: the train net's layers with their blobs."""
        out = caffe_pb2.NetParameter()
        out.name = self.net_param.name
        blobs = self.net.caffe_blobs()
        for layer in self.net_param.layer:
            lay = out.layer.add()
            lay.CopyFrom(layer)
            lay.phase = caffe_pb2.TRAIN
            for a in blobs.get(layer.name, []):
                caffemodel.set_blob(lay.blobs.add(), a)
        return out

    def save(self, path) -> None:
        caffemodel.save(self.model_param(), path)

    # ---- training ---------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: forward and backward on the iteration's batches, then Caffe's update."""
        inputs = feeding.batch(self.feeds, self.iter)
        if self.fixed_prefix is not None:
            inputs.update(self.fixed_prefix.batch(self.iter))
        with self._autocast():
            out = self.fused(inputs)
        losses = self.fused.loss_vector(out, self.loss_tops)
        if losses.dtype != torch.float32:  # (bf16: the fused groups and BatchNorm already give float32)
            losses = losses.float()
        (losses * self._w).sum().backward()
        self.last_rate = self.sgd.apply_update(self.iter)
        self.last_losses = losses.detach()
        self.iter += 1

    def _autocast(self):
        """The forward's precision: bf16 runs it under autocast (module docstring); fp32 changes nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def loss(self) -> float:
        """The last iteration's loss as the Caffe runner reports it: sum of loss_weight * loss blob."""
        if self.last_losses is None:
            raise RuntimeError("no iteration has run yet")
        return sum(w * v for w, v in zip(self.loss_weights, self.last_losses.tolist()))

    # ---- snapshots ----------------------------------------------------------------------

    def snapshot_paths(self, it: int | None = None) -> tuple[str, Path, Path]:
        it = self.iter if it is None else it
        rel = f"{self.settings.snapshot_prefix}_iter_{it}"
        return f"{rel}.caffemodel", self.run / f"{rel}.caffemodel", self.run / f"{rel}.solverstate"

    def _caffe_order(self) -> list[tuple[str, int, tuple]]:
        """Caffe's learnable_params order: layers in net order, their blobs in order (BatchNorm's too)."""
        blobs = self.net.caffe_blobs()
        return [(layer.name, i, a.shape) for layer in self.net_param.layer
                for i, a in enumerate(blobs.get(layer.name, []))]

    def snapshot(self) -> Path:
        """Solver::Snapshot: the model, then the solver state naming it."""
        rel_model, model, state_path = self.snapshot_paths()
        self.save(model)
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = rel_model
        state.current_step = self.settings.current_step(max(0, self.iter - 1))
        hist = {(b.layer, b.index): h for b, h in zip(self.sgd.blobs, self.sgd.history)}
        for layer, i, shape in self._caffe_order():
            h = hist.get((layer, i))
            caffemodel.set_blob(state.history.add(),
                                np.zeros(shape, np.float32) if h is None else h.detach().cpu().numpy().reshape(shape))
        atomic_write(state_path, state.SerializeToString())
        return state_path

    def restore(self, state_path) -> None:
        """SGDSolver::RestoreSolverState: a snapshot of either engine, in either of Caffe's formats
        (binary proto `.solverstate`, or HDF5 `.solverstate.h5` with its `.caffemodel.h5`)."""
        state_path = Path(state_path)
        it, learned_net, history = read_state(state_path)
        order = self._caffe_order()
        if len(history) != len(order):
            raise caffemodel.ModelError(f"{state_path}: {len(history)} history blobs, the net has {len(order)}")
        model = self.run / learned_net if learned_net else None
        if model is None or not model.exists():
            model = Path(str(state_path).replace(".solverstate", ".caffemodel"))
        self.net.load_caffe_blobs(read_model(model), strict=True)
        self._rebind()
        index = {(layer, i): k for k, (layer, i, _) in enumerate(order)}
        for b, h in zip(self.sgd.blobs, self.sgd.history):
            saved = history[index[(b.layer, b.index)]]
            h.copy_(torch.from_numpy(np.asarray(saved, np.float32).reshape(h.shape)))
        self.iter = int(it)
        self.last_losses = None


def read_state(path: Path) -> tuple[int, str, list[np.ndarray]]:
    """(iteration, learned_net, history blobs) of a solverstate, binary or HDF5 as Caffe writes them."""
    if path.name.endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            learned = f["learned_net"][()] if "learned_net" in f else b""
            n = len(f["history"])
            return (int(np.asarray(f["iter"]).ravel()[0]), learned.decode() if isinstance(learned, bytes) else str(learned),
                    [np.asarray(f["history"][str(i)]) for i in range(n)])
    state = caffe_pb2.SolverState()
    state.ParseFromString(path.read_bytes())
    return state.iter, state.learned_net, [caffemodel.blob_array(h) for h in state.history]


def read_model(path: Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> blobs of a snapshot's caffemodel, binary or HDF5."""
    if path.name.endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            return {name: [np.asarray(g[str(i)], np.float32) for i in range(len(g))] for name, g in f["data"].items()
                    if len(g)}
    return caffemodel.blobs(caffemodel.load(path))
