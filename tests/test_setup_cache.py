"""scripts/setup.sh's Caffe build cache under concurrency: one build per cache key, however many
setups ask for it at once; a setup killed during its compile leaves nothing under the key and no
lock, and the next setup builds.

Every test runs the script's caffe step alone (MCL_SETUP_STEPS=caffe) into a cache of its own
(MCL_CACHE), so neither apt, pip nor the checkout's .venv is touched. The fast tests put stand-ins
for the programs that fetch and compile (apt-get, dpkg-source, patch, cmake, make) first on PATH:
the script's own locking, build folder and naming run unchanged, only the 8 minutes of download
and compile do not. The `slow` ones fetch and compile Caffe for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

SETUP = ROOT / "scripts" / "setup.sh"
WAITING = "waiting for the Caffe build of another setup, pid "

# Stand-ins: `make` logs one line per compile into $FAKE_LOG and takes $FAKE_COMPILE_S seconds (exits
# 1 where $FAKE_FAIL is set); the others make just what the next command of the script reads.
STAND_INS = {
    "apt-get": 'case " $* " in *" source "*) touch caffe_1.0.dsc;; esac\n',
    "dpkg-source": 'mkdir -p "$3/python/caffe"\n',
    "patch": "cat > /dev/null\n",
    "cmake": "exit 0\n",
    "make": 'echo "$$" >> "$FAKE_LOG"\nsleep "${FAKE_COMPILE_S:-1}"\n[ -z "$FAKE_FAIL" ] || exit 1\n'
            "mkdir -p ../python/caffe && touch ../python/caffe/_caffe.so\n",
}


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def stand_ins(tmp_path) -> dict:
    """PATH with the stand-ins first, and the log of their compiles."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "compiles.log"
    log.touch()
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log)}


def start(cache: Path, **env) -> subprocess.Popen:
    """The caffe step of setup.sh into `cache`, in its own process group; its output as text."""
    return subprocess.Popen(["bash", str(SETUP)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env=dict(os.environ, MCL_CACHE=str(cache), MCL_SETUP_STEPS="caffe", JOBS="2", **env))


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def key_of(cache: Path) -> str:
    """The one cache key in `cache` (from its lock file)."""
    locks = [p.name for p in cache.glob("caffe-*.lock")]
    assert len(locks) == 1, sorted(os.listdir(cache))
    return locks[0][: -len(".lock")]


def assert_one_complete_build(cache: Path, builder_pid: int) -> None:
    """The key names the builder's folder, complete; nothing else but the lock file is left."""
    key = key_of(cache)
    assert sorted(os.listdir(cache)) == sorted([key, f"{key}.lock", f"{key}.build-{builder_pid}"])
    assert (cache / key).is_symlink() and (cache / key).resolve() == cache / f"{key}.build-{builder_pid}"
    assert (cache / key / ".complete").exists()
    assert (cache / f"{key}.lock").read_text() == ""  # the builder cleared its pid as it let go


def compiles(env: dict) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().split()


def wait_for_compile(env: dict, n: int, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while len(compiles(env)) < n and time.time() < deadline:
        time.sleep(0.05)
    assert len(compiles(env)) >= n, "the compile never started"


# ---- the locking, with stand-ins for the download and the compile ----------------------------------

def test_two_setups_at_once_build_once_and_both_use_it(cache, stand_ins):
    first, second = start(cache, FAKE_COMPILE_S="8", **stand_ins), start(cache, FAKE_COMPILE_S="8", **stand_ins)
    out = {first: finish(first, 300), second: finish(second, 300)}
    assert first.returncode == 0 and second.returncode == 0, out
    assert len(compiles(stand_ins)) == 1, out
    builder, waiter = (first, second) if "compiling" in out[first] else (second, first)
    assert "compiling" not in out[waiter] and "caffe: built into" in out[builder]
    assert f"{WAITING}{builder.pid}\n" in out[waiter], out[waiter]
    assert "built by the setup waited for" in out[waiter]
    assert_one_complete_build(cache, builder.pid)
    third = start(cache, **stand_ins)  # later setups use the build at once
    assert "caffe: cached build" in finish(third, 120) and third.returncode == 0
    assert len(compiles(stand_ins)) == 1


@pytest.mark.parametrize("whom", ["group", "shell"])
def test_a_setup_killed_while_it_compiles_leaves_nothing_under_the_key(cache, stand_ins, whom):
    """kill -9 of the setup's process group (a crash), or of the script alone (its compile then
    runs on, holding the lock it inherited, and the next setup waits for it to end): nothing named
    by the key, and the next setup builds from scratch, without a stale lock."""
    killed = start(cache, FAKE_COMPILE_S="15" if whom == "shell" else "600", **stand_ins)
    wait_for_compile(stand_ins, 1)
    os.killpg(killed.pid, signal.SIGKILL) if whom == "group" else os.kill(killed.pid, signal.SIGKILL)
    killed.wait(60)
    killed.stdout.close()  # not read to its end: the script's orphans hold it open
    key = key_of(cache)
    assert not (cache / key).exists() and (cache / f"{key}.build-{killed.pid}").is_dir()
    nxt = start(cache, **stand_ins)
    out = finish(nxt, 300)
    assert nxt.returncode == 0, out
    assert len(compiles(stand_ins)) == 2
    if whom == "group":
        assert WAITING not in out  # the kernel let the dead setup's lock go
    else:
        assert f"{WAITING}{killed.pid}" in out, out  # its compile still held the lock
    assert_one_complete_build(cache, nxt.pid)


def test_a_failed_build_is_taken_over_by_the_setup_waiting(cache, stand_ins):
    failing = start(cache, FAKE_COMPILE_S="5", FAKE_FAIL="1", **stand_ins)
    wait_for_compile(stand_ins, 1)
    waiting = start(cache, **stand_ins)
    out = finish(failing, 120)
    assert failing.returncode == 1 and "step 'compile' failed" in out, out
    out = finish(waiting, 120)
    assert waiting.returncode == 0 and f"{WAITING}{failing.pid}" in out, out
    assert len(compiles(stand_ins)) == 2
    assert_one_complete_build(cache, waiting.pid)


def test_a_folder_half_built_in_place_is_replaced(cache, stand_ins):
    """Versions before this one built under the key itself: a folder there without .complete
    (a killed build of theirs) is removed and built again."""
    first = start(cache, **stand_ins)
    finish(first, 120)
    key = key_of(cache)
    (cache / key).unlink()
    for p in cache.glob(f"{key}.build-*"):
        p.rename(cache / key)
    (cache / key / ".complete").unlink()
    nxt = start(cache, **stand_ins)
    out = finish(nxt, 120)
    assert nxt.returncode == 0 and "caffe: built into" in out, out
    assert_one_complete_build(cache, nxt.pid)


def test_an_unknown_step_is_named(cache):
    r = subprocess.run(["bash", str(SETUP)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MCL_CACHE=str(cache), MCL_SETUP_STEPS="caffe compile"))
    assert r.returncode == 1 and "step 'compile' failed: no such step" in r.stderr, r.stderr
    assert not cache.exists()


# ---- the real download and compile (about 8 minutes each on 2 cores) -------------------------------

def caffe_imports(cache: Path) -> None:
    """pycaffe of the cached build imports through the key's name (its libraries' RUNPATH and the
    _caffe.so link hold the build folder's path, which the key's link keeps valid)."""
    python = ROOT / ".venv" / "bin" / "python"
    key = cache / key_of(cache)
    r = subprocess.run([str(python if python.exists() else sys.executable), "-c",
                        f"import sys; sys.path.insert(0, {str(key / 'src' / 'python')!r}); import caffe; "
                        "print(caffe.__file__)"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, GLOG_minloglevel="2"))
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_setups_killed_mid_compile_then_two_at_once_compile_once(cache):
    """The real compile, once: a setup killed 20 s into its compile leaves nothing under the key; then
    two setups started together on that cache both succeed, with one compile between them."""
    killed = start(cache)
    deadline = time.time() + 1200
    for line in killed.stdout:  # the download takes a while: wait for the compile itself
        if "compiling" in line or time.time() > deadline:
            break
    assert killed.poll() is None, "the setup ended before its compile"
    time.sleep(20)  # well into the compile: the compilers are running
    os.killpg(killed.pid, signal.SIGKILL)
    finish(killed, 60)
    assert not (cache / key_of(cache)).exists(), "a half-built folder under the key"
    first, second = start(cache), start(cache)
    out = {first: finish(first, 3000), second: finish(second, 3000)}
    assert first.returncode == 0 and second.returncode == 0, {p.pid: o[-3000:] for p, o in out.items()}
    assert sum("compiling" in o for o in out.values()) == 1, out
    builder, waiter = (first, second) if "compiling" in out[first] else (second, first)
    assert f"{WAITING}{builder.pid}" in out[waiter], out[waiter]
    assert_one_complete_build(cache, builder.pid)
    caffe_imports(cache)
