"""Extra test splits of a run: another folder's test faces cropped exactly as the run's test split.

A model trained on MTFL is scored on AFLW (the run's own test split) and on further test sets:
net_rest (CNN_FacePoint's web validation faces, at full resolution) and the same faces reduced
to 80 px wide the way the shared AFLW pictures were made, which measures what the 80 x 80
pictures cost (docs/REAL_DATA.md). Each extra split is written beside the run's data as

  RUN/data/<name>.txt, <name>_NNN.h5      the crops, read by every `--split <name>`
  RUN/data/<name>.manifest.json           source, reduction, counts, checksums (written last)

with the run's crop settings (crop scale, test-crop protocol, tolerance) read from
RUN/data/manifest.json, so the crops differ from the test split's only in their faces. The run's
own manifest is not touched: its products stay current.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from mcl import __version__
from mcl.data.augment import CropJob, crop_samples
from mcl.data.readers import DataError, ReadResult, Sample, read_dataset
from mcl.data.writers import sha256_file, write_hdf5
from mcl.fileio import atomic_write, fsync_dir
from mcl.method.layouts import get_layout

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
RESERVED = ("train", "val", "test")


def manifest_path(run: Path, name: str) -> Path:
    return Path(run) / "data" / f"{name}.manifest.json"


def nearest_offset(width_in: int, width_out: int) -> float:
    """Mean of frac(i * W / w) over the output pixels: where a point of the original picture lands
    on average in the nearest-neighbour grid (0.4375 for 250 -> 80 and 150 -> 80; 0 for whole ratios)."""
    step = width_in / width_out
    return float(np.mean(np.arange(width_out) * step % 1.0))


def reduce_nearest(sample: Sample, width_in: int, width: int) -> Sample:
    """`sample` as seen in its picture reduced to `width` columns (readers.nearest_reduction): points
    and box mapped by x' = s (x + o), s = width / W, o = nearest_offset (the data README's map)."""
    s = width / width_in
    o = nearest_offset(width_in, width)
    return replace(sample, landmarks=s * (sample.landmarks + o), box=s * (sample.box + o), reduce_width=width)


def picture_width(path: str) -> int:
    import cv2

    from mcl.data.readers import decode_picture
    return int(decode_picture(path, cv2.IMREAD_GRAYSCALE).shape[1])


def read_extra(dataset: str, root: str, layout: str, reduce_width: int | None = None,
               skip_bad: bool = False, coords_base: int = 1) -> ReadResult:
    """The test faces of `root` as the dataset's reader gives them, reduced where asked."""
    if dataset in ("mtfl",):
        from mcl.data.readers import read_mtfl
        res = read_mtfl(root, "test", layout, skip_bad)
    else:
        res = read_dataset(dataset, root, layout, "challenging", skip_bad, coords_base)[1]
    if not reduce_width:
        return res
    samples, skipped = [], list(res.skipped)
    for s in res.samples:
        try:
            w = picture_width(s.image_path)
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append({"id": s.sample_id, "reason": str(exc)})
            continue
        if w < reduce_width:
            raise DataError(f"{s.image_path}: {w} px wide, narrower than the reduction to {reduce_width} px")
        samples.append(reduce_nearest(s, w, reduce_width))
    return ReadResult(samples, skipped)


def prepare_extra(run: Path, name: str, root: str, reduce_width: int | None = None, workers: int = 2,
                  skip_bad: bool = False, progress: bool = True) -> dict:
    """Crop `root`'s test faces as RUN's test split into the extra split `name`; returns its manifest."""
    run = Path(run)
    if not NAME_RE.fullmatch(name) or name in RESERVED:
        raise DataError(f"extra split name {name!r}: lower-case letters, digits and _, not {', '.join(RESERVED)}")
    data_dir = run / "data"
    main_path = data_dir / "manifest.json"
    try:
        main = json.loads(main_path.read_text())
        source, st = main["source"], main["settings"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{main_path}: the run's prepared data are needed first (make data): {exc}") from None
    if not os.path.isdir(root):
        raise DataError(f"{root}: extra test folder missing")
    layout = get_layout(st["layout"])
    res = read_extra(source["dataset"], root, layout.name, reduce_width, skip_bad, st.get("coords_base", 1))
    if not res.samples:
        raise DataError(f"{root}: no usable test faces")
    job = CropJob(augment=None, layout=layout, seed=st["seed"], crop_scale=st["crop_scale"], skip_bad=skip_bad,
                  tolerance=st["outside_tolerance"], test_crop=st.get("test_crop", "ours"))
    from tqdm import tqdm
    with tqdm(total=len(res.samples), desc=f"{name} crops", unit="face", disable=not progress,
              dynamic_ncols=True) as bar:
        crops, bad = crop_samples(list(enumerate(res.samples)), job, workers, bar)
    skipped = list(res.skipped) + bad
    if not len(crops):
        raise DataError(f"{root}: every test face was skipped; the first: {skipped[0]['reason']}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=data_dir))
    try:
        files = write_hdf5(str(tmp), name, crops, "data", main["settings"].get("h5_max_mb", 256.0))
        stale = [p for p in data_dir.glob(f"{name}_*.h5")]
        for p in stale:
            p.unlink()
        for f in files:
            os.replace(tmp / f, data_dir / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(data_dir)
    doc = {
        "tool": {"name": "data_prep/prepare.py --extra-test", "version": __version__},
        "split": name,
        "source": {"dataset": source["dataset"], "data_root": os.path.abspath(root), "split": "test",
                   "reduce_width": reduce_width,
                   "reduction": (f"pictures reduced to {reduce_width} px wide by corner-aligned nearest-neighbour "
                                 "sampling, points mapped x' = s (x + o)") if reduce_width else None},
        "crop_settings_from": str(main_path.relative_to(run)),
        "settings": {k: st[k] for k in ("layout", "crop_scale", "test_crop", "outside_tolerance") if k in st},
        "counts": {"faces": len(res.samples) - len(bad), "crops": len(crops)},
        "skipped": skipped, "n_skipped": len(skipped),
        "files": {f: sha256_file(str(data_dir / f)) for f in files},
    }
    atomic_write(manifest_path(run, name), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def split_source(run: Path, split: str) -> tuple[str, str, dict]:
    """(dataset, data root, settings) of a split's faces: the run's own for test, else its extra manifest."""
    run = Path(run)
    main = json.loads((run / "data" / "manifest.json").read_text())
    if split == "test":
        root = Path(main["source"]["data_root"])
        root = root if root.is_absolute() else run / "data" / root
        return main["source"]["dataset"], str(root), main["settings"]
    path = manifest_path(run, split)
    if not path.exists():
        raise DataError(f"{path}: split {split!r} is neither the run's test split nor an extra test split")
    doc = json.loads(path.read_text())
    return doc["source"]["dataset"], doc["source"]["data_root"], {**main["settings"], **doc["settings"],
                                                                  "reduce_width": doc["source"]["reduce_width"]}


def split_faces(run: Path, split: str) -> list[Sample]:
    """The faces of the run's test split or of an extra split, as its crops were made from them (reduced
    where the split is), in the split's order (skipped faces included: callers match by landmarks)."""
    dataset, root, st = split_source(run, split)
    if split == "test":
        _, test = read_dataset(dataset, root, st["layout"], st.get("test_split", "challenging"),
                               st.get("skip_bad", False), st.get("coords_base", 1))
        return test.samples
    return read_extra(dataset, root, st["layout"], st.get("reduce_width"), True, st.get("coords_base", 1)).samples


def parse_spec(spec: str) -> tuple[str, str, int | None]:
    """NAME=ROOT or NAME=ROOT:WIDTH (the pictures reduced to WIDTH px wide) -> (name, root, width)."""
    if "=" not in spec:
        raise DataError(f"--extra-test {spec!r}: expected NAME=FOLDER or NAME=FOLDER:WIDTH")
    name, rest = spec.split("=", 1)
    m = re.fullmatch(r"(.+):(\d+)", rest)
    if m:
        return name, m.group(1), int(m.group(2))
    return name, rest, None
