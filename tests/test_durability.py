"""Nothing lost when the machine fails: durable renames, one writer per run folder, a full disk
named, a torn product found and made again.

A real power cut cannot be made here. What is tested is the write path's order, traced
with strace on the real tools: a file's bytes are fsynced before its rename, and the
folder after it, which is what makes the rename survive a power cut (POSIX).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MAKE_TINY, NETS, PREPARE, ROOT, make, tool

from mcl.fileio import atomic_write
from mcl.records import lock, verify


def _strace() -> str:
    found = shutil.which("strace")
    if found is None and os.geteuid() == 0:  # as CI runs: Debian's package
        subprocess.run(["apt-get", "install", "-y", "-qq", "strace"], capture_output=True, timeout=300)
        found = shutil.which("strace")
    if found is None:
        pytest.skip("strace is not installed and cannot be (not root)")
    return found


def traced(tmp_path, *cmd) -> list[tuple[str, str, str]]:
    """(call, first path, second path) of every fsync and rename the command and its children make."""
    log = tmp_path / "strace.log"
    subprocess.run([_strace(), "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                    "-o", str(log), *map(str, cmd)], cwd=ROOT, check=True, capture_output=True, timeout=600)
    calls = []
    for line in log.read_text().splitlines():
        m = re.search(r"\b(fsync|fdatasync)\(\d+<([^>]*)>\)\s*=\s*0", line)
        if m:
            calls.append(("fsync", m[2], ""))
            continue
        m = re.search(r"\b(rename|renameat2?)\((?:[^,]*, )?\"([^\"]+)\", (?:[^,]*, )?\"([^\"]+)\"", line)
        if m and "= 0" in line:
            calls.append(("rename", m[2], m[3]))
    return calls


def assert_durable(calls, final: Path, cwd: Path = ROOT) -> None:
    """`final` took its name by a rename after the fsync of the renamed bytes, then its folder was fsynced."""
    def absolute(p):
        return str(Path(p) if os.path.isabs(p) else (cwd / p).resolve())
    renames = [i for i, c in enumerate(calls) if c[0] == "rename" and absolute(c[2]) == str(final)]
    assert renames, f"no rename to {final}"
    i = renames[-1]
    src = absolute(calls[i][1])
    synced_before = {c[1] for c in calls[:i] if c[0] == "fsync"}
    assert src in synced_before or any(s.startswith(src + "/") for s in synced_before), (src, calls[:i])
    assert str(final.parent) in {c[1] for c in calls[i + 1:] if c[0] == "fsync"}, calls[i:]


def test_a_file_is_fsynced_before_its_rename_and_its_folder_after(tmp_path):
    out = tmp_path / "w" / "doc.json"
    calls = traced(tmp_path, sys.executable, "-c",
                   f"import sys; sys.path.insert(0, {str(ROOT)!r}); from mcl.fileio import atomic_write; "
                   f"atomic_write({str(out)!r}, '{{}}')")
    assert_durable(calls, out)
    assert out.read_text() == "{}" and os.listdir(out.parent) == ["doc.json"]


def test_data_preparation_and_a_stage_write_durably(tmp_path):
    run = tmp_path / "run"
    calls = traced(tmp_path, sys.executable, ROOT / "data_prep/prepare.py", *PREPARE, "--workers", "2",
                   "--out", run / "data")
    assert_durable(calls, run / "data")  # every file below the dataset fsynced before the folder's rename
    data_files = {c[1] for c in calls if c[0] == "fsync" and "/.data.partial-" in c[1] and c[1].endswith(".h5")}
    assert len(data_files) >= 3  # train, val and test splits
    tool("tools/make_nets.py", "--run", run, *NETS)
    calls = traced(tmp_path, sys.executable, ROOT / "tools/run_stage.py", "--run", run, "--stage", "stage1",
                   "--engine", "torch")
    for final in ("models/bm.raw.caffemodel", "models/bm.caffemodel", "manifest.json"):
        assert_durable(calls, run / final)


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); "
                               "from mcl.records.lock import writer; from pathlib import Path\n"
                               f"with writer(Path({str(run)!r})):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        r = tool("tools/run_stage.py", "--run", run, "--stage", "stage1", check=False)
        assert r.returncode == 2 and time.time() - t0 < 30
        assert f"{run}: another writer is at work" in r.stderr and f"pid {holder.pid}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        r = make("stage1", f"RUN={run}", *MAKE_TINY, check=False)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()
    # killed with -9: the kernel let the lock go; the next writer goes ahead and leaves no lock file
    with lock.writer(run):
        assert (run / lock.LOCK_FILE).exists()
    assert not (run / lock.LOCK_FILE).exists()


def test_two_make_on_one_run_the_second_refused_the_first_unharmed(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(["make", "--no-print-directory", "assemble", f"RUN={run}", *MAKE_TINY], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / lock.LOCK_FILE).exists() and time.time() < deadline:
            time.sleep(0.1)
        second = make("assemble", f"RUN={run}", *MAKE_TINY, check=False)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"{run}: another writer is at work" in second.stderr and f"pid {first.pid}: make" in second.stderr
        out, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, out[-3000:]
    assert "intact" in make("-s", "verify", f"RUN={run}").stdout
    deadline = time.time() + 10
    while (run / lock.LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not (run / lock.LOCK_FILE).exists()  # released with the make that held it
    # a torn product (its bytes cut after the rename, as a crash can leave it) is set aside and made again:
    # by the check make runs first, incremental (BM's digest of the check before kept in RUN/.verify-cache.json),
    # and by the full one
    bm = run / "models/bm.caffemodel"
    whole = bm.read_bytes()
    time.sleep(verify.RACY_S)  # older than a timestamp's grain: the digests are kept
    assert verify.set_aside_torn(run) == []
    assert str(bm.resolve()) in json.loads((run / verify.CACHE_FILE).read_text())["files"]
    for full in (False, True):
        bm.write_bytes(whole[: len(whole) // 3])
        if full:
            r = subprocess.run([sys.executable, "-m", "mcl.records.verify", "--set-aside-torn", str(run), "--full"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0 and "bm.caffemodel: not the file its manifest recorded" in r.stderr, r.stderr
        again = make("stage2", f"RUN={run}", *MAKE_TINY)
        if not full:
            assert "bm.caffemodel: not the file its manifest recorded" in again.stderr
        assert bm.read_bytes() == whole  # made again, to the same bits
        assert (run / "models/bm.caffemodel.torn").stat().st_size == len(whole) // 3
        assert "intact" in make("-s", "verify", f"RUN={run}").stdout


def hand_made_run(run: Path) -> Path:
    """A run folder whose manifests record what it holds: a model made from the data manifest, and the
    data files (bytes of no format: the check reads checksums only)."""
    from mcl.records.manifest import sha256
    files = {"train_000.h5": os.urandom(300_000), "train.txt": b"data/train_000.h5\n", "test_000.h5": os.urandom(9_000)}
    (run / "data").mkdir(parents=True)
    for name, data in files.items():
        (run / "data" / name).write_bytes(data)
    (run / "data" / "manifest.json").write_text(json.dumps({"files": {n: sha256(run / "data" / n) for n in files}}))
    (run / "models").mkdir()
    (run / "models" / "bm.caffemodel").write_bytes(os.urandom(50_000))
    (run / "manifest.json").write_text(json.dumps({"artifacts": {"models/bm.caffemodel": {
        "stage": "stage1", "sha256": sha256(run / "models" / "bm.caffemodel"),
        "inputs": {"data/manifest.json": sha256(run / "data" / "manifest.json")}}}}))
    return run


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_a_torn_product_is_set_aside_by_either_check(tmp_path, monkeypatch, full):
    """make's check (incremental: a file whose size, mtime, ctime and inode are those of the check
    before keeps its digest) sets aside what the full check does: a model cut short, and a data file
    changed in place with its size kept and its mtime set back (only its ctime tells)."""
    from mcl.records import manifest
    run = hand_made_run(tmp_path / "run")
    bm, h5 = run / "models" / "bm.caffemodel", run / "data" / "train_000.h5"
    reads = []
    real_sha256 = manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda p: reads.append(Path(p).name) or real_sha256(p))
    time.sleep(verify.RACY_S)
    assert verify.set_aside_torn(run, full) == [] and len(reads) == 4  # the model and the 3 data files
    reads.clear()
    assert verify.set_aside_torn(run, full) == []
    assert len(reads) == (4 if full else 0)  # unchanged files are not read again
    assert (run / verify.CACHE_FILE).exists() != full  # the full check writes nothing

    whole = bm.read_bytes()
    bm.write_bytes(whole[: len(whole) // 3])
    st = h5.stat()
    with open(h5, "r+b") as fh:  # one byte changed in place, the mtime set back
        fh.seek(1000)
        fh.write(bytes([fh.read(1)[0] ^ 1]))
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (h5.stat().st_size, h5.stat().st_mtime_ns, h5.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    reads.clear()
    moved = verify.set_aside_torn(run, full)
    assert sorted(moved) == sorted([(bm, bm.with_name("bm.caffemodel.torn")),
                                    (run / "data" / "manifest.json", run / "data" / "manifest.json.torn")])
    assert (run / "models" / "bm.caffemodel.torn").stat().st_size == len(whole) // 3
    assert sorted(reads) == (["bm.caffemodel", "test_000.h5", "train.txt", "train_000.h5"] if full
                             else ["bm.caffemodel", "train_000.h5"])


def test_an_unreadable_verify_cache_reads_every_file_again(tmp_path, monkeypatch):
    from mcl.records import manifest
    run = hand_made_run(tmp_path / "run")
    time.sleep(verify.RACY_S)
    verify.set_aside_torn(run)
    (run / verify.CACHE_FILE).write_text("{not json")
    reads = []
    real_sha256 = manifest.sha256
    monkeypatch.setattr(manifest, "sha256", lambda p: reads.append(p) or real_sha256(p))
    assert verify.set_aside_torn(run) == [] and len(reads) == 4
    assert len(json.loads((run / verify.CACHE_FILE).read_text())["files"]) == 4


def test_a_make_killed_with_minus_9_leaves_no_stale_lock(tmp_path):
    """make and its recipes killed at once (their process group, as a crash would): the holder sees
    make gone and lets go, so the next make goes ahead, and ends with the uninterrupted run's bits."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    make("stage1", f"RUN={ref}", *MAKE_TINY)
    first = subprocess.Popen(["make", "--no-print-directory", "stage1", f"RUN={run}", *MAKE_TINY], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list(run.glob("snapshots/stage1_iter_*.caffemodel")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    deadline = time.time() + 10
    while (run / lock.LOCK_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not (run / lock.LOCK_FILE).exists(), "the lock outlived the make that held it"
    make("stage1", f"RUN={run}", *MAKE_TINY)
    for m in ("bm.caffemodel", "bm.raw.caffemodel"):
        assert (run / "models" / m).read_bytes() == (ref / "models" / m).read_bytes(), m


@pytest.fixture
def small_disk(tmp_path):
    """A 160 MiB tmpfs (as root, as CI runs): a disk that fills (a tiny stage 1 keeps 18 snapshots)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """A file that takes the disk's space but `leave` bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_named_and_nothing_looks_finished(small_disk, tmp_path):
    filler = fill(small_disk, 200_000)
    r = tool("data_prep/prepare.py", *PREPARE, "--out", small_disk / "run" / "data", check=False)
    assert r.returncode == 2 and "no space left on device" in r.stderr and "MiB free" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (small_disk / "run" / "data").exists()
    assert [p.name for p in (small_disk / "run").iterdir()] == []  # no partial folder left either
    filler.unlink()

    # A stage on a full disk: named, and it resumes to the same bits once space is freed.
    ref = tmp_path / "ref"
    tool("data_prep/prepare.py", *PREPARE, "--out", ref / "data")
    tool("tools/make_nets.py", "--run", ref, *NETS)
    run = small_disk / "run"
    shutil.rmtree(run)
    shutil.copytree(ref, run)
    tool("tools/run_stage.py", "--run", ref, "--stage", "stage1", "--engine", "torch")
    filler = fill(small_disk, 150_000)
    r = tool("tools/run_stage.py", "--run", run, "--stage", "stage1", "--engine", "torch", check=False)
    assert r.returncode == 2 and "no space left on device" in r.stderr, r.stdout + r.stderr
    assert not (run / "models/bm.caffemodel").exists() and not (run / "models/bm.raw.caffemodel").exists()
    filler.unlink()
    tool("tools/run_stage.py", "--run", run, "--stage", "stage1", "--engine", "torch")
    assert (run / "models/bm.raw.caffemodel").read_bytes() == (ref / "models/bm.raw.caffemodel").read_bytes()
    entry = json.loads((run / "manifest.json").read_text())["artifacts"]["models/bm.caffemodel"]
    assert entry["sha256"] == json.loads((ref / "manifest.json").read_text())["artifacts"]["models/bm.caffemodel"][
        "sha256"]


def test_a_full_disk_error_from_the_library_names_the_path(small_disk):
    fill(small_disk, 4096)
    target = small_disk / "big.bin"
    with pytest.raises(OSError) as info:
        atomic_write(target, b"x" * 2_000_000)
    assert str(target) in str(info.value) and "no space left on device" in str(info.value)
    assert not target.exists() and [p.name for p in small_disk.iterdir()] == ["filler"]
