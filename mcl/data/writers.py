"""Writers of the crops in the two forms Caffe reads: HDF5 (HDF5Data layer) and LMDB
(Data layer), and readers of the same files for evaluation and tests.

HDF5, per split: `<split>_000.h5`, `<split>_001.h5`, ... (each under `max_mb`) and the
list file `<split>.txt` the HDF5Data layer's `source` names. Datasets (fixed names,
the net generator relies on them):
  data      float32 (N, 1, 50, 50)  (pixel - 128) * 0.0078125           (METHOD §1)
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

from mcl.caffe.proto import caffe_pb2
from mcl.data.augment import CROP, CropSet
from mcl.data.readers import DataError
from mcl.method.layouts import PIXEL_MEAN, PIXEL_SCALE

HDF5_MAX_MB = 256
LMDB_COMMIT_EVERY = 4096


def network_input(images: np.ndarray) -> np.ndarray:
    """(N, 50, 50) uint8 -> (N, 1, 50, 50) float32, as Caffe's transform_param makes it."""
    return ((images.astype(np.float32) - PIXEL_MEAN) * np.float32(PIXEL_SCALE))[:, None]


def targets(crops: CropSet) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks (N, 2n) float32, inv_iod (N,) float32) as the loss reads them."""
    n = len(crops)
    return (crops.landmarks.reshape(n, 2 * crops.landmarks.shape[1]).astype(np.float32),
            (1.0 / crops.iod).astype(np.float32))


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


def write_random_train(run, n_points: int, rows: int, seed: int = 0) -> None:
    """Random rows in the training split's HDF5 form, `data/train.h5` listed by
    `data/train.txt` in the run folder `run` (where Caffe runs): input for the
    benchmarks, shaped as real crops and targets of n_points landmarks (d = 20 pixels)."""
    import h5py

    rng = np.random.default_rng(seed)
    data = os.path.join(run, "data")
    os.makedirs(data, exist_ok=True)
    with h5py.File(os.path.join(data, "train.h5"), "w") as f:
        f["data"] = rng.uniform(-1, 1, (rows, 1, CROP, CROP)).astype(np.float32)
        f["landmarks"] = rng.uniform(5, 45, (rows, 2 * n_points)).astype(np.float32)
        f["inv_iod"] = np.full(rows, 1 / 20, np.float32)
    with open(os.path.join(data, "train.txt"), "w", newline="\n") as f:
        f.write("data/train.h5\n")


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


# ---- checking what a tool is about to read -------------------------------------------------

# Shape of each dataset for N crops of n landmarks (see the module docstring).
_SHAPES = {"data": lambda N, n: (N, 1, CROP, CROP), "landmarks": lambda N, n: (N, 2 * n), "inv_iod": lambda N, n: (N,),
           "crop_to_image": lambda N, n: (N, 2, 3), "landmarks_image": lambda N, n: (N, n, 2),
           "iod_image": lambda N, n: (N,), "occluded": lambda N, n: (N, n)}
# Datasets whose every value must be a finite number (the pixels are not read: too many).
_FINITE = ("landmarks", "inv_iod", "crop_to_image", "landmarks_image", "iod_image")
_POSITIVE = ("inv_iod", "iod_image")


def check_hdf5(path, keys, n_points: int | None = None) -> int:
    """Raise DataError naming `path` and the dataset unless the file holds `keys`, all with
    the shapes above for one N (and n_points landmarks, where given), with finite
    landmarks, transforms and distances; return N. Caffe's HDF5Data layer aborts the
    process on a missing dataset and trains on NaN without a word, so tools check first."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        missing = [k for k in keys if k not in f]
        if missing:
            raise DataError(f"{path}: lacks dataset(s) {', '.join(missing)}")
        N = f[keys[0]].shape[0] if f[keys[0]].shape else -1
        n = n_points
        if n is None:
            n = (f["landmarks"].shape[-1] // 2 if "landmarks" in keys and f["landmarks"].ndim == 2 else
                 f["landmarks_image"].shape[1] if "landmarks_image" in keys and f["landmarks_image"].ndim == 3 else 0)
        for k in keys:
            want = _SHAPES[k](N, n) if k in _SHAPES else None
            if want is not None and f[k].shape != want:
                raise DataError(f"{path}: dataset {k!r} has shape {f[k].shape}, expected {want}"
                                + (f" ({n} landmarks)" if n else ""))
        for k in keys:
            if k in _FINITE:
                v = f[k][...]
                bad = ~np.isfinite(v) | ((v <= 0) if k in _POSITIVE else False)
                if bad.any():
                    i = int(np.flatnonzero(bad.reshape(len(v), -1).any(axis=1))[0])
                    what = "a positive finite number" if k in _POSITIVE else "finite numbers"
                    raise DataError(f"{path}: dataset {k!r}, crop {i}: not {what}")
    return N


def check_hdf5_list(list_file, keys, n_points: int | None = None, base=None) -> list[str]:
    """The files of an HDF5 list file (lines relative to `base`, default the folder Caffe
    runs in: the list file's grandparent), each checked with check_hdf5; DataError names
    the list file when it is missing or lists nothing, or the first bad file."""
    if not os.path.isfile(list_file):
        raise DataError(f"{list_file}: missing list file")
    base = base if base is not None else os.path.dirname(os.path.dirname(os.path.abspath(list_file)))
    with open(list_file) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise DataError(f"{list_file}: lists no HDF5 file: the split is empty")
    files, total = [], 0
    for lineno, rel in enumerate(lines, 1):
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing (line {lineno} of {list_file})")
        total += check_hdf5(path, keys, n_points)
        files.append(path)
    if total == 0:
        raise DataError(f"{list_file}: its files hold no crops: the split is empty")
    return files


def check_lmdb(path) -> int:
    """Entries of an LMDB; DataError naming it when missing, unreadable or empty."""
    import lmdb

    if not os.path.isdir(path):
        raise DataError(f"{path}: missing LMDB folder")
    try:
        env = lmdb.open(path, readonly=True, lock=False)
    except lmdb.Error as exc:
        raise DataError(f"{path}: not a readable LMDB ({exc})") from None
    try:
        n = env.stat()["entries"]
    finally:
        env.close()
    if n == 0:
        raise DataError(f"{path}: holds no entries: the split is empty")
    return n


def _map_size(n: int, bytes_each: int) -> int:
    """Deterministic (it is stored in the file): twice the payload, whole MiB."""
    return (2 * n * (bytes_each + 64) // (1 << 20) + 16) << 20


def write_lmdb(folder: str, split: str, crops: CropSet) -> list[str]:
    """`<split>_lmdb` (images) and `<split>_targets_lmdb`; return the files written,
    relative to `folder`. Written without a lock file (nothing else has it open), in
    key order, so equal crops give equal bytes."""
    import lmdb

    lm, inv = targets(crops)
    tg = np.concatenate([lm, inv[:, None]], axis=1)
    written = []
    for db, size_each, make in (
        (f"{split}_lmdb", CROP * CROP + 16,
         lambda i: caffe_pb2.Datum(channels=1, height=CROP, width=CROP, data=crops.images[i].tobytes())),
        (f"{split}_targets_lmdb", 4 * tg.shape[1] + 16,
         lambda i: caffe_pb2.Datum(channels=tg.shape[1], height=1, width=1, float_data=tg[i].tolist())),
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

    env = lmdb.open(path, readonly=True, lock=False)
    out = []
    try:
        with env.begin() as txn:
            for key, value in txn.cursor():
                d = caffe_pb2.Datum()
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
