"""Kill -9 at seeded random moments, during data preparation and during a training stage:
after each kill the next run finishes, and what it makes equals the uninterrupted run's
(data byte for byte, weights bit for bit), with nothing left behind. Data preparation also on
real MTFL faces with 2 workers, killed and on a full disk (the real data at MCL_DATA: skipped
where missing, failed under CI=true).

The moments are drawn over the wall time the uninterrupted run takes, timed in the test
itself (the shared tiny run of conftest is the reference for the bits). Each kill hits either the whole process group (as
a crash would) or the tool alone (its workers must then end by themselves)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import PREPARE, ROOT, descendants, tool, tree, wait_ended
from test_durability import fill, small_disk  # noqa: F401 - the fixture, shared
from test_real_data import real_data, small_mtfl  # noqa: F401 - the fixture, shared

from mcl.records.verify import check_run

KILLS = 10  # per tool, each one catching the tool running
SEED = 2024


class Moments:
    """(trial, when, whom) of each kill: uniform over the tool's wall time, the whole group or the
    tool alone. Trials go on until KILLS of them caught the tool running (a moment past its end just
    lets it finish), at most 4 x KILLS. The wall time is the reference run's, and shrinks to any
    shorter full run start_and_kill sees (a run that ended before its moment): on a shared machine
    whose load falls during the test, the moments follow the tool's speed now, not at the start."""

    def __init__(self, seconds: float, seed: int):
        self.seconds, self.rng = seconds, random.Random(seed)

    def __iter__(self):
        for trial in range(4 * KILLS):
            yield trial, self.rng.uniform(0.02, 1.0) * self.seconds, self.rng.choice(("group", "tool"))

    def finished_in(self, seconds: float) -> None:
        self.seconds = min(self.seconds, seconds)


def start_and_kill(cmd: list, when: float, whom: str, schedule: Moments | None = None) -> bool:
    """Start `cmd` in its own process group and kill -9 it (or its group) after `when`
    seconds; True if it was still running then. Returns once every process it started
    has ended. A run that ended first tells `schedule` how long a whole run takes now."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, *map(str, cmd)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(when)
        if schedule is not None:
            schedule.finished_in(time.time() - t0)
        return False
    except subprocess.TimeoutExpired:
        pass
    kids = descendants(proc.pid)
    if whom == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_ended(kids, 30) == [], f"processes left after kill -9 of the {whom}"
    return True


def wall_time(cmd: list) -> float:
    """Seconds the command takes uninterrupted, timed here and now: the kill moments are drawn over
    it, so a machine busier or idler than when the shared fixtures were built does not shift them."""
    t0 = time.time()
    tool(*map(str, cmd))
    return time.time() - t0


def test_killed_data_preparation_reruns_to_identical_bytes(tiny_run, tmp_path):
    base, _ = tiny_run
    want = tree(str(base / "data"))
    killed = 0
    wall = wall_time([ROOT / "data_prep/prepare.py", *PREPARE, "--out", tmp_path / "ref" / "data"])
    for k, when, whom in (schedule := Moments(wall, SEED)):
        folder = tmp_path / f"k{k}"
        cmd = [ROOT / "data_prep/prepare.py", *PREPARE, "--out", folder / "data"]
        killed += start_and_kill(cmd, when, whom, schedule)
        tool(*map(str, cmd))
        got = tree(str(folder / "data"))
        assert sorted(got) == sorted(want), f"kill {k} at {when:.2f} s ({whom})"
        assert all(got[f] == want[f] for f in want), [f for f in want if got[f] != want[f]]
        assert os.listdir(folder) == ["data"], f"left behind: {os.listdir(folder)}"
        if killed == KILLS:
            break
    print(f"data preparation: {killed} kills caught it running in {k + 1} trials")
    assert killed == KILLS


def test_killed_stage_reruns_to_identical_weights(tiny_run, tmp_path):
    base, run = tiny_run
    want = {m: (run / "models" / m).read_bytes() for m in ("bm.caffemodel", "bm.raw.caffemodel")}
    killed = 0
    shutil.copytree(base, tmp_path / "ref")
    wall = wall_time([ROOT / "tools/run_stage.py", "--run", tmp_path / "ref", "--stage", "stage1"])
    for k, when, whom in (schedule := Moments(wall, SEED + 1)):
        folder = tmp_path / f"k{k}"
        shutil.copytree(base, folder)
        cmd = [ROOT / "tools/run_stage.py", "--run", folder, "--stage", "stage1"]
        killed += start_and_kill(cmd, when, whom, schedule)
        tool(*map(str, cmd))
        for m, data in want.items():
            assert (folder / "models" / m).read_bytes() == data, f"{m} after kill {k} at {when:.2f} s ({whom})"
        report = check_run(folder)
        assert report.intact, [str(p) for p in report.problems]
        assert not list((folder / "models").glob(".*")), "a temporary model was left"
        if killed == KILLS:
            break
    print(f"stage 1: {killed} kills caught it running in {k + 1} trials")
    assert killed == KILLS


@pytest.mark.parametrize("suffix", [".solverstate", ".caffemodel"])
def test_a_snapshot_cut_short_is_passed_over(tiny_run, tmp_path, suffix):
    """A kill while Caffe writes a snapshot leaves it cut short under its final name;
    Caffe aborts on such a file, so resuming takes the snapshot before it."""
    from mcl.run.stage import StageError, StageSpec, run_stage
    base, run = tiny_run
    folder = tmp_path / "r"
    shutil.copytree(base, folder)
    with pytest.raises(StageError):  # dies after iteration 12, a snapshot after each
        run_stage(StageSpec(folder, "stage1", None, folder / "models/bm.raw.caffemodel"), progress=False,
                  stop_after=12)
    newest = folder / "snapshots" / f"stage1_iter_12{suffix}"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    out = tool("tools/run_stage.py", "--run", folder, "--stage", "stage1")
    assert "resuming from iteration 11 " in out.stdout
    for m in ("bm.caffemodel", "bm.raw.caffemodel"):
        assert (folder / "models" / m).read_bytes() == (run / "models" / m).read_bytes(), m


def test_a_run_killed_between_its_two_renames_is_cleaned_up(tiny_run, tmp_path):
    """Replacing a dataset moves the old one aside, then the new one in: a kill between
    the two leaves both in hidden folders; the next run removes them and finishes."""
    base, _ = tiny_run
    dead = subprocess.Popen(["true"])
    dead.wait()
    shutil.copytree(base / "data", tmp_path / f".data.old-{dead.pid}-x1" / "data")
    shutil.copytree(base / "data", tmp_path / f".data.partial-{dead.pid}-x2")
    tool("data_prep/prepare.py", *PREPARE, "--out", tmp_path / "data")
    assert os.listdir(tmp_path) == ["data"]
    assert tree(str(tmp_path / "data")) == tree(str(base / "data"))



# ---- every stage type in both engines, the statistics step and assembly -------------------------------
# (extra arguments, products compared): each trained in a copy of the tiny run, which holds BM and its
# Eq. 5 weights (stage 1 in a copy of its base, before BM); its products (and the raw model beside
# each) must come out bit for bit.
STAGE_TYPES = {
    "stage1": ([], ["bm"]),
    "stage2": (["--init", "models/bm.caffemodel", "--loss-weights", "loss_weights/bm_eq5.json"], ["stage2"]),
    "stage3": (["--init", "models/bm.caffemodel", "--loss-weights", "loss_weights/bm_eq5.json"], ["wm"]),
    "heads": (["--init", "models/bm.caffemodel", "--loss-weights", "uniform"], ["heads"]),
    "heads-separate": (["--init", "models/bm.caffemodel", "--loss-weights", "uniform", "--separate"],
                       ["head_left_eye", "head_right_eye", "head_nose", "head_mouth"]),
    "pre_bm": ([], ["pre_bm"]),
    "equal_budget": (["--init", "models/bm.caffemodel"], ["equal_budget"]),
}
KILLS_PER_STAGE = 2


def stage_copy(run, folder, products):
    shutil.copytree(run, folder)
    for p in products:  # the tiny run already holds the joint heads: trained afresh here
        for f in (folder / "models").glob(f"{p}*.caffemodel"):
            f.unlink()


@pytest.mark.parametrize("engine", ["caffe", "torch"])
@pytest.mark.parametrize("kind", sorted(STAGE_TYPES))
def test_every_stage_type_killed_reruns_to_identical_weights(tiny_run, tmp_path, engine, kind):
    """Seeded kill -9 of the stage tool (or its whole group) over its wall time, statistics step
    included; the next run gives the uninterrupted run's bits and the run verifies intact."""
    base, run = tiny_run
    extra, products = STAGE_TYPES[kind]
    stage = kind.split("-")[0]
    run = base if stage == "stage1" else run  # retraining BM would leave the run's Eq. 5 weights stale
    def cmd(folder):
        return [ROOT / "tools/run_stage.py", "--run", folder, "--stage", stage, "--engine", engine,
                *[str(folder / a) if "/" in a else a for a in extra]]
    ref = tmp_path / "ref"
    stage_copy(run, ref, products)
    wall = wall_time(cmd(ref))
    names = [f"{p}{raw}.caffemodel" for p in products for raw in ("", ".raw")]
    want = {m: (ref / "models" / m).read_bytes() for m in names}
    killed = 0
    seed = SEED + 100 + sorted(STAGE_TYPES).index(kind) * 2 + (engine == "torch")
    for k, when, whom in (schedule := Moments(wall, seed)):
        folder = tmp_path / f"k{k}"
        stage_copy(run, folder, products)
        killed += start_and_kill(cmd(folder), when, whom, schedule)
        tool(*map(str, cmd(folder)))
        for m, data in want.items():
            assert (folder / "models" / m).read_bytes() == data, f"{m} after kill {k} at {when:.2f} s ({whom})"
        report = check_run(folder)
        assert report.intact, [str(p) for p in report.problems]
        if killed == KILLS_PER_STAGE:
            break
    assert killed == KILLS_PER_STAGE


def test_assembly_killed_reruns_to_identical_bytes(tiny_run, tmp_path):
    _, run = tiny_run
    def cmd(folder):
        return [ROOT / "tools/assemble.py", "--run", folder, "--heads", folder / "models/heads.caffemodel"]
    ref = tmp_path / "ref"
    shutil.copytree(run, ref)
    wall = wall_time(cmd(ref))
    want = {m: (ref / "models" / m).read_bytes() for m in ("am.caffemodel", "am_deploy.prototxt")}
    killed = 0
    for k, when, whom in (schedule := Moments(wall, SEED + 200)):
        folder = tmp_path / f"k{k}"
        shutil.copytree(run, folder)
        killed += start_and_kill(cmd(folder), when, whom, schedule)
        tool(*map(str, cmd(folder)))
        for m, data in want.items():
            assert (folder / "models" / m).read_bytes() == data, f"{m} after kill {k} at {when:.2f} s ({whom})"
        assert check_run(folder).intact
        assert not list((folder / "models").glob(".*")), "a temporary file was left"
        if killed == KILLS_PER_STAGE:
            break
    assert killed == KILLS_PER_STAGE


# ---- real faces: MTFL data preparation with 2 workers, killed and on a full disk ----------------------
# ~150 training and 40 test faces of the real MTFL folder (pictures linked, tests/test_real_data.py),
# prepared by 2 workers: real JPEGs of two sizes, decoded and augmented in the workers.

def mtfl_prepare(mtfl, out) -> list:
    return [ROOT / "data_prep/prepare.py", "--dataset", "mtfl", "--data-root", mtfl, "--workers", "2",
            "--copies", "4", "--seed", "5", "--quiet", "--force", "--out", out]


def test_killed_mtfl_preparation_reruns_to_identical_bytes(real_data, tmp_path):  # noqa: F811
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 150, 40)
    ref = tmp_path / "ref" / "data"
    wall = wall_time(mtfl_prepare(mtfl, ref))
    want = tree(str(ref))
    killed = 0
    for k, when, whom in (schedule := Moments(wall, SEED + 300)):
        folder = tmp_path / f"k{k}"
        cmd = mtfl_prepare(mtfl, folder / "data")
        killed += start_and_kill(cmd, when, whom, schedule)
        # Nothing that looks finished: the dataset is whole under its name, or not there at all.
        if (folder / "data").exists():
            assert tree(str(folder / "data")) == want, f"a partial dataset under data/ after kill {k} ({whom})"
        tool(*map(str, cmd))
        got = tree(str(folder / "data"))
        assert sorted(got) == sorted(want), f"kill {k} at {when:.2f} s ({whom})"
        assert all(got[f] == want[f] for f in want), [f for f in want if got[f] != want[f]]
        assert os.listdir(folder) == ["data"], f"left behind: {os.listdir(folder)}"
        if killed == KILLS:
            break
    print(f"MTFL preparation: {killed} kills caught it running in {k + 1} trials")
    assert killed == KILLS


@pytest.mark.parametrize("leave", [300_000, 3_000_000])
def test_mtfl_preparation_on_a_full_disk_is_named_and_leaves_nothing(real_data, small_disk, tmp_path,  # noqa: F811
                                                                    leave):
    """The disk fills while the workers write (`leave` bytes free: within the first split, or
    later); once space is freed the same command prepares the uninterrupted run's bytes."""
    mtfl = small_mtfl(real_data, tmp_path / "mtfl", 150, 40)
    tool(*map(str, mtfl_prepare(mtfl, tmp_path / "ref" / "data")))
    out = small_disk / "run" / "data"
    filler = fill(small_disk, leave)
    r = tool(*map(str, mtfl_prepare(mtfl, out)), check=False)
    assert r.returncode == 2 and "no space left on device" in r.stderr and "MiB free" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and os.listdir(small_disk / "run") == []  # no dataset, no partial folder
    filler.unlink()
    tool(*map(str, mtfl_prepare(mtfl, out)))
    assert tree(str(out)) == tree(str(tmp_path / "ref" / "data"))
