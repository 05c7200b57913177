"""The audit's report: `<run>/audit/audit.json` and `audit.md` with its plots.

Reads the files the audit's Make targets wrote (models.json and one JSON per
ablation, see mcl/evaluation/audit.py), the run's manifest and the evaluation, and sets
every figure beside what the paper says of it (mcl/method/paper.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mcl.caffe import speed
from mcl.caffe.runfiles import run_layout
from mcl.evaluation import audit, report
from mcl.fileio import atomic_write
from mcl.method import paper
from mcl.records import provenance

TITLES = {
    "pre_bm": "pre-BM vs BM (Section IV-C-1: global average pooling vs full connection)",
    "perturbation": "Robustness of weighting (Section IV-C-2: perturbed Eq. 5 weights)",
    "single_head": "Shape prediction layers scored alone (Section IV-C-3)",
    "simplified_am": "Simplified AM: weighting fine-tuning skipped (Section IV-C-4)",
    "weighting_simplified_am": "Weighting Simplified AM (Section IV-C-4)",
    "occlusion": "Partially occluded faces (Section IV-D)",
    "equal_budget": "Equal-budget control (beyond the paper): BM trained for as many more iterations",
}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _row(name: str, r: dict) -> str:
    m = r["inter_ocular"]
    return (f"| {name} | {r.get('bn_stats') or '-'} | {_pct(m['mean_error'])} | {_pct(m['failure_rate']['0.10'])} | "
            f"{_pct(m['failure_rate']['0.08'])} | {m['auc']['0.08']:.4f} | {m['auc']['0.10']:.4f} |")


HEAD = ["| model | BatchNorm statistics | mean error (%) | failure >10% (%) | failure >8% (%) | AUC@0.08 | AUC@0.10 |",
        "|---|---|---|---|---|---|---|"]


def _paper_lines(entry: dict) -> list[str]:
    lines = []
    if not entry["numbers_comparable"]:
        lines.append("- Paper: this run is not on the paper's benchmark, so its numbers are not expected here; "
                     "the direction of the effect is compared instead.")
    for f in entry["findings"]:
        lines.append(f"- Paper ({f['where']}{'' if f['dataset'] == 'any' else ', ' + f['dataset'].upper()}): "
                     f"{f['claim']}.")
    for key, f in entry["figures"].items():
        lines.append(f"- Paper figure `{key}`: {f['value']:g}{f['unit'] if f['unit'] == '%' else ' ' + f['unit']} "
                     f"({f['what']}; {f['where']}).")
    return lines


def _ablation_md(name: str, doc: dict, layout) -> list[str]:
    lines = [f"## {TITLES[name]}", ""]
    if name == "single_head":
        lines += ["Per-cluster mean error (%) of each head on its own cluster, against WM and AM:", "",
                  "| cluster | its head | WM | AM | head better than WM |", "|---|---|---|---|---|"]
        for c, v in doc["own_cluster"].items():
            lines.append(f"| {c} | {_pct(v['head'])} | {_pct(v['WM'])} | {_pct(v['AM'])} | "
                         f"{'yes' if doc['head_beats_wm'][c] else 'no'} |")
        lines.append("")
    elif name == "occlusion":
        lc = doc["cluster"]
        lines += [f"{len(doc['faces'])} test faces ({doc['fraction']:.0%}, seed {doc['seed']}) with the tight box of "
                  f"the {lc} cluster filled gray ({doc['fill']}). Mean error (%) per cluster:", "",
                  "| model | faces | " + " | ".join(layout.cluster_names) + " | all |",
                  "|---|---|" + "---|" * (layout.m + 1)]
        for m, v in doc["numbers"].items():
            for label, key in (("all, without", "without_occlusion"), ("all, with", "with_occlusion"),
                               ("occluded ones, without", "occluded_faces_without"),
                               ("occluded ones, with", "occluded_faces_with")):
                pc = v[key]["inter_ocular"]["per_cluster"]
                lines.append(f"| {m} | {label} | " + " | ".join(_pct(pc[c]) for c in layout.cluster_names)
                             + f" | {_pct(v[key]['inter_ocular']['mean_error'])} |")
        lines.append("")
    else:
        lines += HEAD + [_row(k, v) for k, v in audit.scored_models(doc["numbers"]).items()] + [""]
        if name == "perturbation":
            lines += [f"Largest relative change of the mean error against WM: "
                      f"{100 * doc['largest_relative_change']:.1f}%.", ""]
    if name == "equal_budget":
        lines += ["Paired per-face differences of mean error (% of d; negative: the first model better):", "",
                  "| comparison | mean difference | standard error | faces | beyond noise |", "|---|---|---|---|---|"]
        for k, p in doc["paired"].items():
            lines.append(f"| {k} | {100 * p['mean_difference']:+.3f} | {100 * p['standard_error']:.3f} | "
                         f"{p['faces']} | {'better' if p['better'] else 'worse' if p['worse'] else 'no'} |")
        lines += ["", f"**Ordering:** {doc['ordering']}.", ""]
    if doc.get("not_finite"):
        lines += [f"**Not finite:** {', '.join(doc['not_finite'])}: the model's errors are NaN or infinite (its "
                  "training diverged; see its stage log), so this experiment is no evidence either way.", ""]
    lines += [f"- Expected direction: {doc['expected_direction']}. "
              f"**{'Held' if doc['direction_held'] else 'Did not hold'}** on this run."]
    lines += _paper_lines(doc["paper"]) + [""]
    return lines


def _speed(run: Path, layout, repeats: int) -> dict:
    """5-, 29- and 68-point nets side by side; the run's own AM for its layout (AM costs what BM costs)."""
    am = Path(run) / "models" / "am.caffemodel"
    return speed.layouts_side_by_side(repeats=repeats, weights={layout.name: am} if am.exists() else None)


def _speed_md(sp: dict) -> list[str]:
    return ["## Speed (single core, batch 1, forward only, BLAS threads forced to 1)", "", report.speed_markdown(sp)]


def write(run: Path, out_dir: Path, speed_repeats: int = 50) -> list[Path]:
    run, out_dir = Path(run), Path(out_dir)
    t0 = time.time()
    layout = run_layout(run)
    settings = audit.run_settings(run)
    models_doc = json.loads((out_dir / "models.json").read_text())
    ablations = {}
    for name in audit.ABLATIONS:
        p = out_dir / f"{name}.json"
        if p.exists():
            ablations[name] = json.loads(p.read_text())
    sp = _speed(run, layout, speed_repeats)
    doc = {"settings": settings, "models": models_doc["models"], "ablations": ablations, "speed": sp,
           "missing_ablations": [a for a in audit.ABLATIONS if a not in ablations]}
    plots = _plots(run, out_dir, doc, layout)
    doc["plots"] = [p.name for p in plots]
    lines = [f"# Audit of {settings['run']}", "",
             f"Dataset **{settings['dataset']}**, layout **{settings['layout']}**, schedule scale "
             f"**{settings['schedule_scale']}**, seed **{settings['seed']}**, batch {settings['batch_size']}, "
             f"engine **{settings['engine']}** ({settings['device']}), Caffe {settings['caffe_version']}.", ""]
    bench = audit.paper_entry("bm_wm_am", settings)["benchmark"]
    if bench is None:
        lines += ["This run is not on one of the paper's benchmarks at the paper's schedule (the built-in synthetic "
                  "faces, another split, or a scaled schedule): **the paper's numbers are not expected here.** Each "
                  "experiment below compares the *direction* of the paper's effect instead, and says whether it "
                  "held.", ""]
    elif settings["schedule_scale"] != 1:
        lines += [f"This run uses the paper's benchmark ({bench.upper()}) at schedule scale "
                  f"{settings['schedule_scale']}: the paper's numbers are a reference, not a target.", ""]
    lines += ["## Settings and readings of the paper ([interp])", "", "| setting | value |", "|---|---|"]
    for k, v in settings["interpretations"].items():
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "## BM, WM and AM", "",
              "With the BatchNorm statistics of the run's setting, and `(running)`: the same stage's model as "
              "Caffe wrote it, before the statistics step (Caffe's running averages). The `(running)` models were "
              "trained from this run's products, so they isolate the statistics of the last stage only; a wholly "
              "paper-literal pipeline is another run with `BN_STATS=running`. AM (running) is assembled from the "
              "raw heads; with the heads' trunk frozen under `global` it carries WM's statistics.", ""]
    lines += HEAD + [_row(k, v) for k, v in doc["models"].items()] + [""]
    pm = paper.mean_error(settings["dataset"] or "", settings["layout"] or "", settings.get("test_split"))
    if pm is not None:
        lines += [f"Paper: MCL mean error {pm.value:.2f}% ({pm.where})."]
    for f in paper.findings("bm_wm_am"):
        lines.append(f"- Paper ({f.where}): {f.claim}.")
    if "equal_budget" in ablations:
        lines += ["", f"**Is the BM > WM > AM ordering meaningful here?** {ablations['equal_budget']['ordering']} "
                      "(equal-budget control below)."]
    lines.append("")
    peers_path = run / "peers" / "peers.json"
    if peers_path.exists():  # tools/peers.py: another method on the same test faces
        doc["peers"] = json.loads(peers_path.read_text())
        lines += ["## Peers on the same faces", "", (f"{doc['peers']['peer']}, on the run's "
                  f"{doc['peers']['faces']} test faces (`{peers_path.relative_to(run)}`, tools/peers.py): in the "
                  "split's boxes, and in its own detector's."), ""]
        lines += HEAD + [_row(k, v) for k, v in doc["peers"]["results"].items()] + [""]
    for name in audit.ABLATIONS:
        if name in ablations:
            lines += _ablation_md(name, ablations[name], layout)
    if doc["missing_ablations"]:
        lines += ["## Not run", "", "These ablations have not been run for this report (their Make targets: "
                  + ", ".join(f"`make {a}`" for a in doc["missing_ablations"]) + ").", ""]
    lines += _speed_md(sp)
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## The paper's numbers used here (mcl/method/paper.py)", "", paper.markdown()]
    doc["wall_time_s"] = round(time.time() - t0, 2)
    atomic_write(out_dir / "audit.json", json.dumps(doc, indent=2, default=_json_default) + "\n")
    atomic_write(out_dir / "audit.md", "\n".join(lines) + "\n")
    return [out_dir / "audit.json", out_dir / "audit.md"] + plots


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"{type(o)} is not JSON")


def ced_curves(run: Path, doc: dict) -> dict[str, dict]:
    """Every scored model of the audit (its models, then each ablation's), as the CED plot draws them:
    each with the provenance its run's manifest records, as the evaluation's results carry it."""
    curves = dict(doc["models"])
    for name, ab in doc["ablations"].items():
        if name in ("occlusion", "single_head"):
            continue
        for k, v in audit.scored_models(ab["numbers"]).items():
            curves.setdefault(k, v)
    protocol = provenance.data_protocol(run)
    return {k: with_provenance(run, v, protocol) for k, v in curves.items() if "face_errors" in v}


def with_provenance(run: Path, result: dict, protocol: dict) -> dict:
    """A result of the audit (which records only the model's path and BatchNorm setting) with the
    schedule scale, seed, engine and statistics its model was trained with (mcl.records.provenance:
    the manifest, not the defaults, so a model of the torch engine is labelled torch) and the
    split's test-crop protocol."""
    out = dict(result)
    if isinstance(result.get("model"), str):
        out.update(provenance.trained_with(run, Path(run) / result["model"]))
    out["test_crop"] = protocol["test_crop"]
    return out


def _plots(run: Path, out_dir: Path, doc: dict, layout) -> list[Path]:
    """CED of every model of the audit on one plot; best and worst faces of BM, WM, AM. Each labelled
    with its model's provenance, as the evaluation's plots are."""
    out = []
    ced = out_dir / "audit_ced.png"
    curves = ced_curves(run, doc)
    report.plot_ced(curves, ced, f"CED, every model of the audit (layout {layout.name})")
    out.append(ced)
    for name in ("BM", "WM", "AM"):
        if name in doc["models"]:
            p = out_dir / f"audit_overlays_{name}.png"
            r = doc["models"][name]
            label = f"{name} ({report.provenance_label(curves[name])})" if name in curves else name
            report.plot_overlays(run, run / r["model"], run / r["deploy"], p, label)
            out.append(p)
    return out
