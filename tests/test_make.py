"""`make assemble` end to end on the built-in synthetic faces, through the Makefile a user
runs: every artifact, a complete manifest, nothing re-run when nothing changed, and a
changed setting re-running what depends on it."""

from __future__ import annotations

import json

import pytest
from conftest import MAKE_TINY, make


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    run = tmp_path_factory.mktemp("make") / "run"
    settings = [f"RUN={run}", *MAKE_TINY]
    out = make("evaluate", *settings)
    return run, settings, out.stdout


def test_make_runs_algorithm_1_end_to_end(made):
    run, _, log = made
    order = ["prepare.py", "make_nets.py", "--stage stage1", "--eq 5", "--stage stage2", "--stage stage3",
             "--eq 9", "--stage heads", "assemble.py", "evaluate.py"]
    positions = [log.index(step) for step in order]
    assert positions == sorted(positions), "stages ran out of Algorithm 1's order"
    for artifact in ("data/manifest.json", "models/bm.caffemodel", "loss_weights/bm_eq5.json", "models/stage2.caffemodel",
                     "models/wm.caffemodel", "loss_weights/wm_eq9.json", "models/heads.caffemodel",
                     "models/am.caffemodel", "models/am_deploy.prototxt", "eval/test.json", "eval/test.md",
                     "eval/test_ced.png", "logs/stage1.log"):
        assert (run / artifact).exists(), artifact
    doc = json.loads((run / "manifest.json").read_text())["artifacts"]
    assert set(doc) >= {"models/bm.caffemodel", "loss_weights/bm_eq5.json", "models/stage2.caffemodel",
                        "models/wm.caffemodel", "loss_weights/wm_eq9.json", "models/heads.caffemodel",
                        "models/am.caffemodel", "eval/test.json"}
    for name in ("models/bm.caffemodel", "models/wm.caffemodel", "models/heads.caffemodel"):
        s = doc[name]["settings"]
        assert (s["schedule_scale"], s["seed"], s["layout"], s["batch_size"]) == (0.0002, 3, "5", 8)
        assert doc[name]["caffe_version"] == "1.0.0" and doc[name]["inputs"]
    res = json.loads((run / "eval/test.json").read_text())["results"]
    assert set(res) == {"BM", "WM", "AM"} and all(r["inter_ocular"]["faces"] == 16 for r in res.values())


def test_second_make_does_nothing(made):
    run, settings, _ = made
    assert make("-q", "evaluate", *settings, check=False).returncode == 0  # everything up to date
    again = make("assemble", *settings)
    assert "run_stage.py" not in again.stdout and "prepare.py" not in again.stdout, again.stdout


def test_a_changed_setting_reruns_what_depends_on_it(made):
    run, settings, _ = made
    changed = [s if not s.startswith("SCALE=") else "SCALE=0.0003" for s in settings]
    plan = make("-n", "assemble", *changed).stdout
    assert "--stage stage1" in plan and "assemble.py" in plan
    assert "prepare.py" not in plan  # the data do not depend on the schedule scale
