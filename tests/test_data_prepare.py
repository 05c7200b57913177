"""data_prep/prepare.py end to end: determinism, manifest, atomic output, bad input."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import ROOT, descendants, parent_of, tool, tree, wait_ended
from fixtures_data import write_300w, write_cofw, write_generic, write_mtfl

from mcl.data.augment import AugmentSettings, apply_affine
from mcl.data.pipeline import PrepareSettings, prepare, split_validation
from mcl.data.readers import DataError
from mcl.data.writers import read_hdf5_list, sha256_file
from mcl.method.layouts import IBUG68

PREPARE_TOOL = "data_prep/prepare.py"
TOOL = str(ROOT / PREPARE_TOOL)
TINY = dict(dataset="synth", n_train=20, n_test=6, val_fraction=0.2, augment=AugmentSettings(copies=3),
            progress=False)


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    for w in (1, 2):
        prepare(PrepareSettings(out=str(base / f"w{w}" / "data"), workers=w, seed=5, **TINY))
    return base


def test_same_seed_gives_byte_identical_output_with_1_and_2_workers(synth_runs):
    a, b = tree(str(synth_runs / "w1" / "data")), tree(str(synth_runs / "w2" / "data"))
    assert sorted(a) == sorted(b)
    assert {"manifest.json", "contact_sheet.png", "train.txt", "train_000.h5", "val_lmdb/data.mdb",
            "test_targets_lmdb/data.mdb", "synth_raw/Bounding Boxes/bounding_boxes_ibug.mat"} <= set(a)
    assert not any(k.endswith("lock.mdb") for k in a)
    for k in a:
        assert a[k] == b[k], k


def test_manifest_records_counts_settings_and_checksums(synth_runs):
    out = synth_runs / "w1" / "data"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"train": {"faces": 16, "crops": 48}, "val": {"faces": 4, "crops": 4},
                           "test": {"faces": 6, "crops": 6}}
    assert m["settings"]["seed"] == 5 and m["settings"]["layout"] == "68"
    assert m["settings"]["augment"]["copies"] == 3 and m["settings"]["val_fraction"] == 0.2
    assert m["settings"]["synth"]["n_train"] == 20 and m["source"]["data_root"] == "synth_raw"
    assert m["tool"]["version"] and m["skipped"] == [] and m["n_skipped"] == 0
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert sorted(m["files"]) == [f for f in files if f != "manifest.json"]
    for rel, digest in m["files"].items():
        assert sha256_file(str(out / rel)) == digest


def test_hdf5_contents_and_list_paths(synth_runs):
    run = synth_runs / "w1"
    assert (run / "data" / "train.txt").read_text() == "data/train_000.h5\n"
    d = read_hdf5_list(str(run / "data" / "train.txt"))
    n = 48
    assert d["data"].shape == (n, 1, 50, 50) and d["data"].dtype == np.float32
    assert d["landmarks"].shape == (n, 136) and d["landmarks"].dtype == np.float32
    assert d["inv_iod"].shape == (n,) and d["inv_iod"].dtype == np.float32
    assert d["crop_to_image"].shape == (n, 2, 3) and d["landmarks_image"].shape == (n, 68, 2)
    assert d["occluded"].dtype == np.uint8 and d["iod_image"].shape == (n,)
    # pixels: (p - 128) / 128 of uint8 p
    p = d["data"] / 0.0078125 + 128
    np.testing.assert_array_equal(p, np.rint(p))
    assert p.min() >= 0 and p.max() <= 255
    # landmarks x1 y1 x2 y2 ... in crop pixels, mapped back to the picture
    crop_pts = d["landmarks"].reshape(n, 68, 2).astype(np.float64)
    assert np.abs(apply_affine(d["crop_to_image"], crop_pts) - d["landmarks_image"]).max() < 1e-3
    np.testing.assert_allclose(1 / d["inv_iod"], IBUG68.inter_ocular_distance(crop_pts), rtol=1e-5)
    # training crops are shuffled: copies of one face are not all adjacent
    faces = [s.split("#")[0] for s in d["sample_id"]]
    assert sum(faces[i] == faces[i + 1] for i in range(n - 1)) < n / 3


def test_validation_faces_are_held_out_before_augmentation(synth_runs):
    run = synth_runs / "w1"
    train = read_hdf5_list(str(run / "data" / "train.txt"))
    val = read_hdf5_list(str(run / "data" / "val.txt"))
    train_faces = {s.split("#")[0] for s in train["sample_id"]}
    assert len(train_faces) == 16 and all("#" not in s for s in val["sample_id"])
    assert not train_faces & set(val["sample_id"])
    tr, va = split_validation(20, 0.2, 5)
    assert len(va) == 4 and not set(tr) & set(va)
    np.testing.assert_array_equal(split_validation(20, 0.2, 5)[1], va)


def test_existing_output_is_refused_without_force(synth_runs):
    out = str(synth_runs / "w1" / "data")
    before = os.path.getmtime(os.path.join(out, "manifest.json"))
    with pytest.raises(DataError, match=r"already holds a prepared dataset \(manifest\.json\); use --force"):
        prepare(PrepareSettings(out=out, workers=1, seed=5, **TINY))
    assert os.path.getmtime(os.path.join(out, "manifest.json")) == before


def test_force_replaces_and_nothing_partial_remains(tmp_path):
    out = tmp_path / "data"
    prepare(PrepareSettings(out=str(out), seed=1, **{**TINY, "n_train": 6, "n_test": 2}))
    prepare(PrepareSettings(out=str(out), seed=2, force=True, **{**TINY, "n_train": 6, "n_test": 2}))
    assert json.loads((out / "manifest.json").read_text())["settings"]["seed"] == 2
    assert os.listdir(tmp_path) == ["data"]


def test_bad_sample_stops_the_run_and_leaves_no_output(tmp_path):
    root = tmp_path / "300w"
    write_300w(str(root), per_subset=3)
    (root / "ibug" / "image_0002.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "run" / "data"
    with pytest.raises(DataError, match=r"ibug/image_0002\.jpg: unreadable image"):
        prepare(PrepareSettings(dataset="ibug", data_root=str(root), out=str(out), progress=False,
                                augment=AugmentSettings(copies=2)))
    assert not out.exists() and os.listdir(tmp_path / "run") == []


def test_skip_bad_counts_skipped_samples_in_the_manifest(tmp_path):
    root = tmp_path / "300w"
    write_300w(str(root), per_subset=3)
    (root / "ibug" / "image_0002.jpg").write_bytes(b"\xff\xd8 broken")
    os.remove(root / "afw" / "image_0000.jpg")
    m = prepare(PrepareSettings(dataset="ibug", data_root=str(root), out=str(tmp_path / "data"), progress=False,
                                skip_bad=True, formats=("hdf5",), augment=AugmentSettings(copies=2)))
    assert m["n_skipped"] == 2
    assert [(s["split"], s["id"]) for s in m["skipped"]] == [("train", "afw/image_0000.jpg"),
                                                             ("test", "ibug/image_0002.jpg")]
    assert "unreadable image" in m["skipped"][1]["reason"]
    assert m["counts"]["test"] == {"faces": 2, "crops": 2}
    assert m["counts"]["train"]["faces"] + m["counts"]["val"]["faces"] == 8
    assert m["source"]["data_root"] == str(root)


def test_tool_reports_bad_input_as_error_and_exit_2(tmp_path):
    root = tmp_path / "300w"
    write_300w(str(root), per_subset=1)
    (root / "afw" / "image_0000.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n5 6\n}\n")
    out = tmp_path / "data"
    r = tool(PREPARE_TOOL, "--dataset", "ibug", "--data-root", root, "--out", out, "--quiet", "--workers", "1",
             check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "afw/image_0000.pts: has 3 points, expected 68" in r.stderr
    assert not out.exists()


def test_tool_help_lists_the_options():
    r = tool(PREPARE_TOOL, "--help", check=False)
    assert r.returncode == 0
    for opt in ("--dataset", "--data-root", "--layout", "--seed", "--workers", "--out", "--val-fraction",
                "--skip-bad", "--formats", "--n-train", "--n-test", "--test-split", "--copies", "--angles",
                "--extents", "--jpeg-quality", "--force"):
        assert opt in r.stdout


def wait_for(pattern: str, proc, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not glob.glob(pattern) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"


def test_interrupted_run_never_leaves_the_final_name(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, TOOL, "--dataset", "synth", "--out", str(out), "--n-train", "400", "--n-test", "50",
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(str(tmp_path / ".data.partial-*" / "synth_raw" / "afw" / "*.pts"), proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    killed = glob.glob(str(tmp_path / ".data.partial-*"))
    assert len(killed) == 1 and not os.path.exists(os.path.join(killed[0], "manifest.json"))
    # The next run removes the killed run's folder; Ctrl-C (or SIGTERM) removes its own.
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(str(tmp_path / f".data.partial-{proc.pid}-*" / "synth_raw" / "afw" / "*.pts"), proc)
        assert not os.path.exists(killed[0])
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code
        assert not out.exists() and os.listdir(tmp_path) == []


def test_layout_29_from_the_synthetic_set(tmp_path):
    m = prepare(PrepareSettings(out=str(tmp_path / "data"), layout="29", formats=("hdf5",),
                                **{**TINY, "n_train": 6, "n_test": 2}))
    assert m["settings"]["layout"] == "29"
    with h5py.File(tmp_path / "data" / "test_000.h5") as f:
        assert f["landmarks"].shape == (2, 58) and f["occluded"].shape == (2, 29)


@pytest.mark.parametrize("dataset,n_points", [("cofw", 29), ("mtfl", 5), ("generic", 68)])
def test_each_real_format_goes_through_the_tool(tmp_path, dataset, n_points):
    root = tmp_path / dataset
    root.mkdir()
    if dataset == "cofw":
        write_cofw(root)
    elif dataset == "mtfl":
        write_mtfl(str(root), n=3)
    else:
        write_generic(str(root), n=3)
    m = prepare(PrepareSettings(dataset=dataset, data_root=str(root), out=str(tmp_path / "data"), progress=False,
                                val_fraction=0.3, formats=("hdf5",), augment=AugmentSettings(copies=2)))
    assert m["settings"]["layout"] == str(n_points)
    assert m["counts"]["train"]["crops"] == 2 * m["counts"]["train"]["faces"] and m["counts"]["val"]["faces"] == 1
    assert m["source"]["occlusion_flags"] == (dataset == "cofw")
    d = read_hdf5_list(str(tmp_path / "data" / "train.txt"))
    assert d["landmarks"].shape[1] == 2 * n_points
    back = apply_affine(d["crop_to_image"], d["landmarks"].reshape(-1, n_points, 2).astype(float))
    assert np.abs(back - d["landmarks_image"]).max() < 1e-3


def test_synthetic_set_in_a_data_root_is_reused_when_it_matches(tmp_path):
    raw = tmp_path / "raw"
    small = {**TINY, "n_train": 6, "n_test": 2, "formats": ("hdf5",)}
    prepare(PrepareSettings(out=str(tmp_path / "a" / "data"), data_root=str(raw), **small))
    stamp = (raw / "synth.json").stat().st_mtime_ns
    m = prepare(PrepareSettings(out=str(tmp_path / "b" / "data"), data_root=str(raw), **small))
    assert (raw / "synth.json").stat().st_mtime_ns == stamp and m["source"]["data_root"] == str(raw)
    assert not (tmp_path / "b" / "data" / "synth_raw").exists()
    with pytest.raises(DataError, match=r"raw/synth\.json: holds a synthetic set made with other settings"):
        prepare(PrepareSettings(out=str(tmp_path / "c" / "data"), data_root=str(raw), **{**small, "n_train": 7}))


# ---- two workers, pictures large enough for OpenCV's threads, signals -------------------

BIG = (420, 360)  # width, height: a cvtColor of this size runs on OpenCV's thread pool


def write_cofw_big(root, n_train: int = 4, n_test: int = 2) -> None:
    """COFW as MATLAB -v7.3 saves it (see fixtures_data.write_cofw_v73), with colour
    pictures a few hundred pixels a side, as the real files have."""
    rng = np.random.default_rng(99)
    w, h = BIG
    for split, n in (("train", n_train), ("test", n_test)):
        keys = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}[split]
        phis, boxes = np.zeros((n, 87)), np.zeros((n, 4))
        with h5py.File(os.path.join(root, f"COFW_{split}_color.mat"), "w", userblock_size=512) as f:
            refs = np.empty((1, n), dtype=h5py.ref_dtype)
            for i in range(n):
                ds = f.create_dataset(f"#refs#/im{i}", data=rng.integers(0, 256, (h, w, 3), dtype=np.uint8).T)
                ds.attrs["MATLAB_class"] = np.bytes_("uint8")
                refs[0, i] = ds.ref
                x, y = rng.uniform(130, w - 130, 29) + 1, rng.uniform(110, h - 110, 29) + 1
                phis[i] = np.concatenate([x, y, (rng.random(29) < 0.3).astype(float)])
                boxes[i] = [100, 80, w - 200, h - 160]  # left top width height, 1-based
            f.create_dataset(keys[0], data=refs).attrs["MATLAB_class"] = np.bytes_("cell")
            f.create_dataset(keys[1], data=phis.T).attrs["MATLAB_class"] = np.bytes_("double")
            f.create_dataset(keys[2], data=boxes.T).attrs["MATLAB_class"] = np.bytes_("double")


def _enlarge_pictures(root, pattern: str) -> None:
    """Pad a fixture's pictures to BIG (right and bottom), so landmarks keep their place."""
    import cv2
    rng = np.random.default_rng(7)
    for path in glob.glob(os.path.join(root, pattern), recursive=True):
        small = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        big = rng.integers(0, 256, (BIG[1], BIG[0]) + small.shape[2:], dtype=np.uint8)
        big[:small.shape[0], :small.shape[1]] = small
        cv2.imwrite(path, big)


def big_dataset(dataset: str, root) -> list[str]:
    """A few faces of `dataset` on large pictures; the tool's options for it."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    if dataset == "synth":
        return ["--dataset", "synth", "--n-train", "6", "--n-test", "2", "--synth-size", str(BIG[0])]
    if dataset == "ibug":
        write_300w(root, per_subset=1, size=BIG)
    elif dataset == "cofw":
        write_cofw_big(root)
    elif dataset == "mtfl":
        write_mtfl(root, n=3)
        _enlarge_pictures(root, "**/*.jpg")
    elif dataset == "generic":
        write_generic(root, n=3)
        _enlarge_pictures(root, "img/**/*.png")
    return ["--dataset", dataset, "--data-root", root]


def run_tool(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return tool(PREPARE_TOOL, "--quiet", "--copies", "3", *args, check=False, timeout=timeout)


def test_opencv_threads_are_used_at_the_fixture_size():
    import cv2
    before = len(os.listdir("/proc/self/task"))
    cv2.setNumThreads(2)
    cv2.cvtColor(np.zeros((BIG[1], BIG[0], 3), np.uint8), cv2.COLOR_RGB2GRAY)
    assert len(os.listdir("/proc/self/task")) > before or cv2.getNumThreads() < 2


@pytest.mark.parametrize("dataset", ["ibug", "cofw", "mtfl", "generic", "synth"])
def test_every_format_goes_through_the_tool_with_2_workers_on_large_pictures(tmp_path, dataset):
    """The default (2 workers) on pictures a few hundred pixels a side; COFW's reader
    converts them with OpenCV in the parent before the workers start (it used to hang).
    Output equals the one-worker output byte for byte."""
    opts = big_dataset(dataset, tmp_path / "src")
    two = run_tool([*opts, "--out", str(tmp_path / "w2" / "data")])
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_tool([*opts, "--workers", "1", "--out", str(tmp_path / "w1" / "data")])
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = tree(str(tmp_path / "w1" / "data")), tree(str(tmp_path / "w2" / "data"))
    assert sorted(a) == sorted(b) and "manifest.json" in a
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


@pytest.mark.timeout(120)
def test_workers_start_clean_when_this_process_has_opencv_threads_running(tmp_path):
    """Any threaded state of the parent (here OpenCV's pool, started on purpose) must not
    reach the workers: they are not forks of it."""
    import cv2
    cv2.setNumThreads(2)
    cv2.cvtColor(np.zeros((BIG[1], BIG[0], 3), np.uint8), cv2.COLOR_RGB2GRAY)
    big_dataset("cofw", tmp_path / "src")
    m = prepare(PrepareSettings(dataset="cofw", data_root=str(tmp_path / "src"), out=str(tmp_path / "data"),
                                workers=2, progress=False, formats=("hdf5",), augment=AugmentSettings(copies=2)))
    assert m["counts"]["train"]["crops"] == 6


def start_synth_with_workers(tmp_path, *extra):
    """The tool on a synthetic set big enough to be caught mid-run, once its worker
    processes are running."""
    cmd = [sys.executable, TOOL, "--dataset", "synth", "--out", str(tmp_path / "data"), "--n-train", "400",
           "--n-test", "50", "--quiet", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(str(tmp_path / f".data.partial-{proc.pid}-*" / "synth_raw" / "afw" / "*.pts"), proc)
    deadline = time.time() + 30
    while len(descendants(proc.pid)) < 3 and time.time() < deadline:  # fork server + 2 workers
        time.sleep(0.02)
    kids = descendants(proc.pid)
    assert len(kids) >= 3 and proc.poll() is None
    return proc, kids


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_ends_the_tool_and_its_workers_within_seconds(tmp_path, sig, code, word):
    proc, kids = start_synth_with_workers(tmp_path)
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.time() - t0 < 5, f"took {time.time() - t0:.1f} s"
    assert proc.returncode == code and f"error: {word}" in err and "Traceback" not in err
    assert wait_ended(kids, 5) == []
    assert os.listdir(tmp_path) == []  # no data/, no partial folder


def test_killed_tool_leaves_no_worker_behind(tmp_path):
    proc, kids = start_synth_with_workers(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # returns once every process holding its stderr is gone
    assert wait_ended(kids, 5) == []
    assert not (tmp_path / "data").exists()


def test_a_dead_worker_stops_the_tool_with_nothing_written(tmp_path):
    proc, kids = start_synth_with_workers(tmp_path)
    workers = [k for k in kids if parent_of(k) != proc.pid]  # children of the fork server
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "error: a worker process died" in err
    assert os.listdir(tmp_path) == []
    assert wait_ended(kids, 5) == []

