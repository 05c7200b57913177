"""Whether a run folder is intact: every checksum its manifests recorded, computed again.

Two manifests record checksums:
  <run>/manifest.json       every artifact of Algorithm 1 (models, weights, evaluations):
                            its own sha256 and the sha256 of each input it was made from;
  <run>/data/manifest.json  (data_prep/prepare.py) the sha256 of every data file.
`check_run` recomputes all of them and names each file that is missing or differs.
`refuse_tampered` is the check a stage makes of its inputs before it trains: an input
that the run itself produced must still be the file the manifest recorded.
`set_aside_torn` is what `make` does first (`python -m mcl.records.verify --set-aside-torn RUN`):
a product whose bytes are not the ones its manifest recorded (a file torn by a crash
after its rename) is renamed to `<name>.torn`, so that make makes it again.

Because make runs that check before every plan, it is incremental: a file whose (size, mtime,
ctime, inode, device) are those of its last check keeps the sha256 found then, recorded beside
the run in `<run>/.verify-cache.json`; only new or changed files are read again. `--full` (and
`make verify`, tools/verify.py, `check_run`) reads every file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcl.fileio import atomic_write

# The readers of models and data (numpy, OpenCV, h5py, protobuf: half a second to import) are
# imported by the functions that need them: `--set-aside-torn` runs before every make and needs none.

RUN_MANIFEST = "manifest.json"
DATA_MANIFEST = "data/manifest.json"
CACHE_FILE = ".verify-cache.json"
# A file changed within this many seconds of its check may change again without a new mtime or
# ctime (timestamps are coarser than a write), so its digest is not kept.
RACY_S = 2.0


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
    """sha256 of each file once (a file is often the input of several artifacts). Given `known`
    (the digests of the last check, by path: the file's signature and its sha256), a file whose
    signature is unchanged is not read again; `seen` collects what the next check may reuse."""

    def __init__(self, known: dict | None = None):
        self.cache: dict[Path, str | None] = {}
        self.known = known
        self.seen: dict[str, dict] = {}

    def __call__(self, path: Path) -> str | None:
        path = path.resolve()
        if path not in self.cache:
            self.cache[path] = self._digest(path)
        return self.cache[path]

    def _digest(self, path: Path) -> str | None:
        if not path.is_file():
            return None
        if self.known is None:
            return self._hash(path)
        before = _signature(path)
        entry = self.known.get(str(path))
        if entry is not None and entry.get("signature") == before:
            self.seen[str(path)] = entry
            return entry["sha256"]
        digest = self._hash(path)
        # Kept only for bytes on disk (fsynced): a power cut cannot leave a torn file behind this record.
        if _signature(path) == before and not _racy(before) and _fsync(path):
            self.seen[str(path)] = {"signature": before, "sha256": digest}
        return digest

    def _hash(self, path: Path) -> str:
        from mcl.records.manifest import sha256
        return sha256(path)


def _signature(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: a write moves mtime and ctime (ctime even where mtime is
    set back by hand), a rename over it brings another inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _racy(signature: list[int]) -> bool:
    return time.time_ns() - max(signature[1], signature[2]) < RACY_S * 1e9


def _fsync(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def _read_cache(run: Path) -> dict:
    """The digests of the last check; an unreadable record is no record (every file is read again)."""
    try:
        doc = json.loads((run / CACHE_FILE).read_text())
        files = doc["files"] if doc.get("version") == 1 else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


def _write_cache(run: Path, seen: dict) -> None:
    """The digests of this check, for the next one. A record that cannot be written (a full disk, a run
    folder read-only to this user) costs only time: the next check reads every file again."""
    try:
        atomic_write(run / CACHE_FILE, json.dumps({"version": 1, "files": seen}, sort_keys=True) + "\n")
    except OSError:
        pass


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
    from mcl.caffe.netgen import parse_net, shape_points
    from mcl.data.readers import DataError
    from mcl.data.writers import check_hdf5_list, check_lmdb

    net = parse_net(net_path.read_text())
    try:
        n_points = shape_points(net)  # the landmarks its shape layer predicts, which the data must hold
    except ValueError:
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
    from mcl.caffe.caffemodel import ModelError, check_fits, load
    from mcl.caffe.proto import caffe_pb2

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


def set_aside_torn(run, full: bool = False) -> list[tuple[Path, Path]]:
    """Rename every artifact of the run manifest whose bytes differ from its record, and the data
    manifest where a data file differs from its record, to `<name>.torn`: the pipeline's rule for
    it then runs again. Returns (file, where it went). Unless `full`, a file unchanged since the last
    check (its signature, <run>/.verify-cache.json) is not read again."""
    run = Path(run)
    hasher = _Hasher(None if full else _read_cache(run))
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
    if not full:
        _write_cache(run, hasher.seen)
    return moved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Set aside the products of a run that are not what its manifests "
                                             "recorded (run by make before it plans).")
    ap.add_argument("--set-aside-torn", metavar="RUN", required=True)
    ap.add_argument("--full", action="store_true", help="read every file, not only those changed since the "
                    "last check (RUN/.verify-cache.json)")
    args = ap.parse_args(argv)
    try:
        moved = set_aside_torn(args.set_aside_torn, args.full)
    except (VerifyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p, aside in moved:
        print(f"{p}: not the file its manifest recorded (torn by a crash, or changed): set aside as "
              f"{aside.name}; make makes it again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
