"""The stage's specification crosses into its child process (mcl.run.worker) as one JSON object:
StageSpec.to_json writes it, StageSpec.from_json reads it back and checks it once (validate, the
same check_training_options the stage runner applies before it starts the child). What is checked:
the round trip keeps every field (paths as paths); a specification with a field missing or unknown,
not JSON, an unknown engine, device or precision, or a flag that is not a boolean is refused by name;
the worker answers such a specification with an error event and exit status 3, before any training;
and the runner's command line carries the specification and nothing else of the stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from mcl.run.stage import StageError, StageSpec


def spec(**kw):
    base = dict(run=Path("/tmp/r"), name="stage2", init=Path("/tmp/r/models/bm.caffemodel"),
                out=Path("/tmp/r/models/stage2.caffemodel"), engine="torch", device="cpu", tf32=False,
                deterministic=True, keep_snapshots=True, precision="fp32")
    base.update(kw)
    return StageSpec(**base)


def test_the_round_trip_keeps_every_field():
    s = spec()
    back = StageSpec.from_json(s.to_json())
    assert back == s
    assert isinstance(back.run, Path) and isinstance(back.init, Path) and isinstance(back.out, Path)
    doc = json.loads(s.to_json())
    assert doc["run"] == "/tmp/r" and doc["keep_snapshots"] is True and doc["precision"] == "fp32"
    none = spec(init=None, engine="caffe")
    assert StageSpec.from_json(none.to_json()) == none


@pytest.mark.parametrize("change, named", [
    (lambda d: d.pop("precision"), "missing ['precision']"),
    (lambda d: d.update(colour="red"), "unknown ['colour']"),
    (lambda d: d.update(engine="tensorflow"), "unknown engine 'tensorflow'"),
    (lambda d: d.update(device="gpu0"), "--device 'gpu0': not a device"),
    (lambda d: d.update(precision="fp16"), "--precision 'fp16': not a precision"),
    (lambda d: d.update(tf32="off"), "tf32 must be true or false"),
    (lambda d: d.update(engine="caffe", device="cuda"), "the Caffe engine here is a CPU build"),
])
def test_a_bad_specification_is_refused_by_name(change, named):
    doc = json.loads(spec().to_json())
    change(doc)
    with pytest.raises(StageError, match=named.replace("[", r"\[").replace("]", r"\]")):
        StageSpec.from_json(json.dumps(doc))


def test_not_json_is_refused():
    with pytest.raises(StageError, match="not JSON"):
        StageSpec.from_json("{engine: torch")


def test_the_worker_refuses_a_bad_specification_before_training(tmp_path):
    doc = json.loads(spec(run=tmp_path, out=tmp_path / "x.caffemodel", init=None).to_json())
    doc["device"] = "tpu"
    proc = subprocess.run([sys.executable, "-m", "mcl.run.worker", "--spec", json.dumps(doc)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events == [{"event": "error", "message": "--device 'tpu': not a device (cpu, cuda or cuda:N)"}]
    assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "snapshots").exists()


def test_the_runner_passes_the_specification_whole(tmp_path, monkeypatch):
    """run_stage's child command: `python -m mcl.run.worker --spec JSON`, the JSON the spec's own."""
    from mcl.run import stage as stage_mod

    s = spec(run=tmp_path, init=None, out=tmp_path / "models/bm.raw.caffemodel", name="stage1")
    (tmp_path / "solvers").mkdir()
    (tmp_path / "solvers/stage1_solver.prototxt").write_text("")
    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, **kw):
        seen["cmd"] = cmd
        raise Stop

    monkeypatch.setattr(stage_mod.subprocess, "Popen", fake_popen)
    with pytest.raises(Stop):
        stage_mod.run_stage(s, progress=False)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "mcl.run.worker", "--spec"] and len(cmd) == 5
    assert StageSpec.from_json(cmd[4]) == s
