"""`make setup` with a user's own Caffe (MCL_CAFFE_ROOT): used without building when it
is a Caffe, refused with a message naming the step and the way out when it is not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import ROOT


def setup(env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600)


def current_caffe_root() -> Path:
    import caffe
    return Path(caffe.__file__).resolve().parents[2]  # <root>/python/caffe/__init__.py


def test_own_caffe_is_used_without_building():
    root = current_caffe_root()
    proc = setup({"MCL_CAFFE_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert f"using your own Caffe at {root}" in proc.stdout
    assert "version 1.0.0" in proc.stdout and "13/13 required layer types present" in proc.stdout
    assert "compiling" not in proc.stdout


def test_a_folder_that_is_not_caffe_is_refused_with_the_way_out(tmp_path):
    proc = setup({"MCL_CAFFE_ROOT": str(tmp_path)})
    assert proc.returncode != 0
    assert "step 'link caffe' failed" in proc.stderr and str(tmp_path) in proc.stderr
    assert "MCL_CAFFE_ROOT" in proc.stderr
    # The environment still points at the working Caffe.
    check = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "mcl.caffe.check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
