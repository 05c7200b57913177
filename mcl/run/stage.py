"""The stage runner: one stage of Algorithm 1 trained resumably, in either engine, and recorded.

What a stage is (its product, its start, its loss weights, what it fixes) is the
table in `mcl.method.stages`; this module runs one row of it. The training itself
runs in a child process (`python -m mcl.run.worker`, one loop for both engines)
whose stderr, the engine's full log, goes to `<run>/logs/<stage>.log`; it reports
progress as JSON lines on stdout, which the parent shows as a progress bar.

Around the child, once for both engines: snapshots made from other inputs are
discarded (their fingerprint), a model already current for its inputs is not
trained again (the manifest), step 1 may start from the warm-up's solverstate,
the heads start from WM's shape layer, the BatchNorm statistics step makes the
product from the engine's raw model, and the manifest records what made it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mcl.caffe import bnstats, caffemodel, reweight
from mcl.caffe.proto import caffe_pb2
from mcl.caffe.runfiles import curve_dir, run_layout, stage_files
from mcl.engine import DEVICE_PATTERN, PRECISIONS  # torch-free: this module leaves torch unloaded
from mcl.fileio import atomic_write
from mcl.method.stages import STAGES, Resolved, resolve
from mcl.records import manifest
from mcl.records.provenance import engine_record, recorded_engine
from mcl.records.verify import check_stage_inputs

SNAPSHOT_RE = re.compile(r"_iter_(\d+)\.solverstate$")
ENGINES = ("caffe", "torch")
DEVICE_RE = re.compile(DEVICE_PATTERN)  # the worker checks what the machine has (mcl.engine.device)
SWITCHES = ("on", "off")  # --tf32, --deterministic
ROOT = Path(__file__).resolve().parents[2]
DISK_FULL_BYTES = 1 << 20  # less free than this after a failed stage: the disk filled up


class StageError(RuntimeError):
    """A stage that cannot start: a missing input or a model that does not fit the net."""


class SnapshotError(RuntimeError):
    """A snapshot that cannot be restored (cut short by a kill): the worker tries the one before."""


@dataclass
class StageSpec:
    run: Path
    name: str  # file stem under nets/ and solvers/: stage1, stage2, stage3, heads, head_<c>, pre_bm
    init: Path | None  # caffemodel to start from (by layer name), None for random init
    out: Path  # final caffemodel
    engine: str = "caffe"  # caffe (pycaffe, the reference) or torch (mcl.engine, Caffe's numerics in PyTorch)
    device: str = "cpu"  # torch engine only: cpu, cuda or cuda:N
    tf32: bool = False  # torch engine on cuda: TF32 matmuls and convolutions (opt-in; off: full float32)
    deterministic: bool = True  # torch engine on cuda: deterministic algorithms (the default; off: opt-out)
    keep_snapshots: bool = False  # keep every periodic snapshot's model in curve_dir (the learning curve)
    precision: str = "fp32"  # torch engine: fp32 (the default) or bf16 (bfloat16 autocast, opt-in; engine/solver.py)
    solver: Path | None = None  # its solver (mcl.caffe.runfiles.stage_files); None: solvers/<name>_solver.prototxt

    # The specification crosses into the stage's child process (mcl.run.worker) as one JSON object,
    # written by to_json and read back, checked once, by from_json.
    PATHS = ("run", "init", "out", "solver")
    FLAGS = ("tf32", "deterministic", "keep_snapshots")

    def validate(self) -> "StageSpec":
        """The options checked together, before anything is trained (check_training_options); self."""
        for name in self.FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise StageError(f"stage {self.name}: {name} must be true or false, not {getattr(self, name)!r}")
        check_training_options(self.engine, self.device, self.tf32, self.precision)
        return self

    def to_json(self) -> str:
        doc = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for name in self.PATHS:
            doc[name] = None if doc[name] is None else str(doc[name])
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, validate: bool = True) -> "StageSpec":
        """The specification to_json wrote; StageError naming what is wrong (not JSON, a field missing or
        unknown, an option check_training_options refuses). `validate` False: the caller checks it later."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StageError(f"stage specification: not JSON ({exc})") from None
        fields = set(cls.__dataclass_fields__)
        if not isinstance(doc, dict) or set(doc) != fields:
            got = set(doc) if isinstance(doc, dict) else set()
            raise StageError(f"stage specification: fields {sorted(fields)} expected; missing "
                             f"{sorted(fields - got)}, unknown {sorted(got - fields)}")
        for name in cls.PATHS:
            if doc[name] is not None:
                doc[name] = Path(doc[name])
        spec = cls(**doc)
        return spec.validate() if validate else spec

    @property
    def solver_path(self) -> Path:
        return self.solver or self.run / "solvers" / f"{self.name}_solver.prototxt"

    @property
    def log_path(self) -> Path:
        return self.run / "logs" / f"{self.name}.log"

    @property
    def snapshot_prefix(self) -> Path:
        return self.run / "snapshots" / self.name

    @property
    def curve_dir(self) -> Path:
        """Where KEEP_SNAPSHOTS=on keeps the model of every periodic snapshot (tools/curve.py scores them)."""
        return curve_dir(self.run, self.name)


def snapshots(spec: StageSpec) -> list[tuple[int, Path]]:
    """(iteration, solverstate) of every snapshot whose caffemodel is there too, newest first."""
    folder = spec.snapshot_prefix.parent
    found = []
    if folder.is_dir():
        for p in folder.glob(f"{spec.snapshot_prefix.name}_iter_*.solverstate"):
            m = SNAPSHOT_RE.search(p.name)
            if m and p.with_suffix(".caffemodel").exists():
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def run_stage(spec: StageSpec, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train `spec` in a child process; returns a summary. Raises StageError on failure."""
    spec.validate()
    if not spec.solver_path.exists():
        raise StageError(f"{spec.solver_path}: solver missing (generate the run's nets: tools/make_nets.py --run RUN, which make runs for RUN/nets/.generated)")
    if spec.init is not None and not Path(spec.init).exists():
        raise StageError(f"{spec.init}: the model this stage starts from is missing")
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    spec.snapshot_prefix.parent.mkdir(parents=True, exist_ok=True)
    if spec.init is not None:
        spec = dataclasses.replace(spec, init=Path(spec.init).resolve())
    cmd = [sys.executable, "-m", "mcl.run.worker", "--spec", spec.to_json()]
    if stop_after is not None:
        cmd += ["--stop-after", str(stop_after)]
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    summary = {"stage": spec.name, "resumed_from": 0, "last": None}
    bar = None
    t0 = time.time()
    with open(spec.log_path, "a") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            for line in proc.stdout:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if ev["event"] == "error":
                    summary["error"] = ev["message"]
                elif ev["event"] == "engine":  # the device the stage trains on, as the worker sees it
                    summary["engine"] = {k: v for k, v in ev.items() if k != "event"}
                elif ev["event"] == "resumed":
                    summary["resumed_from"] = ev["iter"]
                    print(f"[{spec.name}] resuming from iteration {ev['iter']} ({ev['from']})", flush=True)
                elif ev["event"] == "iter":
                    summary["last"] = ev
                    if progress and bar is None and sys.stdout.isatty():
                        from tqdm import tqdm
                        bar = tqdm(total=ev["max_iter"], initial=ev["start"], desc=spec.name, unit="it",
                                   dynamic_ncols=True, file=sys.stdout)
                    if bar is not None:
                        bar.update(ev["iter"] - bar.n)
                        bar.set_postfix(loss=f"{ev['loss']:.4g}", lr=f"{ev['lr']:.3g}")
                    elif progress and _tenth(ev):
                        left = ev["elapsed"] / max(1, ev["iter"] - ev["start"]) * (ev["max_iter"] - ev["iter"])
                        print(f"[{spec.name}] iter {ev['iter']}/{ev['max_iter']} loss {ev['loss']:.4g} "
                              f"lr {ev['lr']:.3g}, about {left:.0f} s left", flush=True)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
        rc = proc.wait()
    if bar is not None:
        bar.close()
    summary["wall_time_s"] = time.time() - t0
    if rc == 130:
        raise StageError(f"{spec.name}: interrupted; a snapshot was written and the next run resumes from it")
    if "error" in summary:
        raise StageError(summary["error"])
    if rc != 0:
        what = "Caffe" if spec.engine == "caffe" else "the torch engine"
        free = shutil.disk_usage(spec.run).free
        if free < DISK_FULL_BYTES:  # Caffe aborts on a write that fails
            raise StageError(f"{spec.name}: {what} failed (exit {rc}) with the disk of {spec.run} full "
                             f"({free / 2 ** 20:.1f} MiB free); free some space and "
                             f"run it again: it resumes from the last snapshot (see {spec.log_path})")
        raise StageError(f"{spec.name}: {what} failed (exit {rc}); see {spec.log_path}")
    if spec.keep_snapshots:  # the models along the way, for the learning curve; solverstates are not kept
        spec.curve_dir.mkdir(exist_ok=True)
        for _, state in snapshots(spec):
            model = state.with_suffix(".caffemodel")
            kept = spec.curve_dir / model.name
            if not kept.exists():
                os.link(model, kept)
    for _, state in snapshots(spec)[1:]:  # a finished stage keeps only its last snapshot
        state.unlink(missing_ok=True)
        state.with_suffix(".caffemodel").unlink(missing_ok=True)
    return summary


def _tenth(ev: dict) -> bool:
    """Whether this progress event crosses a tenth of the stage (for logs without a terminal)."""
    step = max(1, ev["max_iter"] // 10)
    return ev["iter"] == ev["max_iter"] or ev["iter"] % step == 0


# ---- one stage of a run, around the child -------------------------------------------------

def fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(manifest.sha256(p).encode())
    return h.hexdigest()


def prepare_snapshots(spec: StageSpec, inputs: list[Path]) -> None:
    """Snapshots made from other inputs (another init model, other weights) are discarded."""
    fp = fingerprint(inputs) + ("" if spec.engine == "caffe" else f" engine={spec.engine} device={spec.device}")
    fp += " tf32=on" if spec.tf32 else ""  # TF32 rounds otherwise: a stage is not resumed across it
    fp += f" precision={spec.precision}" if spec.precision != "fp32" else ""  # nor across bfloat16
    stamp = spec.snapshot_prefix.parent / f"{spec.name}.inputs"
    if stamp.exists() and stamp.read_text() != fp:
        for _, state in snapshots(spec):
            state.unlink(missing_ok=True)
            state.with_suffix(".caffemodel").unlink(missing_ok=True)
        fillers_stamp(spec).unlink(missing_ok=True)
        print(f"[{spec.name}] inputs changed since the last snapshots: starting afresh")
    atomic_write(stamp, fp)


def fillers_stamp(spec: StageSpec) -> Path:
    """Where the torch engine notes whose fillers drew the iteration-0 weights of a stage it started
    (its snapshots do not say), so that the process that resumes and finishes it can record them."""
    return spec.snapshot_prefix.parent / f"{spec.name}.fillers"


def train_one(run: Path, name: str, init: Path | None, out: Path, weights: Path | None, stage: str,
              bn_stats: str = bnstats.DEFAULT, bn_batches: int = bnstats.DEFAULT_BATCHES,
              engine: str = "caffe", device: str = "cpu", warmup: Path | None = None, tf32: bool = False,
              deterministic: bool = True, keep_snapshots: bool = False, record: dict | None = None,
              precision: str = "fp32") -> dict:
    """Train the net `name` (a stage or a named copy of one) into `out`, then its statistics step.

    A finished stage is kept when its inputs are unchanged and the engine is the same, whatever the
    device: its manifest entries keep what the training process recorded (device, GPU, TF32,
    determinism), which a later run with another DEVICE, TF32 or DETERMINISTIC does not rewrite.
    Another precision (PRECISION, fp32 or bf16) trains it again, as another engine does.
    """
    try:  # the generated net and solver, or the stage's own copies (its loss weights; a named row's snapshots)
        net_path, solver_path, changes = stage_files(run, stage, name, weights)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    if weights is not None:
        print(reweight.change_table(changes, limit=8))
        print(f"loss weights from {weights} -> {net_path.relative_to(run)} (nets/ is left as generated)")
    # The engine's model goes to <out>.raw.caffemodel; the statistics step makes <out> from it.
    raw = bnstats.raw_path(out)
    spec = StageSpec(run, name, init, raw, engine, device, tf32, deterministic, keep_snapshots, precision,
                     solver_path)
    inputs = [solver_path, net_path] + ([init] if init else []) + ([warmup, warmup.with_suffix(".caffemodel")]
                                                                    if warmup else [])
    settings = manifest.solver_settings(solver_path, stage)
    data_manifest = run / "data" / "manifest.json"  # the training data, where data_prep wrote them
    raw_inputs = inputs + ([weights] if weights else []) + ([data_manifest] if data_manifest.exists() else [])
    known = manifest.entry(run, raw) or {}
    if manifest.is_current(run, raw, raw_inputs) and known.get("engine", "caffe") == engine and \
            known.get("precision", "fp32") == precision:  # only the statistics step again
        e = manifest.entry(run, raw)
        summary, wall = {"resumed_from": e.get("resumed_from_iter", 0), "last": {"loss": e.get("final_loss")}}, 0.0
        # what trained it, not what is asked now
        trained_by = recorded_engine(e) | {"precision": e.get("precision", "fp32")}
        asked = engine_record(engine, device) | ({"tf32": tf32} if engine == "torch" else {})
        other = {k: v for k, v in asked.items() if k in ("device", "tf32") and trained_by.get(k, v) != v}
        print(f"[{name}] the engine's model {raw.name} is current for these inputs: training skipped"
              + (f" (kept as trained, with {', '.join(f'{k} {trained_by[k]}' for k in other)}; delete it to "
                 "train it again)" if other else ""))
    else:
        prepare_snapshots(spec, inputs)
        if warmup is not None and not snapshots(spec):
            seed_from_warmup(spec, warmup)
        t0 = time.time()
        summary = run_stage(spec)
        wall = time.time() - t0
        trained_by = engine_record(engine, device, summary.get("engine")) | {"precision": precision}
        manifest.record(run, raw, stage, settings, raw_inputs, wall, resumed_from_iter=summary["resumed_from"],
                        final_loss=(summary["last"] or {}).get("loss"), log=str(spec.log_path.relative_to(run)),
                        bn_stats="running", **trained_by, **({"warmup": str(warmup.relative_to(run))} if warmup else {}))
    last = summary["last"] or {}
    if last.get("loss") is not None and not math.isfinite(last["loss"]):
        print(f"[{name}] WARNING: training diverged: the loss is {last['loss']} at the end of the stage "
              f"(see {spec.log_path}); its model's predictions will not be finite", file=sys.stderr)
    t1 = time.time()
    try:
        stats = bnstats.finish_stage(run, net_path, raw, out, bn_stats, bn_batches)
    except ImportError as exc:  # pycaffe there but broken (the check in `train` caught a missing one)
        raise StageError(no_caffe_for_stats(name, raw, exc)) from None
    entry = manifest.record(run, out, stage, settings, raw_inputs + [raw],
                            wall + time.time() - t1, resumed_from_iter=summary["resumed_from"],
                            final_loss=last.get("loss"), log=str(spec.log_path.relative_to(run)), **stats,
                            **trained_by, **(record or {}))
    how = (f"BatchNorm statistics recomputed over {stats['bn_batches']} training batches" if bn_stats == "recomputed"
           else "Caffe's running BatchNorm statistics kept")
    print(f"[{name}] done in {wall:.1f} s, {how} ({time.time() - t1:.1f} s) -> {out}")
    return entry


def no_caffe_for_stats(name: str, raw: Path | None, exc: BaseException | None = None) -> str:
    """The error of `--bn-stats recomputed` where pycaffe does not import."""
    why = f" ({exc})" if exc is not None else ""
    kept = (f"; the engine's model {raw} is kept, and the same command with --bn-stats running (BN_STATS=running) "
            "finishes the stage from it without training again") if raw is not None else ""
    return (f"{name}: --bn-stats recomputed: the BatchNorm statistics step runs in Caffe, and pycaffe does not "
            f"import here{why}: build Caffe (`make setup`), or keep the engine's running statistics with "
            f"--bn-stats running{kept}")


def check_engine_options(engine: str = "caffe", device: str = "cpu", tf32: bool = False, deterministic: bool = True,
                         bn_stats: str = bnstats.DEFAULT, precision: str = "fp32", **_) -> None:
    """The engine options that cannot work together, named before anything is trained: the stage's own
    (check_training_options, which StageSpec.validate runs too) and the statistics step's."""
    check_training_options(engine, device, tf32, precision)
    if engine == "torch" and bn_stats == "recomputed" and importlib.util.find_spec("caffe") is None:
        raise StageError(no_caffe_for_stats("the stage", None))


def check_training_options(engine: str, device: str, tf32: bool, precision: str) -> None:
    """Engine, device, TF32 and precision: each one known, and the combination one that can train
    (the machine's own GPUs and bfloat16 are checked where the stage runs: mcl.engine.device)."""
    if engine not in ENGINES:
        raise StageError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not DEVICE_RE.fullmatch(str(device)):
        raise StageError(f"--device {device!r}: not a device (cpu, cuda or cuda:N)")
    if engine == "caffe" and device != "cpu":
        raise StageError(f"the Caffe engine here is a CPU build: use --engine torch for --device {device}")
    if tf32 and (engine != "torch" or device == "cpu"):
        raise StageError(f"--tf32 on: TF32 exists only on a CUDA device in the torch engine "
                         f"(here --engine {engine} --device {device})")
    if precision not in PRECISIONS:
        raise StageError(f"--precision {precision!r}: not a precision (choose one of {', '.join(PRECISIONS)})")
    if precision != "fp32":  # bfloat16: the torch engine on a device that has it (PrecisionError, a ValueError)
        from mcl.engine.device import check_precision
        check_precision(precision, device if device == "cpu" else None, engine)  # a GPU's: in the worker


def seed_from_warmup(spec: StageSpec, state: Path) -> None:
    """Step 1 resumes from the warm-up's solverstate (METHOD §5.5): it becomes the stage's first snapshot,
    so the runner resumes from it as from any snapshot (weights, momentum, iteration, data position)."""
    it = int(SNAPSHOT_RE.search(state.name).group(1))
    solver_state = caffe_pb2.SolverState()
    solver_state.ParseFromString(state.read_bytes())
    model = spec.snapshot_prefix.with_name(f"{spec.snapshot_prefix.name}_iter_{it}.caffemodel")
    atomic_write(model, state.with_suffix(".caffemodel").read_bytes())
    solver_state.learned_net = str(model.relative_to(spec.run))
    atomic_write(model.with_suffix(".solverstate"), solver_state.SerializeToString())
    fillers_stamp(spec).unlink(missing_ok=True)  # its iteration-0 weights are the warm-up's
    print(f"[{spec.name}] starting from the warm-up's solverstate at iteration {it} ({state.name})")


def warmup_state(run: Path) -> Path:
    """The warm-up's final solverstate (a finished warm-up keeps only its last snapshot)."""
    found = snapshots(StageSpec(run, "warmup", None, run / STAGES["warmup"].model))
    if not found:
        raise StageError(f"{run / 'snapshots'}: no warm-up snapshot (train --stage warmup first)")
    return found[0][1]


def heads_init(run: Path, wm: Path, clusters, name: str = "heads") -> Path:
    """WM with its shape layer copied to every head (METHOD §5.1: heads start from WM's layer)."""
    path = run / "snapshots" / f"{name}_init.caffemodel"
    caffemodel.save(caffemodel.init_heads(caffemodel.load(wm), clusters), path)
    return path


UNIFORM = "uniform"  # --loss-weights uniform: u_j = 1, whatever the table says


def from_table(run: Path, row: Resolved, init: Path | None, weights: Path | str | None, out: Path | None
               ) -> tuple[Path | None, Path | None, Path, dict]:
    """The row's start, loss weights and product (mcl.method.stages.resolve), with the ones given on the
    command line as overrides: an override that contradicts the table is said on stderr and returned
    in the record the manifest keeps (`table_overrides`)."""
    def table(rel: str | None) -> Path | None:
        return (run / rel).resolve() if rel else None

    overrides = {}

    def pick(what: str, flag: str, given, wanted: Path | None):
        if given is None:
            return wanted
        given = None if given == UNIFORM else Path(given).resolve()
        if given != wanted:
            said = lambda p, none: str(p.relative_to(run)) if p and p.is_relative_to(run) else str(p or none)  # noqa: E731
            none = "u_j = 1" if what == "loss_weights" else "Caffe's fillers"
            overrides[what] = {"table": said(wanted, none), "given": said(given, none)}
            print(f"[{row.name}] note: {flag} {said(given, none)} overrides the stage table's "
                  f"{said(wanted, none)} (mcl/method/stages.py); recorded in the manifest", file=sys.stderr)
        return given

    init = pick("init", "--init", init, table(row.init))
    weights = pick("loss_weights", "--loss-weights", weights, table(row.loss_weights))
    out = pick("out", "--out", out, table(row.out))
    return init, weights, out, overrides


def train(run: Path, stage: str, init: Path | None = None, weights: Path | str | None = None, out: Path | None = None,
          name: str | None = None, separate: bool = False, warmup: bool = False, **opts) -> Path:
    """One row of Algorithm 1 (`stage`) in a run folder: the whole job behind tools/run_stage.py.

    What the row starts from, trains with and makes comes from the stage table
    (`mcl.method.stages.resolve`); `init`, `weights` (a file, or "uniform") and `out` override it,
    said on stderr and recorded. `name` trains a named copy of the stage's net and solver: an
    audit row of the table (its own start, loss weights and product) or an ablation of one's own;
    `separate` trains each head alone (head_<cluster>), listed in models/heads_separate.json.
    `opts`: bn_stats, bn_batches, engine, device, precision. Returns the product (or the listing of separate heads).
    """
    run = Path(run).resolve()
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
    check_engine_options(**opts)
    if name and separate:
        raise StageError("--name and --separate cannot be combined")
    try:
        row = resolve(stage, name, separate)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    asked_init = init
    init, weights, out, overrides = from_table(run, row, init, weights, out)
    if init is not None and not init.exists():
        if asked_init is None:
            raise StageError(f"{init}: {row.name} starts from this model (the stage table, mcl/method/stages.py), "
                             f"which is not there: train the row that makes it first, or give --init")
        raise StageError(f"{init}: the model this stage starts from is missing")
    check_stage_inputs(run, run / "nets" / f"{stage}_train.prototxt", [p for p in (init, weights) if p and p.exists()],
                       out)
    if warmup and stage != "stage1":
        raise StageError("--warmup: only step 1 (stage1) starts from the warm-up")
    if weights is not None and not weights.exists():
        how = "make weights-bm / weights-wm (tools/compute_weights.py)" if "loss_weights" not in overrides else "it"
        raise StageError(f"{weights}: {row.name} trains with these loss weights (the stage table, "
                         f"mcl/method/stages.py), which are not there: compute them first ({how}), or give "
                         f"--loss-weights FILE, or --loss-weights uniform for u_j = 1")
    record = {"table_overrides": overrides} if overrides else {}
    if row.init_build != "heads":
        train_one(run, row.name, init, out, weights, stage, warmup=warmup_state(run) if warmup else None,
                  record=record, **opts)
        return out
    if init is None:
        raise StageError(f"{row.name}: the heads start from a trained model's shape layer (METHOD §5.1): give --init")
    layout = run_layout(run)
    hinit = heads_init(run, init, layout.cluster_names, row.name)
    if not separate:
        train_one(run, row.name, hinit, out, weights, "heads", record=record, **opts)
        return out
    models = {}
    for c in layout.cluster_names:
        out_c = run / "models" / f"head_{c}.caffemodel"
        if not out_c.exists():
            train_one(run, f"head_{c}", hinit, out_c, weights, "heads", record=record, **opts)
        models[c] = str(out_c.relative_to(run))
    atomic_write(out, json.dumps({"layout": layout.name, "heads": models}, indent=2) + "\n")
    print(f"[heads] {len(models)} separate head runs -> {out}")
    return out
