"""The Caffe engine of the stage runner: pycaffe's SGDSolver behind the interface of `mcl.run.worker`.

Caffe writes its own log (glog, on the worker's stderr) and its periodic snapshots
inside `step`. Resuming: the latest complete snapshot is restored and the data
layers are moved forward by one batch per finished iteration (HDF5Data and LMDB
Data read in a fixed order with shuffle off), so an interrupted-and-resumed stage
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import caffe  # this module is the part of the runner that runs in Caffe
from google.protobuf import text_format

from mcl.caffe.caffemodel import check_fits, load
from mcl.caffe.netgen import DATA_LAYER_TYPES, loss_weights_of
from mcl.caffe.proto import caffe_pb2
from mcl.run.stage import SnapshotError, StageSpec
from mcl.records.verify import snapshot_intact


class CaffeStage:
    def __init__(self, spec: StageSpec):
        caffe.set_mode_cpu()
        self.spec = spec
        self.settings = text_format.Parse(spec.solver_path.read_text(), caffe_pb2.SolverParameter())
        net_param = text_format.Parse((spec.run / self.settings.train_net).read_text(), caffe_pb2.NetParameter())
        self.weights = loss_weights_of(net_param)
        self.n_data = sum(1 for lay in net_param.layer if lay.type in DATA_LAYER_TYPES)
        self.reset()

    def reset(self) -> None:
        self.solver = caffe.SGDSolver(str(self.spec.solver_path))

    @property
    def iter(self) -> int:
        return self.solver.iter

    def log(self, msg: str) -> None:
        print(f"mcl.run.caffe_engine] {msg}", file=sys.stderr, flush=True)

    def restore(self, state: Path) -> None:
        if not snapshot_intact(state, self.solver.net):  # cut short by a kill: Caffe would abort on it
            raise SnapshotError("cut short")
        try:
            self.solver.restore(str(state))
        except Exception as exc:
            raise SnapshotError(str(exc)) from None

    def replay(self, start: int) -> None:
        for _ in range(start):  # the batches the finished iterations consumed
            self.solver.net._forward(0, self.n_data - 1)

    def start_from(self, init: Path) -> None:
        # Caffe would abort on a shape mismatch: check first, report by name (ModelError)
        check_fits(load(init), self.solver.net, init, require_all=False)
        self.solver.net.copy_from(str(init))

    def prepare(self) -> None:
        pass

    def step(self) -> None:
        self.solver.step(1)

    @property
    def loss(self) -> float:
        return sum(w * float(self.solver.net.blobs[t].data) for t, w in self.weights.items())

    def snapshot(self) -> None:
        self.solver.snapshot()

    def save(self, path: Path) -> None:
        self.solver.net.save(str(path))
