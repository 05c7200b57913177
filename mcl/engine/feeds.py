"""The train net's data layers, read the way Caffe reads them, so both engines see the same batches.

HDF5Data (hdf5_data_layer.cpp): the list file's names in order, each file's rows
in order, wrapping around to the first file; one dataset per top, read as float.
Data over LMDB (data_layer.cpp, data_transformer.cpp): the records in key order,
wrapping around; pixels (x - mean_value) * scale in float, float_data as stored.
Shuffling is off in our nets (HDF5Data's shuffle uses std::random_shuffle, which no
seed controls), so batch k of a layer is rows k*B .. k*B+B-1 of its split, modulo
its length: a pure function of the iteration, which makes resuming exact. The rule is
mcl.method.sgd's (`batch_start`, `batch_rows`), which mcl.method.pytorch batches by too.

The whole split is held in memory, on the training device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mcl.caffe.proto import caffe_pb2
from mcl.method.sgd import batch_rows, batch_start


class FeedError(ValueError):
    """A data layer or data file the engine cannot read as Caffe would."""


class Feed:
    """The rows of one data layer's tops, cycled in order batch by batch."""

    def __init__(self, layer: str, tops: dict[str, torch.Tensor], batch_size: int, transform=None):
        lengths = {len(t) for t in tops.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise FeedError(f"data layer {layer!r}: tops of unequal or zero length {sorted(lengths)}")
        self.layer, self.tops, self.batch_size = layer, tops, batch_size
        self.rows = lengths.pop()
        self.transform = transform  # applied per batch (images stay uint8 in memory)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """The tops of batch number `index` (0-based) of this layer."""
        start = batch_start(index, self.batch_size, self.rows)
        out = {}
        for name, rows in self.tops.items():
            if start + self.batch_size <= self.rows:
                b = rows[start:start + self.batch_size]
            else:
                b = rows.index_select(0, batch_rows(index, self.batch_size, self.rows, rows.device))
            out[name] = self.transform(b) if self.transform else b
        return out


def _hdf5_feed(run: Path, layer, device) -> Feed:
    import h5py
    p = layer.hdf5_data_param
    if p.shuffle:
        raise FeedError(f"data layer {layer.name!r}: shuffle is on; Caffe's order is then unseeded "
                        "(std::random_shuffle) and cannot be matched")
    if layer.HasField("transform_param"):
        raise FeedError(f"data layer {layer.name!r}: HDF5Data does not transform data")
    listing = run / p.source
    try:
        names = listing.read_text().split()  # Caffe reads whitespace-separated names
    except OSError as exc:
        raise FeedError(f"{listing}: cannot read the HDF5 list ({exc.strerror})") from None
    if not names:
        raise FeedError(f"{listing}: lists no HDF5 file")
    parts: dict[str, list[np.ndarray]] = {top: [] for top in layer.top}
    for name in names:
        path = run / name
        try:
            with h5py.File(path, "r") as f:
                arrays = {top: np.asarray(f[top], dtype=np.float32) for top in layer.top}
        except (OSError, KeyError) as exc:
            raise FeedError(f"{path}: cannot read datasets {list(layer.top)} ({exc})") from None
        if len({len(a) for a in arrays.values()}) != 1:
            raise FeedError(f"{path}: datasets {list(layer.top)} differ in length")
        for top, a in arrays.items():
            parts[top].append(a)
    tops = {top: torch.from_numpy(np.concatenate(a)).to(device) for top, a in parts.items()}
    return Feed(layer.name, tops, p.batch_size)


def _datum_arrays(values: list[bytes], where: str):
    d = caffe_pb2.Datum()
    out, shape, uint8 = [], None, None
    for raw in values:
        d.ParseFromString(raw)
        if d.encoded:
            raise FeedError(f"{where}: encoded (compressed) Datum records are not supported")
        s = (d.channels, d.height, d.width)
        if shape is None:
            shape, uint8 = s, len(d.data) > 0
        elif s != shape:
            raise FeedError(f"{where}: records of different shapes {shape} and {s}")
        if uint8:
            out.append(np.frombuffer(d.data, dtype=np.uint8).reshape(s))
        else:
            out.append(np.asarray(d.float_data, dtype=np.float32).reshape(s))
    return np.stack(out), uint8


def _lmdb_feed(run: Path, layer, device) -> Feed:
    import lmdb

    p = layer.data_param
    if p.backend != caffe_pb2.DataParameter.LMDB:
        raise FeedError(f"data layer {layer.name!r}: only the LMDB backend is supported")
    t = layer.transform_param
    if t.crop_size or t.mirror or t.HasField("mean_file") or t.force_color or t.force_gray:
        raise FeedError(f"data layer {layer.name!r}: only mean_value and scale transforms are supported")
    if len(layer.top) != 1:
        raise FeedError(f"data layer {layer.name!r}: labels are not supported (one top only)")
    path = run / p.source
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as exc:
        raise FeedError(f"{path}: cannot open LMDB ({exc})") from None
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor()]  # key order, as Caffe's cursor walks it
    env.close()
    if not values:
        raise FeedError(f"{path}: LMDB holds no record")
    rows, uint8 = _datum_arrays(values, str(path))
    channels = rows.shape[1]
    means = list(t.mean_value)
    if means and len(means) not in (1, channels):
        raise FeedError(f"data layer {layer.name!r}: {len(means)} mean values for {channels} channels")
    mean = torch.tensor(np.float32(means if len(means) != 1 else means * channels), device=device).view(1, -1, 1, 1) \
        if means else None
    scale = np.float32(t.scale)  # float, default 1

    def transform(batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(torch.float32)
        if mean is not None:
            x = x - mean
        return x * float(scale) if scale != 1 else x

    return Feed(layer.name, {layer.top[0]: torch.from_numpy(rows).to(device)}, p.batch_size, transform)


def feeds(run: Path, net_param, device="cpu") -> list[Feed]:
    """One Feed per data layer of a train net, paths relative to the run folder."""
    out = []
    for layer in net_param.layer:
        if layer.type == "HDF5Data":
            out.append(_hdf5_feed(Path(run), layer, device))
        elif layer.type == "Data":
            out.append(_lmdb_feed(Path(run), layer, device))
        elif layer.type in ("ImageData", "WindowData", "MemoryData", "DummyData"):
            raise FeedError(f"data layer {layer.name!r} of type {layer.type} is not supported by the torch engine")
    if not out:
        raise FeedError("the train net has no HDF5Data or Data layer")
    return out


def batch(feed_list: list[Feed], index: int) -> dict[str, torch.Tensor]:
    """Every data top of iteration `index` (0-based)."""
    out = {}
    for f in feed_list:
        out.update(f.batch(index))
    return out
