"""What a user reads off the outputs. Their mode: the one the user's umask gives a new file (0666
less the umask), as a plain `open()` would, though the atomic writes of mcl/fileio.py make them
under a temporary name of mode 0600 first (each case in a subprocess started under the umask).
The provenance under the audit's CED plot: what the run's manifest records of each model, as the
evaluation's plots say it, not the defaults (a model of the torch engine labelled caffe)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, synthetic_batch, write_hdf5

MASKS = [0o022, 0o077, 0o002]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def under_umask(mask: int, *cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(mask), **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("mask", MASKS, ids=oct)
def test_an_atomic_write_follows_the_umask(tmp_path, mask):
    out = tmp_path / "sub" / "doc.json"
    under_umask(mask, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from mcl.fileio import atomic_write, "
                            f"file_mode; atomic_write({str(out)!r}, '{{}}'); print(oct(file_mode()))")
    assert mode(out) == 0o666 & ~mask
    assert out.read_text() == "{}" and os.listdir(out.parent) == ["doc.json"]


def test_the_umask_is_read_without_changing_it():
    """Read from /proc (no set-and-reset another thread could see), and a second reading agrees."""
    from mcl import fileio
    before = fileio._proc_umask()
    assert before is not None  # Linux since 4.7
    assert fileio.file_mode() == 0o666 & ~before == 0o666 & ~fileio._proc_umask()


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=oct)
def test_the_evaluation_report_follows_the_umask(tmp_path, mask):
    """tools/evaluate.py on a predictions file: its JSON, markdown and CED plot."""
    from mcl.data.splits import load_split
    from mcl.evaluation.predictions import write_predictions

    run = tmp_path / "run"
    write_hdf5(run, "test", *synthetic_batch(12, 5, 3))
    (run / "data" / "manifest.json").write_text(json.dumps({"source": {"dataset": "mtfl"},
                                                            "settings": {"layout": "5"}}))
    data = load_split(run, "test")
    pred = write_predictions(tmp_path / "pred.txt", data["landmarks_image"].reshape(12, 5, 2) + 1.5)
    out = tmp_path / "eval" / "test"
    under_umask(mask, ROOT / "tools/evaluate.py", "--run", run, "--predictions", f"shifted={pred}",
                "--speed-repeats", "0", "--out", out)
    written = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_name("test_ced.png")]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(0o666 & ~mask) for p in written}


# ---- the provenance written under the audit's CED plot -------------------------------------------

def audited_run(run):
    """A run manifest as the stages write it (BM and WM trained in the torch engine, AM assembled from
    the heads, a perturbed WM of the audit) and split crops of the `authors` protocol."""
    def trained(stage, scale, seed, inputs=()):
        return {"stage": stage, "sha256": "0" * 64, "engine": "torch", "device": "cpu", "bn_stats": "global",
                "settings": {"schedule_scale": scale, "seed": seed}, "inputs": {i: "0" * 64 for i in inputs}}
    artifacts = {"models/bm.caffemodel": trained("stage1", 0.05, 7),
                 "models/wm.caffemodel": trained("stage3", 0.05, 7, ["models/bm.caffemodel"]),
                 "models/heads.caffemodel": trained("heads", 0.05, 7, ["models/wm.caffemodel"]),
                 "models/am.caffemodel": {"stage": "assemble", "sha256": "0" * 64,
                                          "inputs": {"models/heads.caffemodel": "0" * 64}},
                 "audit/models/pert_0.1_wm.caffemodel": trained("stage3", 0.05, 11, ["models/bm.caffemodel"])}
    (run / "data").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
    (run / "data" / "manifest.json").write_text(json.dumps({"source": {"dataset": "mtfl"}, "settings": {
        "layout": "5", "test_crop": "authors", "crop_scale": 1.1}}))
    return run


def scored(model, errors):
    """A result as the audit writes it (mcl.evaluation.audit.score): the model's path and statistics
    setting, none of the rest of its provenance."""
    e = np.asarray(errors, dtype=np.float64)
    return {"model": model, "deploy": "nets/deploy.prototxt", "bn_stats": "global", "face_errors": e.tolist(),
            "inter_ocular": {"mean_error": float(e.mean())}}


def test_the_audit_ced_footnote_comes_from_the_manifest(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from mcl.evaluation import audit_report, report

    run = audited_run(tmp_path / "run")
    doc = {"models": {"BM": scored("models/bm.caffemodel", [0.04, 0.06]),
                      "AM": scored("models/am.caffemodel", [0.03, 0.05])},
           "ablations": {"perturbation": {"numbers": {"delta 0.1": scored("audit/models/pert_0.1_wm.caffemodel",
                                                                          [0.05, 0.07])}},
                         "occlusion": {"numbers": {}}}}
    curves = audit_report.ced_curves(run, doc)
    assert list(curves) == ["BM", "AM", "delta 0.1"]
    same = "scale 0.05, seed 7, torch, BN global, crop authors"
    assert report.provenance_label(curves["BM"]) == same
    assert report.provenance_label(curves["AM"]) == same  # from its heads, through the manifest
    assert report.provenance_label(curves["delta 0.1"]) == "scale 0.05, seed 11, torch, BN global, crop authors"

    notes = []
    text = Figure.text
    monkeypatch.setattr(Figure, "text", lambda fig, x, y, s, *a, **k: notes.append(s) or text(fig, x, y, s, *a, **k))
    report.plot_ced(curves, tmp_path / "audit_ced.png", "CED")
    assert notes == [f"BM: {same}", f"AM: {same}", "delta 0.1: scale 0.05, seed 11, torch, BN global, crop authors"]
    notes.clear()
    report.plot_ced({k: curves[k] for k in ("BM", "AM")}, tmp_path / "two.png", "CED")
    assert notes == [same]  # one line where every model shares it
