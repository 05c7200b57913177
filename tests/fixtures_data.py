"""Small datasets written in each real on-disk format (METHOD §11), for the data tests.

Written here with the formats' own tools (text, scipy.io.savemat, h5py laid out as
MATLAB -v7.3 writes), independently of mcl.data, so that a reader bug is not hidden by
a matching writer bug. A helper module, not a test module: test_data_fixtures.py checks
that these fixtures look like the real files.
"""

from __future__ import annotations

import os

import cv2
import h5py
import numpy as np
import scipy.io

RNG_SEED = 1234


def face_points68(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """68 plausible 0-based points inside a w x h picture (an ellipse-ish spread)."""
    c = np.array([w / 2, h / 2]) + rng.uniform(-5, 5, 2)
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    r = np.stack([np.cos(t) * w * 0.3, np.sin(t) * h * 0.3], 1) * rng.uniform(0.5, 1.0, (68, 1))
    return c + r


def write_pts_crlf(path: str, pts_on_disk: np.ndarray, n_declared: int | None = None) -> None:
    """An ibug .pts with CRLF line ends and stray blank lines, as some 300-W files have."""
    n = len(pts_on_disk) if n_declared is None else n_declared
    lines = ["version: 1", f"n_points:  {n}", "{"] + [f"{x:.6f} {y:.6f}" for x, y in pts_on_disk] + ["}", "", ""]
    lines.insert(3, "")
    with open(path, "wb") as f:
        f.write("\r\n".join(lines).encode("ascii"))


def write_boxes_mat(path: str, entries) -> None:
    """bounding_boxes_*.mat: 1 x N cell of 1 x 1 structs (imgName, bb_detector, bb_ground_truth)."""
    dt = [("imgName", "O"), ("bb_detector", "O"), ("bb_ground_truth", "O")]
    cell = np.empty((1, len(entries)), dtype=object)
    for i, (name, det, gt) in enumerate(entries):
        s = np.empty((1, 1), dtype=dt)
        s[0, 0]["imgName"] = np.array([name])
        s[0, 0]["bb_detector"] = np.asarray(det, float).reshape(1, 4)
        s[0, 0]["bb_ground_truth"] = np.asarray(gt, float).reshape(1, 4)
        cell[0, i] = s
    scipy.io.savemat(path, {"bounding_boxes": cell})


W300_LAYOUT = {"afw": "afw", "helen_trainset": "helen/trainset", "lfpw_trainset": "lfpw/trainset",
               "helen_testset": "helen/testset", "lfpw_testset": "lfpw/testset", "ibug": "ibug"}


def write_300w(root: str, per_subset: int = 2, size=(96, 80)) -> dict:
    """A 300-W tree: pictures, 1-based .pts (CRLF), `Bounding Boxes/bounding_boxes_*.mat`.
    Returns {sample id: (1-based points, 1-based gt box)}."""
    rng = np.random.default_rng(RNG_SEED)
    w, h = size
    truth = {}
    os.makedirs(os.path.join(root, "Bounding Boxes"), exist_ok=True)
    for subset, folder in W300_LAYOUT.items():
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        entries = []
        for k in range(per_subset):
            ext = ".png" if subset.startswith("lfpw") else ".jpg"
            name = f"image_{k:04d}{ext}"  # lfpw train and test reuse names, as in 300-W
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(os.path.join(root, folder, name), img)
            pts1 = face_points68(w, h, rng) + 1.0
            write_pts_crlf(os.path.join(root, folder, os.path.splitext(name)[0] + ".pts"), pts1)
            gt = np.concatenate([pts1.min(0), pts1.max(0)])
            entries.append((name, gt + [-3, -2, 4, 5], gt))
            truth[f"{folder}/{name}"] = (pts1, gt)
        write_boxes_mat(os.path.join(root, "Bounding Boxes", f"bounding_boxes_{subset}.mat"), entries)
    return truth


def write_cofw_v73(path: str, split: str = "train", n: int = 3) -> dict:
    """COFW as MATLAB -v7.3 saves it: an HDF5 file with a 512-byte MATLAB userblock,
    images as object references into '#refs#' (each stored transposed), phis (87, N),
    bboxes (4, N). Returns the MATLAB-side arrays."""
    rng = np.random.default_rng(RNG_SEED + 1)
    keys = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}[split]
    images, phis, boxes = [], np.zeros((n, 87)), np.zeros((n, 4))
    for i in range(n):
        h, w = 70 + 4 * i, 90 - 3 * i
        shape = (h, w) if i == 1 else (h, w, 3)  # one grayscale picture, as COFW has
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        images.append(img)
        x = rng.uniform(20, w - 20, 29) + 1
        y = rng.uniform(20, h - 20, 29) + 1
        occ = (rng.random(29) < 0.3).astype(float)
        phis[i] = np.concatenate([x, y, occ])
        boxes[i] = [10 + i, 12, w - 25, h - 30]  # left top width height, 1-based
    with h5py.File(path, "w", userblock_size=512) as f:
        refs_group = f.create_group("#refs#")
        refs = np.empty((1, n), dtype=h5py.ref_dtype)
        for i, img in enumerate(images):
            ds = refs_group.create_dataset(f"im{i}", data=img.T)  # MATLAB is column-major
            ds.attrs["MATLAB_class"] = np.bytes_("uint8")
            refs[0, i] = ds.ref
        f.create_dataset(keys[0], data=refs).attrs["MATLAB_class"] = np.bytes_("cell")
        f.create_dataset(keys[1], data=phis.T).attrs["MATLAB_class"] = np.bytes_("double")  # (87, N)
        f.create_dataset(keys[2], data=boxes.T).attrs["MATLAB_class"] = np.bytes_("double")  # (4, N)
    with open(path, "r+b") as f:
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
        f.write(text.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")  # version 0x0200, little-endian mark
    return {"images": images, "phis": phis, "boxes": boxes}


def write_cofw(root, n_train: int = 3, n_test: int = 2) -> None:
    """A COFW data root: COFW_train_color.mat and COFW_test_color.mat (see write_cofw_v73)."""
    os.makedirs(root, exist_ok=True)
    write_cofw_v73(os.path.join(root, "COFW_train_color.mat"), "train", n=n_train)
    write_cofw_v73(os.path.join(root, "COFW_test_color.mat"), "test", n=n_test)


def write_mtfl(root: str, n: int = 3) -> list[tuple[str, np.ndarray]]:
    """training.txt / testing.txt: leading spaces after the first line, backslash paths,
    all x then all y, four attribute codes. Returns [(relative path, (5, 2) points)]."""
    rng = np.random.default_rng(RNG_SEED + 2)
    os.makedirs(os.path.join(root, "lfw_5590"), exist_ok=True)
    os.makedirs(os.path.join(root, "AFLW"), exist_ok=True)
    out = []
    for fname, folder in (("training.txt", "lfw_5590"), ("testing.txt", "AFLW")):
        lines = []
        for i in range(n):
            rel = f"{folder}/Person_{i:04d}.jpg"
            cv2.imwrite(os.path.join(root, rel), rng.integers(0, 256, (120, 110), dtype=np.uint8))
            pts = np.array([[40.5, 50.25], [70.75, 49.0], [55.0, 66.5], [44.0, 82.0], [68.0, 81.5]]) + i
            nums = " ".join(f"{v:g}" for v in np.concatenate([pts[:, 0], pts[:, 1]]))
            lines.append(f"{' ' if lines else ''}{rel.replace('/', chr(92))} {nums} 1 2 2 3")
            if fname == "training.txt":
                out.append((rel, pts))
        with open(os.path.join(root, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    return out


def write_generic(root: str, n: int = 3, n_points: int = 68) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """<split>_images.txt + .pts (1-based) + <split>_boxes.txt (`left right top bottom`).
    Returns [(relative path, 1-based points, (left, right, top, bottom))] of train."""
    rng = np.random.default_rng(RNG_SEED + 3)
    out = []
    for split in ("train", "test"):
        os.makedirs(os.path.join(root, "img", split), exist_ok=True)
        names, boxes = [], []
        for i in range(n):
            rel = f"img/{split}/face_{i}.png"
            cv2.imwrite(os.path.join(root, rel), rng.integers(0, 256, (90, 100), dtype=np.uint8))
            pts1 = face_points68(100, 90, rng)[:n_points] + 1.0
            write_pts_crlf(os.path.join(root, rel[:-4] + ".pts"), pts1)
            lrtb = (pts1[:, 0].min(), pts1[:, 0].max(), pts1[:, 1].min(), pts1[:, 1].max())
            names.append(rel)
            boxes.append(" ".join(f"{v:.3f}" for v in lrtb))
            if split == "train":
                out.append((rel, pts1, np.array(lrtb)))
        with open(os.path.join(root, f"{split}_images.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        with open(os.path.join(root, f"{split}_boxes.txt"), "w") as f:
            f.write("\n".join(boxes) + "\n")
    return out
