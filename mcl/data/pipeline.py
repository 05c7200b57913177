"""`prepare`: the whole data job behind data_prep/prepare.py.

read the dataset (synth: generate it first, in the 300-W layout)
  -> hold out the validation faces from the training faces (before augmentation, METHOD §6)
  -> training faces: five-step augmentation; val and test faces: box crops
  -> shuffle the training crops (Caffe's Data layer reads an LMDB in key order)
  -> HDF5 + list files, LMDB pairs, contact sheet, manifest.json with checksums.

Everything is written into a hidden folder `.<name>.partial-<pid>-XXXX` beside `--out`
and renamed to `--out` only once complete, so an interrupted run never leaves a folder
that looks finished (a killed run's partial folder is removed by the next run).
Output bytes depend on the seed and settings, never on the number of worker
processes (so the worker count is not recorded in the manifest).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from mcl import __version__
from mcl.data import synth
from mcl.data.augment import (
    DEFAULT_TEST_CROP,
    TEST_CROPS,
    AugmentSettings,
    CropJob,
    CropSet,
    crop_samples,
    effective_crop_scale,
    train_crop_ratio,
)
from mcl.data.readers import (
    DATASETS,
    MTFL_BOX_SCALE,
    OUTSIDE_TOLERANCE,
    READERS,
    W300_SPLITS,
    W300_TIGHT_BOX,
    DataError,
    Sample,
    load_image,
    read_300w,
    read_dataset,
    read_generic,
    read_mtfl,
)
from mcl.data.sheet import contact_sheet, draw_face
from mcl.data.writers import HDF5_MAX_MB, PIXEL_MEAN, PIXEL_SCALE, sha256_file, write_hdf5, write_lmdb
from mcl.fileio import DiskFullError, disk_full, fsync_dir, fsync_tree
from mcl.method.datasets import get_dataset
from mcl.method.layouts import get_layout

VAL_STREAM = 3  # seed-sequence streams: 1 augmentation, 2 synthetic faces
SHUFFLE_STREAM = 4
MANIFEST = "manifest.json"
SHEET = "contact_sheet.png"
SYNTH_RAW = "synth_raw"
FORMATS = ("hdf5", "lmdb")

# [interp] Side of the square crop = crop_scale x the larger side of the dataset's box (METHOD §12.11);
# each dataset's default is the dataset table's (mcl/method/datasets.py).
DEFAULT_CROP_SCALE = {name: get_dataset(name).crop_scale for name in DATASETS}

INTERPRETATIONS = [
    "augmentation angles, extents, shift, flip probability, JPEG qualities and copies per face (METHOD §6) are our "
    "defaults: see settings.augment",
    "validation faces (val_fraction of the training faces) are drawn by seed before augmentation",
    "crop side = crop_scale x the larger side of the dataset box; training crops scale the tight landmark box by "
    "train_crop_ratio (the median box-crop / tight-box ratio of the training faces) x extent, so training and test "
    "crops frame faces alike",
    "landmarks more than outside_tolerance x box side outside the picture make a sample bad",
    "test_crop names the protocol of the val/test box crops: `ours` (crop_scale, edges repeated) or `authors` "
    "(the authors' release: side 1.1 x the larger box side, scale 49/side, gray outside); training crops frame "
    "faces to match it",
]


@dataclass
class PrepareSettings:
    dataset: str
    out: str
    data_root: str | None = None
    layout: str | None = None  # default: the dataset's own (mcl/method/datasets.py)
    seed: int = 0
    workers: int = 2  # as `make data` (WORKERS) and the tool default
    test_split: str = "challenging"  # 300-W: common | challenging | full
    val_fraction: float = 0.1
    skip_bad: bool = False
    formats: tuple[str, ...] = FORMATS
    force: bool = False
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    crop_scale: float | None = None  # default: the dataset's (DEFAULT_CROP_SCALE)
    test_crop: str = DEFAULT_TEST_CROP  # val/test crop protocol: ours | authors (METHOD §1)
    tolerance: float = OUTSIDE_TOLERANCE
    coords_base: int = 1  # generic format: 1 (MATLAB style) or 0
    n_train: int = 600  # synthetic set only
    n_test: int = 100
    synth: synth.SynthSettings = field(default_factory=synth.SynthSettings)
    h5_max_mb: float = HDF5_MAX_MB
    progress: bool = True


def _reader(dataset: str):
    """The reader of mcl.data.readers that the dataset table names for `dataset`."""
    return READERS[get_dataset(dataset).reader]


def _check(st: PrepareSettings) -> None:
    if st.dataset not in DATASETS:
        raise DataError(f"unknown dataset {st.dataset!r}: choose one of {', '.join(DATASETS)}")
    if st.dataset != "synth" and not st.data_root:
        raise DataError(f"--data-root is needed for dataset {st.dataset}")
    if not 0 <= st.val_fraction < 1:
        raise DataError(f"--val-fraction must lie in [0, 1), not {st.val_fraction}")
    bad = [f for f in st.formats if f not in FORMATS]
    if bad or not st.formats:
        raise DataError(f"unknown output format(s) {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
    if _reader(st.dataset) is read_300w and (st.test_split not in W300_SPLITS or st.test_split == "train"):
        raise DataError(f"--test-split must be common, challenging or full, not {st.test_split!r}")
    if st.dataset == "synth" and st.test_split != "challenging":
        raise DataError("the synthetic set writes its test faces as the challenging (ibug) subset only: "
                        "use --test-split challenging")
    if st.workers < 1:
        raise DataError("--workers must be at least 1")
    if st.test_crop not in TEST_CROPS:
        raise DataError(f"--test-crop must be one of {', '.join(TEST_CROPS)}, not {st.test_crop!r}")


def _bar(st: PrepareSettings, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="face", disable=not st.progress, dynamic_ncols=True)


def _synth_source(st: PrepareSettings, tmp: str) -> tuple[str, str]:
    """(folder to read, how the manifest names it). Generates unless a matching set exists."""
    want = json.loads(json.dumps(synth.stamp_of(st.n_train, st.n_test, st.seed, st.synth)))  # as stored
    root = os.path.abspath(st.data_root) if st.data_root else os.path.join(tmp, SYNTH_RAW)
    stamp_path = os.path.join(root, synth.STAMP)
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            have = json.load(f)
        if have != want:
            raise DataError(f"{stamp_path}: holds a synthetic set made with other settings; "
                            f"choose another --data-root or remove that folder")
    else:
        with _bar(st, st.n_train + st.n_test, "synthetic faces") as bar:
            synth.write_synth_300w(root, st.n_train, st.n_test, st.seed, st.workers, st.synth, bar)
    return root, (root if st.data_root else SYNTH_RAW)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), both ascending: Omega_v held out before augmentation."""
    n_val = int(round(fraction * n))
    if fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(np.random.SeedSequence([seed, VAL_STREAM])).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _sheet(path: str, samples: list[Sample], train: CropSet, test: CropSet, layout) -> None:
    rows = []
    raw = []
    for s in samples[:8]:
        try:
            raw.append(draw_face(load_image(s), s.landmarks, layout, s.occluded, s.box))
        except DataError:
            continue
    rows.append(("source pictures: dataset box, landmarks by cluster, x = occluded", raw))
    for title, crops, k in (("training crops (augmented, 50x50)", train, 16), ("test crops (dataset box)", test, 8)):
        rows.append((title, [draw_face(crops.images[i], crops.landmarks[i], layout, crops.occluded[i])
                             for i in range(min(k, len(crops)))]))
    cv2.imwrite(path, contact_sheet(rows), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _prepare_into(tmp: str, st: PrepareSettings, list_prefix: str) -> dict:
    layout = get_layout(st.layout or get_dataset(st.dataset).layout)
    crop_scale = st.crop_scale if st.crop_scale is not None else DEFAULT_CROP_SCALE[st.dataset]
    reader = _reader(st.dataset)
    if st.dataset == "synth":
        root, root_name = _synth_source(st, tmp)
    else:
        root = root_name = os.path.abspath(st.data_root)
    train_res, test_res = read_dataset(st.dataset, root, layout.name, st.test_split, st.skip_bad, st.coords_base)
    skipped = [{"split": "train", **s} for s in train_res.skipped] + [{"split": "test", **s} for s in test_res.skipped]
    found = {split: res.source for split, res in (("train", train_res), ("test", test_res)) if res.source}
    derived = sorted({sub for r in found.values() for sub, src in r.get("box_source", {}).items()
                      if src == W300_TIGHT_BOX})
    if derived:  # said on the terminal, and recorded in the manifest's source.reader
        print(f"prepare: {root}: no official 300-W box file for {', '.join(derived)}: each face's box is "
              f"{W300_TIGHT_BOX} (recorded in manifest.json, source.reader)", file=sys.stderr)
    faces = train_res.samples
    if not faces:
        raise DataError(f"{root}: no usable training faces")
    train_idx, val_idx = split_validation(len(faces), st.val_fraction, st.seed)
    ratio = train_crop_ratio([faces[i] for i in train_idx], effective_crop_scale(crop_scale, st.test_crop))
    base = dict(layout=layout, seed=st.seed, crop_scale=crop_scale, skip_bad=st.skip_bad, tolerance=st.tolerance,
                test_crop=st.test_crop)
    jobs = {
        "train": (CropJob(augment=st.augment, ratio=ratio, **base), [(int(i), faces[i]) for i in train_idx]),
        "val": (CropJob(augment=None, **base), [(int(i), faces[i]) for i in val_idx]),
        "test": (CropJob(augment=None, **base), list(enumerate(test_res.samples))),
    }
    crops: dict[str, CropSet] = {}
    n_faces: dict[str, int] = {}
    for split, (job, indexed) in jobs.items():
        with _bar(st, len(indexed), f"{split} crops") as bar:
            crops[split], bad = crop_samples(indexed, job, st.workers, bar)
        skipped += [{"split": split, **s} for s in bad]
        n_faces[split] = len(indexed) - len(bad)
    for split in ("train", "test"):  # every face of the split skipped (--skip-bad)
        if not len(crops[split]):
            first = next((s["reason"] for s in skipped if s["split"] == split), "none was read")
            raise DataError(f"{root}: no usable {split} faces; the first skipped: {first}")
    order = np.random.default_rng(np.random.SeedSequence([st.seed, SHUFFLE_STREAM])).permutation(len(crops["train"]))
    crops["train"] = crops["train"].take(order)

    for split, cs in crops.items():
        if "hdf5" in st.formats:
            write_hdf5(tmp, split, cs, list_prefix, st.h5_max_mb)
        if "lmdb" in st.formats:
            write_lmdb(tmp, split, cs)
    _sheet(os.path.join(tmp, SHEET), faces, crops["train"], crops["test"], layout)

    settings = {
        "layout": layout.name, "seed": st.seed, "val_fraction": st.val_fraction, "crop_scale": crop_scale,
        "test_crop": st.test_crop, "train_crop_ratio": ratio, "augment": asdict(st.augment), "formats": list(st.formats),
        "h5_max_mb": st.h5_max_mb, "skip_bad": st.skip_bad, "outside_tolerance": st.tolerance,
    }
    if reader is read_300w:
        settings["test_split"] = st.test_split
    if reader is read_generic:
        settings["coords_base"] = st.coords_base
    if reader is read_mtfl:
        settings["mtfl_box_scale"] = MTFL_BOX_SCALE
    if st.dataset == "synth":
        settings["synth"] = {"n_train": st.n_train, "n_test": st.n_test, **asdict(st.synth)}
    manifest = {
        "tool": {"name": "data_prep/prepare.py", "version": __version__},
        "source": {"dataset": st.dataset, "data_root": root_name,
                   "occlusion_flags": any(s.occluded is not None for s in faces),
                   **({"reader": found} if found else {})},
        "settings": settings,
        "interpretations": INTERPRETATIONS,
        "counts": {split: {"faces": n_faces[split], "crops": len(crops[split])} for split in crops},
        "skipped": skipped,
        "n_skipped": len(skipped),
        "caffe": {
            "hdf5_lists": {s: f"{s}.txt" for s in crops} if "hdf5" in st.formats else {},
            "lmdb": {s: [f"{s}_lmdb", f"{s}_targets_lmdb"] for s in crops} if "lmdb" in st.formats else {},
            "list_paths_relative_to": f"the folder that contains {list_prefix}/ (run Caffe there)",
            "transform_param": {"mean_value": PIXEL_MEAN, "scale": PIXEL_SCALE},
            "targets": f"landmarks (2n = {2 * layout.n_points}) in crop pixels, x1 y1 x2 y2 ..., then inv_iod",
        },
        "note": "output does not depend on the number of worker processes, which is therefore not recorded",
    }
    manifest["files"] = {rel: sha256_file(os.path.join(tmp, rel)) for rel in _all_files(tmp)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def _all_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/"))
    return sorted(out)


def _remove_stale_partials(parent: str, name: str) -> None:
    """Remove `.<name>.partial-<pid>-*` and `.<name>.old-<pid>-*` folders of runs that
    were killed (their process is gone); a run still going keeps its folders."""
    for entry in os.listdir(parent):
        prefix = next((p for p in (f".{name}.partial-", f".{name}.old-") if entry.startswith(p)), None)
        if prefix is None:
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def prepare(st: PrepareSettings) -> dict:
    """Prepare a dataset into st.out (atomically); return the manifest."""
    _check(st)
    out = os.path.abspath(st.out)
    parent, name = os.path.dirname(out), os.path.basename(out)
    if os.path.exists(out) and not st.force:
        if os.path.exists(os.path.join(out, MANIFEST)):
            raise DataError(f"{out}: already holds a prepared dataset ({MANIFEST}); use --force to replace it")
        if not os.path.isdir(out) or os.listdir(out):
            raise DataError(f"{out}: exists and is not an empty folder; use --force to replace it")
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(parent, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        manifest = _prepare_into(tmp, st, name)
        fsync_tree(tmp)  # every file on the disk before the dataset takes its name
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
            os.rename(out, os.path.join(old, name))
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(os.path.join(old, name), out)  # the previous dataset stays
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(getattr(exc, "filename", None) or out) from None
        raise
    return manifest
