"""The paper's experiment on real faces, reported beside the paper's table (`make paper`, tools/paper_report.py).

For a run trained on real data (MTFL -> AFLW, the paper's 5-point benchmark) it scores BM, WM, AM
and the equal-budget control, and the peers' predictions files, on the test split and on every
extra test split (mcl/data/extra.py), then writes RUN/paper/report.md and report.json:

- per split: mean error, failure rates (> 10 %, > 8 %), AUC and the CED plot of every model and peer;
- the paper's figures for the benchmark (mcl/method/paper.py: MCL 5.38, RecNet's implied 5.60) and
  the table cells our copy of the paper lost, marked as lost;
- the paper's claims (WM < BM, AM < WM, AM's failure rate < BM's) and ours beyond the paper
  (WM and AM < the control, AM < each peer) as paired per-face verdicts: the mean per-face
  difference beyond PAIRED_Z of its standard errors (the test faces' noise);
- what 80 x 80 pictures cost: the same models on the same faces at full resolution and reduced;
- the same claims across seeds (the sweep's verdicts, seed noise), where a sweep is given;
- the learning curve, the schedule, the engine, the seed, data checksums and wall times.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from mcl.caffe.proto import caffe_pb2
from mcl.data.extra import split_source
from mcl.data.writers import sha256_file
from mcl.evaluation import curves
from mcl.evaluation.audit import PAIRED_Z, paired
from mcl.evaluation.evaluate import FAILURE_THRESHOLDS
from mcl.evaluation.job import ModelSource, parse_model, run_evaluation
from mcl.evaluation.report import plot_ced
from mcl.fileio import atomic_write
from mcl.method import paper
from mcl.method.stages import ASSEMBLED_DEPLOY, ASSEMBLED_MODEL, STAGES
from mcl.records import provenance

CONTROL = STAGES["equal_budget"].label  # "BM + equal budget"
# The models of the chain, from the stage table (Algorithm 1) and its assembly step.
MODELS = (("BM", STAGES["stage1"].model, None), ("WM", STAGES["stage3"].model, None),
          ("AM", ASSEMBLED_MODEL, ASSEMBLED_DEPLOY), (CONTROL, STAGES["equal_budget"].model, None))
TRAINED_STAGES = ("stage1", "stage2", "stage3", "heads", "equal_budget")
FAILURE = f"{FAILURE_THRESHOLDS[0]:.2f}"
# A peer's mean offset differing between two test sets by more than this (share of d) is read as the
# annotations' frames differing, not the peer: no trained method moves its points by that between sets.
ANNOTATION_SHIFT = 0.02


class PaperReportError(ValueError):
    """A run that lacks what the report reads (a model, a split, a peers file), named."""


# ---- the claims ---------------------------------------------------------------------------------

def claims_for(names: list[str]) -> list[dict]:
    """(key, text, lower, higher, metric, paper finding) of every claim the models at hand can test."""
    out = [
        ("wm_vs_bm", "WM < BM", "WM", "BM", "mean_error", "bm_wm_am.wm_vs_bm"),
        ("am_vs_wm", "AM < WM", "AM", "WM", "mean_error", "bm_wm_am.am_vs_wm"),
        ("am_vs_bm", "AM < BM", "AM", "BM", "mean_error", None),
        ("am_failure_vs_bm", "AM's failure rate < BM's", "AM", "BM", "failure", "bm_wm_am.am_failure"),
        ("wm_vs_equal_budget", f"WM < {CONTROL}", "WM", CONTROL, "mean_error", None),
        ("am_vs_equal_budget", f"AM < {CONTROL}", "AM", CONTROL, "mean_error", None),
    ]
    out += [(f"am_vs_{n}", f"AM < {n}", "AM", n, "mean_error", None) for n in names
            if n not in {m for m, _, _ in MODELS}]
    return [dict(zip(("key", "claim", "lower", "higher", "metric", "finding"), c)) for c in out
            if c[2] in names and c[3] in names]


def verdict(p: dict) -> str:
    if p["better"]:
        return "holds beyond the test faces' noise"
    if p["worse"]:
        return "reversed beyond the test faces' noise"
    return "not beyond the test faces' noise"


def paired_claims(face_errors: dict[str, np.ndarray]) -> list[dict]:
    """Each claim as a paired per-face comparison (lower - higher; failure: 0/1 per face)."""
    findings = {f.key: f for f in paper.findings()}
    out = []
    for c in claims_for(list(face_errors)):
        a, b = np.asarray(face_errors[c["lower"]]), np.asarray(face_errors[c["higher"]])
        if c["metric"] == "failure":
            t = FAILURE_THRESHOLDS[0]
            a, b = (~(a <= t)).astype(float), (~(b <= t)).astype(float)
        p = paired(a, b)
        f = findings.get(c["finding"]) if c["finding"] else None
        out.append({**c, **p, "verdict": verdict(p),
                    "paper": {"claim": f.claim, "where": f.where} if f else None})
    return out


# ---- the evaluations --------------------------------------------------------------------------

def peer_predictions(run: Path, split: str) -> list[tuple[str, Path]]:
    """(name, file) of every peer's predictions on `split` (tools/peers.py's peers.json)."""
    path = run / "peers" / ("peers.json" if split == "test" else f"{split}/peers.json")
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    if "predictions" in doc:  # [{"name", "file"}]
        return [(p["name"], Path(p["file"])) for p in doc["predictions"]]
    out = []
    for key, file in doc.get("files", {}).items():
        name = f"dlib ({key})" if key in ("box", "detector") else key.replace("_", " (", 1) + ")"
        out.append((name, Path(file)))
    return out


def model_sources(run: Path) -> list[ModelSource]:
    missing = [str(run / m) for _, m, _ in MODELS if not (run / m).exists()]
    if missing:
        raise PaperReportError(f"models missing: {', '.join(missing)} (make paper trains them)")
    return [parse_model(f"{name}={model}" + (f":{deploy}" if deploy else ""), run) for name, model, deploy in MODELS]


def evaluate_split(run: Path, split: str, speed_repeats: int = 0) -> dict:
    ev = run_evaluation(run, split, model_sources(run), peer_predictions(run, split), speed_repeats=speed_repeats,
                        log=lambda s: print(f"[{split}] {s}"))
    doc = ev.doc
    dataset, root, st = split_source(run, split)
    doc["source"] = {"dataset": dataset, "data_root": root, "reduce_width": st.get("reduce_width")}
    doc["claims"] = paired_claims({n: np.asarray(r["face_errors"]) for n, r in doc["results"].items()})
    doc["offsets"] = mean_offsets(ev.predictions, ev.data)
    doc["offset_removed"] = offset_removed(ev.predictions, ev.data, doc["offsets"], "AM")
    return doc


def offset_removed(predictions: dict, data: dict, offsets: dict, model: str) -> dict[str, float]:
    """A diagnostic, not a result: `model`'s mean error once each peer's mean signed offset on this split is
    taken off its points (an offset measured by a method never trained on this data set, but on these
    test faces). Where it falls far, the split's annotation sits apart from where the methods put the points."""
    if model not in predictions:
        return {}
    n = len(data["iod_image"])
    gt = data["landmarks_image"].reshape(n, -1, 2)
    d = data["iod_image"][:, None, None]
    out = {}
    for peer, off in offsets.items():
        if peer in (m for m, _, _ in MODELS):
            continue
        moved = predictions[model] - np.asarray(off)[None, None, :] * d
        out[peer] = float((np.linalg.norm(moved - gt, axis=-1) / data["iod_image"][:, None]).mean())
    return out


def mean_offsets(predictions: dict[str, np.ndarray], data: dict) -> dict[str, list[float]]:
    """Each model's mean signed offset (x, y) from the ground truth, in units of d over all faces and points:
    a shift every model shares on one split and not on another points at the split's annotation, not a model."""
    n = len(data["iod_image"])
    gt = data["landmarks_image"].reshape(n, -1, 2)
    d = data["iod_image"][:, None, None]
    return {name: [float(v) for v in ((p - gt) / d).reshape(-1, 2).mean(axis=0)] for name, p in predictions.items()}


def evaluation_inputs(run: Path, split: str) -> list[Path]:
    """What a split's evaluation reads: the models, the split's crops and the peers' predictions."""
    listing = run / "data" / f"{split}.txt"
    crops = [run / line.strip() for line in listing.read_text().splitlines() if line.strip()] if listing.exists() else []
    return [s.model for s in model_sources(run)] + [listing] + crops + [p for _, p in peer_predictions(run, split)]


def reusable_evaluation(run: Path, split: str, out: Path) -> dict | None:
    """The split's evaluation of an earlier report, where it is newer than everything it read (a report
    remade for a new sweep does not score the same models again)."""
    path = out / f"eval_{split}.json"
    try:
        made = path.stat().st_mtime
        if all(p.stat().st_mtime < made for p in evaluation_inputs(run, split)):
            print(f"[{split}] the evaluation in {path} is current: reused")
            return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    return None


def resolution_cost(evals: dict[str, dict], full: str, reduced: str) -> dict:
    """The same models on the same faces at full resolution and reduced: paired per-face differences."""
    out = {}
    for name in (m for m, _, _ in MODELS):
        a = np.asarray(evals[reduced]["results"][name]["face_errors"])
        b = np.asarray(evals[full]["results"][name]["face_errors"])
        if len(a) != len(b):
            raise PaperReportError(f"splits {full} and {reduced} hold different faces ({len(b)} vs {len(a)})")
        out[name] = paired(a, b)
    return {"full": full, "reduced": reduced, "models": out}


# ---- what the run was ------------------------------------------------------------------------

def annotation_files(root: str) -> dict[str, str]:
    """Checksums of a data folder's annotation lists (the pictures are checksummed in the data's SHA256SUMS)."""
    out = {}
    for name in ("training.txt", "testing.txt", "train_images.txt", "test_images.txt", "boxes.txt"):
        p = Path(root) / name
        if p.exists():
            out[name] = sha256_file(str(p))
    return out


def schedule_of(run: Path) -> dict:
    """Per trained stage: iterations, base lr, stepsize, gamma, wall time, engine (the solvers and the manifest)."""
    man = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").exists() else {"artifacts": {}}
    out = {}
    for name in TRAINED_STAGES:
        path = run / "solvers" / f"{name}_solver.prototxt"
        if not path.exists():
            continue
        sp = text_format.Parse(path.read_text(), caffe_pb2.SolverParameter())
        entry = man["artifacts"].get(STAGES[name].model, {})
        raw = man["artifacts"].get(STAGES[name].model.replace(".caffemodel", ".raw.caffemodel"), {})
        out[name] = {"max_iter": sp.max_iter, "base_lr": sp.base_lr, "stepsize": sp.stepsize, "gamma": sp.gamma,
                     "training_s": raw.get("wall_time_s"), "with_statistics_step_s": entry.get("wall_time_s"),
                     "engine": entry.get("engine"), "threads": raw.get("threads") or entry.get("threads"),
                     "finished": entry.get("finished")}
        if entry.get("precision", "fp32") != "fp32":  # the torch engine's bfloat16 training (PRECISION=bf16)
            out[name]["precision"] = entry["precision"]
    return out


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "python": platform.python_version()}


# ---- the gap to the paper ------------------------------------------------------------------------

def schedule_share(short: dict | None, long_am: float, long_iters: int, short_iters: int | None,
                   paper_value: float, paper_iters: int) -> dict | None:
    """Two points of the learning curve (AM at the seeds' short schedule and at the run's), extrapolated
    log-linearly in stage 1's iterations to the paper's: a guess at what the schedule alone would give."""
    if not short or not short_iters or short_iters >= long_iters:
        return None
    e1, e2 = short["mean"], long_am
    slope = (e2 - e1) / math.log(long_iters / short_iters)
    at_paper = e2 + slope * math.log(paper_iters / long_iters)
    gap = long_am - paper_value
    return {"short": {"stage1_iterations": short_iters, "am_mean_error": e1},
            "long": {"stage1_iterations": long_iters, "am_mean_error": e2},
            "per_doubling": slope * math.log(2), "extrapolated_at_paper_schedule": at_paper,
            "paper_stage1_iterations": paper_iters, "gap": gap,
            "share_of_gap": (long_am - max(at_paper, paper_value)) / gap if gap > 0 else None}


# ---- the report ----------------------------------------------------------------------------------

def _pct(x, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}"


def _signed(x) -> str:
    return f"{100 * x:+.2f}"


def split_title(split: str, ev: dict) -> str:
    src = ev["source"]
    where = Path(src["data_root"]).name
    red = f", pictures reduced to {src['reduce_width']} px wide" if src.get("reduce_width") else ""
    return f"{split} ({ev['results']['AM']['inter_ocular']['faces']} faces of {where}{red})"


def markdown(doc: dict) -> str:
    bench = doc["paper"]
    L = [f"# The paper on real faces: {doc['dataset']} ({doc['layout']} points)", ""]
    L += [f"Run `{doc['run']}`, written {doc['written']}. Trained in the {doc['engine']} engine, seed {doc['seed']}, "
          f"schedule `{doc['schedule']}` (below), on {doc['machine']['cpu']} ({doc['machine']['cores']} cores). "
          "Mean errors are % of the inter-ocular distance (eye centres), as the paper's (Sec. IV-A-3).", ""]
    L += ["## What this confirms or refutes of the paper", ""]
    L += [f"- {s}" for s in doc["conclusions"]] + [""]
    for split, ev in doc["splits"].items():
        L += [f"## {split_title(split, ev)}", ""]
        L += ["| model | mean error (%) | failure > 10% (%) | failure > 8% (%) | AUC@0.10 | source |", "|---|---|---|---|---|---|"]
        for name, r in ev["results"].items():
            io = r["inter_ocular"]
            src = "ours" if r["source"] == "model" else "peer"
            L.append(f"| {name} | {_pct(io['mean_error'])} | {_pct(io['failure_rate']['0.10'], 1)} | "
                     f"{_pct(io['failure_rate']['0.08'], 1)} | {io['auc']['0.10']:.3f} | {src} |")
        if split == "test" and bench:
            for f in bench["figures"]:
                L.append(f"| {f['what']} | {f['value']:.2f} | lost | lost | lost | paper, {f['where']} |")
        L += ["", f"CED: `{ev['ced_plot']}`. Paired per-face verdicts (difference lower - higher in points, "
                   f"beyond {PAIRED_Z:g} standard errors of the {ev['results']['AM']['inter_ocular']['faces']} faces):",
              "", "| claim | difference | 2 SE | verdict | the paper |", "|---|---|---|---|---|"]
        for c in ev["claims"]:
            unit = " (failure share)" if c["metric"] == "failure" else ""
            L.append(f"| {c['claim']}{unit} | {_signed(c['mean_difference'])} | {100 * PAIRED_Z * c['standard_error']:.2f} "
                     f"| {c['verdict']} | {c['paper']['claim'] + ' (' + c['paper']['where'] + ')' if c['paper'] else 'beyond the paper'} |")
        L.append("")
    if any(ev.get("offsets") for ev in doc["splits"].values()):
        names = list(next(iter(doc["splits"].values()))["offsets"])
        L += ["## Mean signed offset of the predictions (x, y), % of d", "",
              "Averaged over faces and points: a shift that every model and peer shares on one split and not on "
              "another belongs to that split's annotation, not to a model.", "",
              "| split | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for split, ev in doc["splits"].items():
            L.append(f"| {split} | " + " | ".join(f"{100 * ev['offsets'][n][0]:+.1f}, {100 * ev['offsets'][n][1]:+.1f}"
                                                   if n in ev["offsets"] else "-" for n in names) + " |")
        L.append("")
    if doc.get("resolution"):
        r = doc["resolution"]
        L += [f"## What the 80 x 80 pictures cost", "",
              f"The same models on the same {r['models']['AM']['faces']} faces of `{r['full']}` at full resolution "
              f"and reduced as the AFLW pictures were (`{r['reduced']}`): reduced - full, points of mean error.", "",
              "| model | difference | 2 SE |", "|---|---|---|"]
        for name, p in r["models"].items():
            L.append(f"| {name} | {_signed(p['mean_difference'])} | {100 * PAIRED_Z * p['standard_error']:.2f} |")
        L.append("")
    if doc.get("gap"):
        L += ["## How far from the paper, and why", ""] + [f"- {s}" for s in doc["gap"]["text"]] + [""]
    if doc.get("sweep"):
        sw = doc["sweep"]
        L += [f"## Across seeds ({len(sw['seeds'])} seeds, schedule `{sw['schedule']}`)", "",
              f"From `{sw['path']}` (`make sweep`): each seed its own data split, augmentation and training. "
              "Seed noise, not the test faces', decides here.", "",
              "| model | mean error (%) mean ± sd [95% t interval] | per seed |", "|---|---|---|"]
        for name, m in sw["models"].items():
            me = m["mean_error"]
            L.append(f"| {name} | {_pct(me['mean'])} ± {_pct(me['sd'])} [{_pct(me['ci95'][0])}, {_pct(me['ci95'][1])}] | "
                     + ", ".join(_pct(v) for v in me["per_seed"].values()) + " |")
        L += ["", "| claim | mean difference [95% CI] | seeds agreeing | verdict |", "|---|---|---|---|"]
        for c in sw["claims"].values():
            L.append(f"| {c['claim']} | {_signed(c['mean'])} [{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}] | "
                     f"{c['seeds_agreeing']}/{c['n']} | {c['verdict']} |")
        L.append("")
    L += ["## Learning curve and schedule", "", f"![learning curves]({doc['curve_plot']})" if doc.get("curve_plot") else
          "(no learning curve: train with KEEP_SNAPSHOTS=on)", ""]
    L += ["| stage | iterations | base lr | x gamma every | training (s) | with statistics step (s) |",
          "|---|---|---|---|---|---|"]
    for name, s in doc["schedule_stages"].items():
        L.append(f"| {name} | {s['max_iter']} | {s['base_lr']:g} | {s['gamma']:g} every {s['stepsize']} | "
                 f"{s['training_s'] if s['training_s'] is not None else '-'} | "
                 f"{s['with_statistics_step_s'] if s['with_statistics_step_s'] is not None else '-'} |")
    tot = doc["training_wall_s"]
    L += ["", f"Training of the chain and the control: {tot / 60:.1f} min of wall time (the stages' own records, "
              "statistics steps included; data, weights, assembly and evaluation not counted).", ""]
    L += ["## Data", ""] + [f"- `{k}`: {v}" for k, v in doc["data"].items()] + [""]
    if doc.get("peer_mappings"):
        L += ["## Peers", ""] + [f"- {k}: {v}" for k, v in doc["peer_mappings"].items()] + [""]
    L += ["## The paper's table", "", "Cells our copy of the paper lost (never guessed here):", ""]
    L += [f"- {c}" for c in paper.TABLE_CELLS_NOT_IN_TEXT] + [""]
    return "\n".join(L) + "\n"


def conclusions(doc: dict) -> list[str]:
    """Plain sentences: each paper claim as the evidence decides it, and the distance to the paper's figure."""
    out = []
    test = doc["splits"].get("test")
    if test is None:
        return out
    am = test["results"]["AM"]["inter_ocular"]["mean_error"]
    for f in doc["paper"]["figures"] if doc["paper"] else []:
        if f["key"].startswith("mean_error.") and f["key"].count(".") == 1:
            out.append(f"AM reaches {100 * am:.2f}% on the test split against the paper's MCL {f['value']:.2f}%: "
                       f"{100 * am - f['value']:+.2f} points, not reproduced at this schedule (see 'How far from the "
                       "paper').")
    sweep = (doc.get("sweep") or {}).get("claims", {})  # the same keys as claims_for's
    for c in test["claims"]:
        if c["paper"] is None:
            continue
        across = sweep.get(c["key"])
        seeds = f"; across seeds: {across['verdict']}" if across else ""
        out.append(f"The paper's '{c['paper']['claim']}' ({c['paper']['where']}): {c['claim']} "
                   f"{_signed(c['mean_difference'])} points on this run's test faces, {c['verdict']}{seeds}.")
    for c in test["claims"]:
        if c["higher"] == CONTROL:
            across = sweep.get(c["key"])
            out.append(f"{c['claim']} (more training alone, beyond the paper): {_signed(c['mean_difference'])} points, "
                       f"{c['verdict']}" + (f"; across seeds: {across['verdict']}." if across else "."))
        elif c["paper"] is None and c["lower"] == "AM" and c["higher"] not in ("BM", "WM"):
            out.append(f"{c['claim']}: {_signed(c['mean_difference'])} points, {c['verdict']}.")
    return out


def write(run: Path, splits: list[str], out: Path, sweep: Path | None = None, speed_repeats: int = 0,
          peer_mappings: dict | None = None) -> dict:
    """The report; `peer_mappings`: how each peer's points become the layout's (mcl.port.peers, a floor above)."""
    run, out = Path(run).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = provenance.layout_of(run)
    data_man = json.loads((run / "data" / "manifest.json").read_text())
    dataset = data_man["source"]["dataset"]
    fig = paper.mean_error(dataset, layout.name, data_man["settings"].get("test_split"))
    bench = None
    if fig:
        figs = [fig] + ([paper.figure("mean_error.aflw.recnet")] if fig.key == "mean_error.aflw" else [])
        bench = {"figures": [{"key": f.key, "value": f.value, "what": "paper: MCL" if f is fig else
                              "paper: RecNet (implied)", "where": f.where} for f in figs]}
    evals = {}
    for split in splits:
        ev = reusable_evaluation(run, split, out) or evaluate_split(run, split, speed_repeats if split == "test" else 0)
        plot = out / f"ced_{split}.png"
        plot_ced(ev["results"], plot, f"{dataset}: {split}", limit=0.3)
        ev["ced_plot"] = plot.name
        atomic_write(out / f"eval_{split}.json", json.dumps(ev, indent=1) + "\n")
        evals[split] = ev
    stages = schedule_of(run)
    manifest_settings = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    engines = {provenance.engine_label(s) for s in stages.values() if s.get("engine")}
    doc = {"run": str(run), "written": time.strftime("%Y-%m-%d %H:%M:%S %z"), "dataset": dataset,
           "layout": layout.name, "engine": ", ".join(sorted(engines)) or "?",
           "seed": data_man["settings"].get("seed"), "schedule": manifest_settings.get("schedule") or "?",
           "run_settings": manifest_settings, "machine": machine(), "paper": bench,
           "schedule_stages": stages,
           "training_wall_s": sum(s["with_statistics_step_s"] or 0 for s in stages.values()),
           "splits": evals}
    doc["data"] = {f"{split} split, {Path(split_source(run, split)[1]).name}/{name}": digest for split in splits
                   for name, digest in annotation_files(split_source(run, split)[1]).items()}
    doc["data"]["training data (RUN/data/manifest.json)"] = sha256_file(str(run / "data" / "manifest.json"))
    red = [s for s in splits if evals[s]["source"].get("reduce_width")]
    for r in red:
        full = next((s for s in splits if s != r and evals[s]["source"]["data_root"] ==
                     evals[r]["source"]["data_root"] and not evals[s]["source"].get("reduce_width")), None)
        if full:
            doc["resolution"] = resolution_cost(evals, full, r)
    if sweep:
        sw = json.loads(Path(sweep).read_text())
        doc["sweep"] = {"path": str(sweep), "seeds": sw["seeds"], "schedule": sw["settings"].get("schedule", "?"),
                        "models": {k: v for k, v in sw["models"].items()
                                   if k.split(":")[0] in ("BM", "WM", "AM", "equal_budget")},
                        "claims": sw["claims"],
                        "stage1_iterations": _stage1_iterations(sw)}
    doc["gap"] = gap_text(doc)
    cur = run / "curves" / "stage1.json"
    if cur.exists():
        docs = {f"{run.name} (seed {doc['seed']})": json.loads(cur.read_text())}
        for r in (json.loads(Path(sweep).read_text())["runs"] if sweep else []):
            c = Path(r) / "curves" / "stage1.json"
            loss = curves.training_loss(Path(r) / "logs" / "stage1.log")
            if c.exists():
                docs[Path(r).name] = json.loads(c.read_text())
            elif loss:
                docs[Path(r).name] = {"points": [], "training_loss": curves.smooth(loss, max(1, len(loss) // 50)),
                                      "split": "val", "stepsize": None, "max_iter": loss[-1][0]}
        curves.plot_snapshot_curves(docs, out / "curves.png", f"{dataset}: stage 1")
        doc["curve_plot"] = "curves.png"
        doc["curve"] = docs[next(iter(docs))]
    doc["peer_mappings"] = peer_mappings
    doc["conclusions"] = conclusions(doc)
    for ev in doc["splits"].values():
        for r in ev["results"].values():
            r.pop("face_errors", None)  # kept in eval_<split>.json
    atomic_write(out / "report.json", json.dumps(doc, indent=1, default=str) + "\n")
    atomic_write(out / "report.md", markdown(doc))
    return doc


def _stage1_iterations(sw: dict) -> int | None:
    for r in sw.get("runs", []):
        p = Path(r) / "solvers" / "stage1_solver.prototxt"
        if p.exists():
            return text_format.Parse(p.read_text(), caffe_pb2.SolverParameter()).max_iter
    return None


def gap_text(doc: dict) -> dict | None:
    test = doc["splits"].get("test")
    if not test or not doc["paper"]:
        return None
    mcl = doc["paper"]["figures"][0]["value"] / 100
    am = test["results"]["AM"]["inter_ocular"]["mean_error"]
    text = [f"AM {100 * am:.2f}% against the paper's {100 * mcl:.2f}%: a gap of {100 * (am - mcl):.2f} points."]
    out = {"am": am, "paper": mcl, "text": text}
    s1 = doc["schedule_stages"].get("stage1", {}).get("max_iter")
    short = (doc.get("sweep") or {}).get("models", {}).get("AM", {}).get("mean_error")
    share = schedule_share(short, am, s1 or 0, (doc.get("sweep") or {}).get("stage1_iterations"), mcl,
                           STAGES["stage1"].max_iter)
    out["schedule"] = share
    if share:
        text.append(
            f"Schedule: two points of the learning curve, AM {100 * share['short']['am_mean_error']:.2f}% (mean of "
            f"the seeds) after {share['short']['stage1_iterations']} stage-1 iterations and {100 * am:.2f}% after "
            f"{s1}, fall by {100 * -share['per_doubling']:.2f} points per doubling of stage 1; extrapolated "
            f"log-linearly to the paper's {share['paper_stage1_iterations']} iterations that is "
            f"{100 * share['extrapolated_at_paper_schedule']:.2f}% (a guess: curves flatten). "
            + ("That line passes the paper's figure long before the paper's length, so two points this early cannot "
               "size the schedule's share: it is large, and the learning curve shows how fast it flattens."
               if share["extrapolated_at_paper_schedule"] < mcl else
               f"On that guess the schedule explains {100 * share['share_of_gap']:.0f}% of the gap."
               if share["share_of_gap"] is not None else "There is no gap.")
            + " The seeds' points are a different seed mix from this run's, so this carries seed noise too.")
    res = doc.get("resolution")
    if res:
        d = res["models"]["AM"]["mean_difference"]
        se2 = PAIRED_Z * res["models"]["AM"]["standard_error"]
        if d > se2 and am > mcl:
            cost = (f"taken as what AFLW's 80 x 80 pictures cost, that is {100 * d / (am - mcl):.0f}% of the gap")
        elif d < -se2:
            cost = ("the reduced pictures do not cost these models anything (they score better on them: their "
                    "training faces are mostly 80 x 80 LFW pictures), so the resolution explains none of the gap")
        else:
            cost = "within the noise: the resolution explains no measurable share of the gap"
        text.append(f"Resolution: the same AM on the same faces of {res['full']} scores {_signed(d)} points when their "
                    f"pictures are reduced to 80 px wide as AFLW's were ({res['reduced']}; 2 SE {100 * se2:.2f}): {cost}.")
        out["resolution_share"] = max(d, 0.0) / (am - mcl) if am > mcl else None
    offs = {s: ev.get("offsets", {}) for s, ev in doc["splits"].items()}
    if "AM" in offs.get("test", {}):
        peers = [p for p in offs["test"] if p not in (m for m, _, _ in MODELS)]
        others = ", ".join(f"{s} {100 * o['AM'][0]:+.1f}, {100 * o['AM'][1]:+.1f}" for s, o in offs.items()
                           if s != "test" and "AM" in o)
        line = (f"Annotation frame: on the test split AM's points sit on average {100 * offs['test']['AM'][0]:+.1f}, "
                f"{100 * offs['test']['AM'][1]:+.1f} % of d (x, y) from the annotation" + (f" ({others} elsewhere)" if others else ""))
        if peers:
            line += (", and the peers', never trained on MTFL, " + ", ".join(
                f"{p} {100 * offs['test'][p][0]:+.1f}, {100 * offs['test'][p][1]:+.1f}" for p in peers))
            rem = test.get("offset_removed", {})
            if rem:
                line += (". A diagnostic, not a result: with each peer's mean offset on these faces taken off AM's "
                         "points, AM would score " + ", ".join(f"{100 * v:.2f}% ({p})" for p, v in rem.items()))
            other = next((o for s, o in offs.items() if s != "test" and all(p in o for p in peers)), None)
            if other and all(np.hypot(*np.subtract(offs["test"][p], other[p])) > ANNOTATION_SHIFT for p in peers):
                line += (". Every peer's offset on the test split differs from its offset on the other test set by "
                         f"more than {100 * ANNOTATION_SHIFT:g}% of d: the test annotation sits apart from where the "
                         "methods put the points, so part of the gap is the annotation's frame, not the method")
        text.append(line + ".")
        out["offsets"] = offs
    text.append("The paper trains on the original-resolution MTFL pictures (LFW 250 x 250, AFLW 150 x 150) with its "
                "own augmentation and detector boxes for the test crops; here training LFW faces and test faces are "
                "80 x 80 reductions and the test box is derived from the five points (docs/REAL_DATA.md).")
    return out
