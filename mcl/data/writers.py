"""Writers of the crops in the two forms Caffe reads: HDF5 (HDF5Data layer) and LMDB
(Data layer), and readers of the same files for evaluation and tests.

HDF5, per split: `<split>_000.h5`, `<split>_001.h5`, ... (each under `max_mb`) and the
list file `<split>.txt` the HDF5Data layer's `source` names. Datasets (fixed names,
the net generator relies on them):
  data      float32 (N, 1, 50, 50)  (pixel - 128) * 0.0078125           (SPEC 1)
  landmarks float32 (N, 2n)         crop pixels, x1 y1 x2 y2 ...
  inv_iod   float32 (N,)            1 / d in the crop (1-D: a Scale layer, axis 0)
and, ignored by Caffe, for evaluation in original-image coordinates:
  crop_to_image float64 (N, 2, 3), landmarks_image float64 (N, n, 2),
  iod_image float64 (N,), occluded uint8 (N, n), sample_id (UTF-8 strings).

LMDB, per split: `<split>_lmdb`, uint8 Datum (1 x 50 x 50, raw bytes), for a Data layer
with transform_param { mean_value: 128 scale: 0.0078125 }; `<split>_targets_lmdb`,
Datum float_data = the 2n landmarks then inv_iod (channels 2n+1, height 1, width 1);
keys 00000000, 00000001, ... in the same order in both.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mcl.data.augment import CROP, CropSet
from mcl.data.readers import DataError

from mcl.layouts import PIXEL_MEAN, PIXEL_SCALE
HDF5_MAX_MB = 256
LMDB_COMMIT_EVERY = 4096


def network_input(images: np.ndarray) -> np.ndarray:
    """(N, 50, 50) uint8 -> (N, 1, 50, 50) float32, as Caffe's transform_param makes it."""
    return ((images.astype(np.float32) - PIXEL_MEAN) * np.float32(PIXEL_SCALE))[:, None]


def targets(crops: CropSet) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks (N, 2n) float32, inv_iod (N,) float32) as the loss reads them."""
    n = len(crops)
    return crops.landmarks.reshape(n, -1).astype(np.float32), (1.0 / crops.iod).astype(np.float32)


def write_hdf5(folder: str, split: str, crops: CropSet, list_prefix: str, max_mb: float = HDF5_MAX_MB) -> list[str]:
    """Write `<split>_NNN.h5` files and `<split>.txt`; return the names written.
    Lines of the list file are `list_prefix/<split>_NNN.h5`, relative to the folder
    Caffe runs in. An empty split gets an empty list file and no .h5."""
    import h5py

    n = len(crops)
    n_pts = crops.landmarks.shape[1]
    per_sample = 4 * CROP * CROP + 4 * (2 * n_pts + 1) + 8 * (6 + 2 * n_pts + 1) + n_pts + 64
    per_file = max(1, int(max_mb * 1e6 // per_sample))
    lm, inv = targets(crops)
    names = []
    for k, start in enumerate(range(0, n, per_file)):
        sl = slice(start, min(n, start + per_file))
        name = f"{split}_{k:03d}.h5"
        with h5py.File(os.path.join(folder, name), "w") as f:
            f.create_dataset("data", data=network_input(crops.images[sl]))
            f.create_dataset("landmarks", data=lm[sl])
            f.create_dataset("inv_iod", data=inv[sl])
            f.create_dataset("crop_to_image", data=crops.crop_to_image[sl].astype(np.float64))
            f.create_dataset("landmarks_image", data=crops.landmarks_image[sl].astype(np.float64))
            f.create_dataset("iod_image", data=crops.iod_image[sl].astype(np.float64))
            f.create_dataset("occluded", data=crops.occluded[sl].astype(np.uint8))
            f.create_dataset("sample_id", data=np.array(crops.sample_id[sl], dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        names.append(name)
    list_name = f"{split}.txt"
    with open(os.path.join(folder, list_name), "w", newline="\n") as f:
        f.writelines(f"{list_prefix}/{name}\n" if list_prefix else f"{name}\n" for name in names)
    return names + [list_name]


def read_hdf5_list(list_file: str, base: str | None = None) -> dict[str, np.ndarray]:
    """All datasets of a split, concatenated over its list file. Relative lines are
    taken from `base` (default: the folder that holds the list file's folder, where
    Caffe runs)."""
    import h5py

    base = base if base is not None else os.path.dirname(os.path.dirname(os.path.abspath(list_file)))
    with open(list_file) as f:
        files = [ln.strip() for ln in f if ln.strip()]
    parts: dict[str, list] = {}
    for rel in files:
        with h5py.File(rel if os.path.isabs(rel) else os.path.join(base, rel), "r") as h:
            for key in h:
                val = h[key][()]
                if key == "sample_id":
                    val = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in val], dtype=object)
                parts.setdefault(key, []).append(val)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _caffe_pb2():
    try:
        from mcl.caffe_pb import caffe_pb2
    except ImportError as exc:
        raise DataError(f"LMDB output needs Caffe's caffe_pb2 ({exc}); run `make setup`, "
                        f"or write HDF5 only (--formats hdf5)") from None
    return caffe_pb2


def _map_size(n: int, bytes_each: int) -> int:
    """Deterministic (it is stored in the file): twice the payload, whole MiB."""
    return (2 * n * (bytes_each + 64) // (1 << 20) + 16) << 20


def write_lmdb(folder: str, split: str, crops: CropSet) -> list[str]:
    """`<split>_lmdb` (images) and `<split>_targets_lmdb`; return the files written,
    relative to `folder`. Written without a lock file (nothing else has it open), in
    key order, so equal crops give equal bytes."""
    import lmdb

    pb2 = _caffe_pb2()
    lm, inv = targets(crops)
    tg = np.concatenate([lm, inv[:, None]], axis=1)
    written = []
    for db, size_each, make in (
        (f"{split}_lmdb", CROP * CROP + 16,
         lambda i: pb2.Datum(channels=1, height=CROP, width=CROP, data=crops.images[i].tobytes())),
        (f"{split}_targets_lmdb", 4 * tg.shape[1] + 16,
         lambda i: pb2.Datum(channels=tg.shape[1], height=1, width=1, float_data=tg[i].tolist())),
    ):
        path = os.path.join(folder, db)
        env = lmdb.open(path, map_size=_map_size(len(crops), size_each), subdir=True, lock=False)
        try:
            for start in range(0, len(crops), LMDB_COMMIT_EVERY):
                with env.begin(write=True) as txn:
                    for i in range(start, min(len(crops), start + LMDB_COMMIT_EVERY)):
                        txn.put(f"{i:08d}".encode("ascii"), make(i).SerializeToString(), append=True)
        finally:
            env.close()
        written += [f"{db}/{name}" for name in sorted(os.listdir(path))]
    return written


def read_lmdb(path: str) -> list[tuple[str, object]]:
    """(key, Datum) pairs of an LMDB in key order."""
    import lmdb

    pb2 = _caffe_pb2()
    env = lmdb.open(path, readonly=True, lock=False)
    out = []
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                d = pb2.Datum()
                d.ParseFromString(value)
                out.append((key.decode("ascii"), d))
    finally:
        env.close()
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
