"""Whether a run folder is intact: every checksum its manifests recorded, computed again.

Two manifests record checksums:
  <run>/manifest.json       every artifact of Algorithm 1 (models, weights, evaluations):
                            its own sha256 and the sha256 of each input it was made from;
  <run>/data/manifest.json  (data_prep/prepare.py) the sha256 of every data file.
`check_run` recomputes all of them and names each file that is missing or differs.
`refuse_tampered` is the check a stage makes of its inputs before it trains: an input
that the run itself produced must still be the file the manifest recorded.
`set_aside_torn` is what `make` does first (`python -m mcl.run.verify --set-aside-torn RUN`):
a product whose bytes are not the ones its manifest recorded (a file torn by a crash
after its rename) is renamed to `<name>.torn`, so that make makes it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mcl.caffe.caffemodel import ModelError, check_fits, load
from mcl.caffe.netgen import net_layout_name, parse_net
from mcl.caffe.proto import caffe_pb2
from mcl.data.readers import DataError
from mcl.data.writers import check_hdf5_list, check_lmdb
from mcl.run.manifest import sha256

RUN_MANIFEST = "manifest.json"
DATA_MANIFEST = "data/manifest.json"


class VerifyError(ValueError):
    """A run's file differs from what its manifest recorded (or a manifest is unreadable)."""


@dataclass
class Problem:
    path: Path  # the file, as it lies on disk
    state: str  # "missing" | "differs"
    recorded: str  # sha256 the manifest recorded
    found: str | None  # sha256 now (None: missing)
    why: str  # which record: "artifact of stage1", "input of models/wm.caffemodel", ...

    def __str__(self) -> str:
        if self.state == "missing":
            return f"{self.path}: missing ({self.why})"
        return (f"{self.path}: differs from the manifest ({self.why}; recorded sha256 {self.recorded[:12]}..., "
                f"now {self.found[:12]}...)")


@dataclass
class Report:
    run: Path
    checked: int = 0  # checksums compared
    files: set = field(default_factory=set)  # distinct files they cover
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


class _Hasher:
    """sha256 of each file once (a file is often the input of several artifacts)."""

    def __init__(self):
        self.cache: dict[Path, str | None] = {}

    def __call__(self, path: Path) -> str | None:

        path = path.resolve()
        if path not in self.cache:
            self.cache[path] = sha256(path) if path.is_file() else None
        return self.cache[path]


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise VerifyError(f"{path}: missing (no manifest: nothing records what this run holds)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise VerifyError(f"{path}: not a manifest (a JSON object is expected)")
    return doc


def _path(run: Path, key: str) -> Path:
    """A manifest key: relative to the run, or absolute where the file lies outside it."""
    p = Path(key)
    return p if p.is_absolute() else run / p


def _compare(report: Report, hasher: _Hasher, path: Path, recorded: str, why: str) -> None:
    report.checked += 1
    report.files.add(path.resolve())
    found = hasher(path)
    if found != recorded:
        report.problems.append(Problem(path, "missing" if found is None else "differs", recorded, found, why))


def _check_data_manifest(report: Report, hasher: _Hasher, manifest_path: Path) -> None:
    doc = _load(manifest_path)
    files = doc.get("files")
    if not isinstance(files, dict):
        raise VerifyError(f"{manifest_path}: has no 'files' table of checksums")
    rel = manifest_path.parent
    for name, digest in sorted(files.items()):
        _compare(report, hasher, rel / name, digest, f"listed in {manifest_path.name} of {rel.name}/")


def check_run(run) -> Report:
    """Every checksum of the run's manifest (artifacts and their inputs) and of its data
    manifest, recomputed. Raises VerifyError when a manifest is unreadable, or when the run
    manifest is missing from a run that has no data manifest either."""
    run = Path(run)
    report = Report(run)
    hasher = _Hasher()
    data_manifests = {(run / DATA_MANIFEST).resolve()} if (run / DATA_MANIFEST).is_file() else set()
    if data_manifests and not (run / RUN_MANIFEST).exists():  # data prepared, nothing trained yet
        artifacts = {}
    else:
        artifacts = _load(run / RUN_MANIFEST).get("artifacts")
    if not isinstance(artifacts, dict):
        raise VerifyError(f"{run / RUN_MANIFEST}: has no 'artifacts' table")
    for key, entry in sorted(artifacts.items()):
        _compare(report, hasher, _path(run, key), entry.get("sha256", ""), f"artifact of {entry.get('stage', '?')}")
        for ikey, digest in sorted(entry.get("inputs", {}).items()):
            path = _path(run, ikey)
            _compare(report, hasher, path, digest, f"input of {key}")
            if path.name == "manifest.json" and path.is_file():
                data_manifests.add(path.resolve())
    for manifest_path in sorted(data_manifests):
        _check_data_manifest(report, hasher, manifest_path)
    return report


def refuse_tampered(run, inputs) -> None:
    """Raise VerifyError naming the first input of a stage that the run produced but that
    no longer is the file its manifest recorded: a model or weights file listed as an
    artifact, or (for the data manifest) any data file it lists. Inputs the run did not
    make (a user's own model) are not checked: nothing records them."""
    run = Path(run)
    path = run / RUN_MANIFEST
    artifacts = _load(path).get("artifacts", {}) if path.is_file() else {}
    by_path = {_path(run, key).resolve(): (key, e) for key, e in artifacts.items()}
    hasher = _Hasher()
    for p in inputs:
        p = Path(p)
        if p.resolve() in by_path:
            key, e = by_path[p.resolve()]
            found = hasher(p)
            if found != e.get("sha256"):
                state = "is missing" if found is None else "differs from"
                raise VerifyError(f"{p}: {state} the file {e.get('stage', 'its stage')} made (the manifest "
                                  f"recorded sha256 {e.get('sha256', '')[:12]}...): refusing to train on a "
                                  f"changed input; make it again, or see `make verify RUN={run}`")
        if p.name == "manifest.json" and p.is_file():
            report = Report(run)
            _check_data_manifest(report, hasher, p)
            if report.problems:
                raise VerifyError(f"{report.problems[0]}: refusing to train on changed data; prepare it "
                                  f"again, or see `make verify RUN={run}`")


def check_stage_inputs(run, train_net, inputs, out=None) -> None:
    """What a stage checks before Caffe starts, raising VerifyError naming the file:
    the inputs the run made are unchanged (refuse_tampered); the training data its net
    reads are there, not empty, of the right shapes, with finite targets (Caffe aborts on
    a missing dataset or an empty list, and trains on NaN without a word); the output's
    folder can be made (else the stage would fail only once trained)."""
    run = Path(run)
    refuse_tampered(run, [*inputs, run / DATA_MANIFEST])
    if Path(train_net).is_file():
        check_net_data(run, Path(train_net))
    if out is not None:
        try:
            check_creatable(Path(out).parent)
        except OSError as exc:
            raise VerifyError(f"{exc.filename}: {exc.strerror} (output {out})") from None


def check_creatable(folder) -> None:
    """Raise OSError naming the nearest existing ancestor of `folder` unless it is a folder
    this process may write in, so that a tool stops before its work, creating nothing,
    when its output cannot be written (a path below a regular file: permissions stop no
    write of root's)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise NotADirectoryError(20, "not a folder: no output can be written below it", str(p))
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(13, "no output can be written in this folder", str(p))


def check_net_data(run: Path, net_path: Path) -> None:
    """The sources of a train net's data layers (HDF5 list files, LMDBs), relative to the
    run folder Caffe runs in, checked as mcl.data.writers describes them."""

    net = parse_net(net_path.read_text())
    try:
        n_points = int(net_layout_name(net))
    except (ValueError, TypeError):
        n_points = None
    try:
        for layer in net.layer:
            if layer.type == "HDF5Data":
                check_hdf5_list(str(run / layer.hdf5_data_param.source), ("data", "landmarks", "inv_iod"),
                                n_points, base=str(run))
            elif layer.type == "Data":
                check_lmdb(str(run / layer.data_param.source))
    except DataError as exc:
        raise VerifyError(f"{exc} (read by {net_path.name})") from None


def snapshot_intact(state_path, net) -> bool:
    """Whether a Caffe snapshot (`<prefix>_iter_N.solverstate` and its `.caffemodel`) was
    written whole. Caffe writes both straight under their final names, so a run killed
    while it snapshots leaves one cut short, and restoring from it aborts the process
    (a failed CHECK, no exception): every later resume would die the same way. A cut
    that happens to fall between two fields still parses, so the contents are counted
    against the net (`net`: the pycaffe net the snapshot is for)."""

    state_path = Path(state_path)
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(state_path.read_bytes())
    except Exception:  # protobuf's DecodeError, or an unreadable file
        return False
    if len(state.history) != sum(len(blobs) for blobs in net.params.values()):
        return False
    model = state_path.with_suffix(".caffemodel")
    try:
        check_fits(load(model), net, model, require_all=True)
    except ModelError:
        return False
    return True


def set_aside_torn(run) -> list[tuple[Path, Path]]:
    """Rename every artifact of the run manifest whose bytes differ from its record, and the data
    manifest where a data file differs from its record, to `<name>.torn`: the pipeline's rule for
    it then runs again. Returns (file, where it went)."""
    run = Path(run)
    hasher = _Hasher()
    torn = []
    path = run / RUN_MANIFEST
    artifacts = _load(path).get("artifacts", {}) if path.is_file() else {}
    for key, entry in sorted(artifacts.items()):
        p = _path(run, key)
        if p.is_file() and hasher(p) != entry.get("sha256"):
            torn.append(p)
    data = run / DATA_MANIFEST
    if data.is_file():
        report = Report(run)
        try:
            _check_data_manifest(report, hasher, data)
        except VerifyError:
            report.problems.append(None)
        if report.problems:
            torn.append(data)
    moved = []
    for p in torn:
        aside = p.with_name(p.name + ".torn")
        p.replace(aside)
        moved.append((p, aside))
    return moved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Set aside the products of a run that are not what its manifests "
                                             "recorded (run by make before it plans).")
    ap.add_argument("--set-aside-torn", metavar="RUN", required=True)
    args = ap.parse_args(argv)
    try:
        moved = set_aside_torn(args.set_aside_torn)
    except (VerifyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p, aside in moved:
        print(f"{p}: not the file its manifest recorded (torn by a crash, or changed): set aside as "
              f"{aside.name}; make makes it again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
