"""The audit across seeds (`make sweep`, docs/CLUSTER.md): SWEEP/sweep.json, sweep.md and plots.

Reads each run folder's audit (`<run>/audit/audit.json`, one run per dataset and seed) and
gathers, per dataset:
- every model of the audit (BM, WM, AM, the equal-budget control, each ablation's models) and
  metric (mean error, failure rates, AUCs, per-cluster errors): mean, standard deviation
  (n - 1) and a 95% confidence interval across seeds, mean +- t(0.975, n - 1) sd / sqrt(n);
- every claim the audit tests, as a per-seed paired difference `lower - higher` of the two
  models it compares (negative: the claim held on that seed), with the same interval and a
  verdict: "holds beyond seed noise" only when the whole interval is below zero (the paired t
  test across seeds), "reversed beyond seed noise" when it is above, else "not beyond seed
  noise". Beside it the number of seeds that agree and the two-sided sign test's p value,
  which with 5 seeds or fewer can never reach 0.05 (so the t interval decides), except where
  every seed gave the same difference: the interval is then a point and the sign test decides.
A seed whose model has errors that are not finite (a diverged training) is named and left out
of every statistic that model enters: it is never counted as evidence either way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from mcl.evaluation.audit import PERTURBATION_TOLERANCE, scored_models
from mcl.evaluation.report import save_figure
from mcl.fileio import atomic_write
from mcl.method import paper

HOLDS, REVERSED, UNDECIDED, TOO_FEW = ("holds beyond seed noise", "reversed beyond seed noise",
                                       "not beyond seed noise", "fewer than two seeds: no interval")
FINDINGS = {f.key: f for f in paper.findings()}
# The run settings every run of one sweep shares; the rest (run, seed, dataset) are per run.
PER_RUN_SETTINGS = ("run", "seed", "dataset", "test_split", "layout")


class SweepError(ValueError):
    """A run of the sweep that cannot be gathered: the message names its file."""


# ---- statistics across seeds --------------------------------------------------------------

def interval(values: list[float]) -> dict:
    """mean, sd (n - 1) and the t interval of the mean (95%, two-sided) of per-seed values."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def sign_test(differences: list[float]) -> float:
    """Two-sided sign test of the differences against zero (zeros dropped): its p value."""
    d = [x for x in differences if x != 0]
    if not d:
        return 1.0
    below = sum(1 for x in d if x < 0)
    return float(min(1.0, 2 * stats.binom.cdf(min(below, len(d) - below), len(d), 0.5)))


def verdict(ci95, differences: list[float] | None = None) -> str:
    """The claim's verdict from the t interval of its per-seed differences.

    Where every seed gave the same difference (a discrete metric such as a failure rate moving by
    one face on each seed) the interval collapses to a point and the t test says nothing: the
    sign test decides alone (p < 0.05, so at least six seeds that all agree)."""
    if ci95 is None:
        return TOO_FEW
    low, high = ci95
    if differences is not None and low == high and sign_test(differences) >= 0.05:
        return UNDECIDED
    return HOLDS if high < 0 else REVERSED if low > 0 else UNDECIDED


# ---- what one run's audit holds ---------------------------------------------------------------

def model_metrics(result: dict) -> dict[str, float]:
    """One model's scores (an evaluation result) as flat metric -> value."""
    io = result["inter_ocular"]
    out = {"mean_error": io["mean_error"]}
    out.update({f"failure_rate@{t}": v for t, v in io.get("failure_rate", {}).items()})
    out.update({f"auc@{t}": v for t, v in io.get("auc", {}).items()})
    out.update({f"cluster:{c}": v for c, v in io.get("per_cluster", {}).items()})
    return out


# Models an ablation re-scores that are the audit's main models under another name are not repeated.
SAME_AS_MAIN = ("BM", "WM", "AM")


def run_models(audit_doc: dict) -> dict[str, dict[str, float]]:
    """Every model of one run's audit: name -> metric -> value."""
    out = {name: model_metrics(r) for name, r in audit_doc["models"].items()}
    for ablation, res in audit_doc.get("ablations", {}).items():
        for name, r in scored_models(res["numbers"]).items():
            if name in SAME_AS_MAIN:
                continue
            out[f"{ablation}: {name}"] = model_metrics(r)
    return out


@dataclass(frozen=True)
class Claim:
    """A claim of the audit: `lower` has a lower `metric` than `higher` (both models of `run_models`)."""

    key: str
    text: str
    lower: str
    higher: str
    metric: str = "mean_error"
    paper_finding: str | None = None  # mcl/method/paper.py FINDINGS key
    # "difference": lower - higher. "within": |lower / higher - 1| - PERTURBATION_TOLERANCE (Section IV-C-2's
    # robustness: negative when the perturbed model stays within the tolerance of the unperturbed one).
    kind: str = "difference"

    def value(self, lower: dict, higher: dict) -> float:
        if self.kind == "within":
            return abs(lower[self.metric] / higher[self.metric] - 1) - PERTURBATION_TOLERANCE
        return lower[self.metric] - higher[self.metric]


def claims_of(models: dict, layout_clusters: list[str], n_points: int | None) -> list[Claim]:
    """Every claim the audit tests whose models this run has (Sections IV-C, IV-D, and the control)."""
    eb, sam, wsam = "equal_budget: BM + equal budget", "simplified_am: Simplified AM", \
        "weighting_simplified_am: Weighting Simplified AM"
    c = [Claim("am_vs_wm", "AM < WM", "AM", "WM", paper_finding="bm_wm_am.am_vs_wm"),
         Claim("wm_vs_bm", "WM < BM", "WM", "BM", paper_finding="bm_wm_am.wm_vs_bm"),
         Claim("am_vs_bm", "AM < BM", "AM", "BM"),
         Claim("am_failure_vs_bm", "AM's failure rate (0.10) < BM's", "AM", "BM", "failure_rate@0.10",
               "bm_wm_am.am_failure"),
         Claim("wm_vs_equal_budget", "WM < BM trained as long (equal budget)", "WM", eb),
         Claim("am_vs_equal_budget", "AM < BM trained as long (equal budget)", "AM", eb),
         Claim("am_vs_simplified_am", "AM < Simplified AM", "AM", sam, paper_finding="simplified_am.am_better"),
         Claim("am_vs_weighting_simplified_am", "AM < Weighting Simplified AM", "AM",
               wsam),
         Claim("weighting_simplified_am_vs_simplified_am", "Weighting Simplified AM < Simplified AM", wsam,
               "weighting_simplified_am: Simplified AM", paper_finding="weighting_simplified_am.cofw")]
    for cl in layout_clusters:
        c.append(Claim(f"single_head.{cl}", f"head {cl} < WM on cluster {cl}", f"single_head: heads / {cl}",
                       "WM", f"cluster:{cl}", f"single_head.{cl}" if f"single_head.{cl}" in FINDINGS else None))
    for m in ("WM", "AM"):
        c.append(Claim(f"occlusion.{m.lower()}_worse", f"occlusion raises {m}'s left-eye error (occluded faces)",
                       f"occlusion: {m} / occluded_faces_without", f"occlusion: {m} / occluded_faces_with",
                       "cluster:left_eye", "occlusion.worse"))
    c.append(Claim("occlusion.am_vs_wm", "AM < WM on the left eye with occlusion", "occlusion: AM / with_occlusion",
                   "occlusion: WM / with_occlusion", "cluster:left_eye", "occlusion.am_vs_wm"))
    if n_points is not None:
        five = n_points == 5
        c.append(Claim("pre_bm", "pre-BM < BM (5 points)" if five else "BM < pre-BM",
                       "pre_bm: pre-BM" if five else "BM", "BM" if five else "pre_bm: pre-BM",
                       paper_finding="pre_bm.aflw" if five else "pre_bm.ibug"))
    deltas = sorted(k.split("delta ")[1] for k in models if k.startswith("perturbation: delta "))
    for d in deltas:
        c.append(Claim(f"perturbation.{d}", f"WM with weights perturbed by {d} within "
                       f"{100 * PERTURBATION_TOLERANCE:g}% of WM's mean error", f"perturbation: delta {d}", "WM",
                       paper_finding="perturbation.robust", kind="within"))
    return [x for x in c if x.lower in models and x.higher in models]  # the parts of the audit that ran


# ---- the sweep ----------------------------------------------------------------------------

def read_run(run: Path) -> dict:
    path = Path(run) / "audit" / "audit.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: missing (the run's audit has not finished: make sweep runs it)") from None
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path}: not JSON ({exc})") from None
    for key in ("settings", "models"):
        if key not in doc:
            raise SweepError(f"{path}: no {key!r}: not an audit report")
    return doc


def group_name(settings: dict) -> str:
    return f"{settings.get('dataset')}-{settings.get('layout')}"


def gather(runs: list[Path]) -> dict:
    """The sweep's statistics from its run folders (each one dataset and seed)."""
    if not runs:
        raise SweepError("no run folders given")
    docs = {Path(r): read_run(r) for r in runs}
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for run, doc in docs.items():
        groups.setdefault(group_name(doc["settings"]), []).append((run, doc))
    shared, differing = _shared_settings([d["settings"] for d in docs.values()])
    out = {"settings": shared, "settings_differing": differing, "seeds": [], "runs": [], "datasets": {},
           "models": {}, "claims": {}, "diverged": [], "tests": {
               "models": "mean, sd (n - 1), 95% t interval of the per-seed values",
               "claims": "paired t across seeds: 95% t interval of the per-seed differences lower - higher; "
                         "'holds beyond seed noise' only when the interval lies below zero; sign test p beside it"}}
    several = len(groups) > 1
    for name, members in sorted(groups.items()):
        members.sort(key=lambda m: (m[1]["settings"].get("seed") is None, m[1]["settings"].get("seed")))
        per_seed = {}
        for run, doc in members:
            seed = doc["settings"].get("seed")
            if seed in per_seed:
                raise SweepError(f"{run}: seed {seed} of {name} appears twice (also {per_seed[seed]['run']})")
            per_seed[seed] = {"run": str(run), "models": run_models(doc), "doc": doc}
            out["runs"].append(str(run))
        seeds = list(per_seed)
        for s in seeds:
            if s not in out["seeds"]:
                out["seeds"].append(s)
        first = members[0][1]
        clusters = list(next(iter(first["models"].values()))["inter_ocular"].get("per_cluster", {}))
        n_points = first["settings"].get("layout")
        models, claims, diverged = summarise(per_seed, clusters, int(n_points) if n_points else None)
        prefix = f"{name}: " if several else ""
        out["models"].update({prefix + k: v for k, v in models.items()})
        out["claims"].update({prefix + k: v for k, v in claims.items()})
        out["diverged"] += [dict(d, dataset=name) for d in diverged]
        out["datasets"][name] = {"seeds": seeds, "runs": [per_seed[s]["run"] for s in seeds],
                                 "paper_mean_error": _paper_mean_error(first["settings"])}
    return out


def summarise(per_seed: dict, clusters: list[str], n_points: int | None) -> tuple[dict, dict, list]:
    """(models, claims, diverged) of one dataset from {seed: {"run", "models"}}."""
    names = []
    for s in per_seed.values():
        names += [n for n in s["models"] if n not in names]
    diverged = []
    for seed, s in per_seed.items():
        bad = sorted(n for n, m in s["models"].items() if not math.isfinite(m["mean_error"]))
        if bad:
            diverged.append({"seed": seed, "run": s["run"], "models": bad})
    models = {}
    for name in names:
        metrics = []
        for s in per_seed.values():
            metrics += [k for k in s["models"].get(name, {}) if k not in metrics]
        entry = {}
        for metric in metrics:
            vals = {seed: s["models"][name][metric] for seed, s in per_seed.items()
                    if name in s["models"] and math.isfinite(s["models"][name]["mean_error"])
                    and metric in s["models"][name]}
            st = interval(list(vals.values()))
            entry[metric] = {"mean": st["mean"], "sd": st["sd"], "ci95": st["ci95"], "n": st["n"],
                             "per_seed": {str(k): v for k, v in vals.items()}}
        entry["diverged_seeds"] = [d["seed"] for d in diverged if name in d["models"]]
        models[name] = entry
    union = {}
    for s in per_seed.values():
        union.update(s["models"])
    claims = {}
    for c in claims_of(union, clusters, n_points):
        diffs, left_out = {}, []
        for seed, s in per_seed.items():
            m = s["models"]
            if c.lower not in m or c.higher not in m:
                continue
            if not (math.isfinite(m[c.lower]["mean_error"]) and math.isfinite(m[c.higher]["mean_error"])):
                left_out.append(seed)
                continue
            diffs[seed] = c.value(m[c.lower], m[c.higher])
        st = interval(list(diffs.values()))
        agreeing = sum(1 for d in diffs.values() if d < 0)
        finding = FINDINGS.get(c.paper_finding) if c.paper_finding else None
        claims[c.key] = {"claim": c.text, "lower": c.lower, "higher": c.higher, "metric": c.metric, "kind": c.kind,
                         "per_seed": {str(k): v for k, v in diffs.items()}, "mean": st["mean"], "sd": st["sd"],
                         "ci95": st["ci95"], "n": st["n"], "verdict": verdict(st["ci95"], list(diffs.values())),
                         "seeds_agreeing": agreeing, "sign_test_p": sign_test(list(diffs.values())),
                         "diverged_seeds": left_out,
                         "paper": ({"finding": finding.claim, "where": finding.where, "dataset": finding.dataset}
                                   if finding else None)}
    return models, claims, diverged


def _paper_mean_error(settings: dict) -> dict | None:
    fig = paper.mean_error(settings.get("dataset") or "", str(settings.get("layout")), settings.get("test_split"))
    return {"value": fig.value, "what": fig.what, "where": fig.where} if fig else None


def _shared_settings(all_settings: list[dict]) -> tuple[dict, dict]:
    """The settings every run has alike, and those that differ between runs (beyond PER_RUN_SETTINGS)."""
    shared, differing = {}, {}
    keys = []
    for s in all_settings:
        keys += [k for k in s if k not in keys]
    for k in keys:
        if k in PER_RUN_SETTINGS:
            continue
        values = [json.dumps(s.get(k), sort_keys=True) for s in all_settings]
        if len(set(values)) == 1:
            shared[k] = all_settings[0].get(k)
        else:
            differing[k] = sorted(set(values))
    return shared, differing


# ---- the report -------------------------------------------------------------------------

MAIN_ROWS = ("BM", "WM", "AM", "equal_budget: BM + equal budget")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.3f}"


def _pm(st: dict) -> str:
    if st["mean"] is None:
        return "n/a"
    if st["sd"] is None:
        return f"{_pct(st['mean'])} (one seed)"
    lo, hi = st["ci95"]
    return f"{_pct(st['mean'])} +- {_pct(st['sd'])} [{_pct(lo)}, {_pct(hi)}]"


def markdown(doc: dict) -> str:
    s = doc["settings"]
    interp = s.get("interpretations") or {}
    lines = ["# The audit across seeds", "",
             (f"Seeds **{' '.join(str(x) for x in doc['seeds'])}**; datasets "
             f"**{', '.join(doc['datasets'])}**; schedule **{s.get('schedule')}**, scale **{s.get('schedule_scale')}**, "
             f"batch {s.get('batch_size')}, engine **{s.get('engine')}** ({s.get('device')}); BatchNorm statistics: "
             f"{interp.get('bn_stats (BatchNorm statistics of each stage' + chr(39) + 's product)')}."), "",
             ("Models: mean +- sd across seeds [95% t interval], in % of the inter-ocular distance. Claims: the "
             "per-seed paired difference `lower - higher` (negative: the claim held on that seed); "
             f"{doc['tests']['claims']}."), ""]
    if doc["settings_differing"]:
        lines += ["**The runs differ in settings beyond the seed:** "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in doc["settings_differing"].items()), ""]
    if doc["diverged"]:
        lines += ["**Diverged seeds (non-finite errors), left out of every statistic their models enter:**", ""]
        lines += [f"- {d['dataset']} seed {d['seed']} ({d['run']}): {', '.join(d['models'])}" for d in doc["diverged"]]
        lines += [""]
    for name, ds in doc["datasets"].items():
        prefix = f"{name}: " if len(doc["datasets"]) > 1 else ""
        pm = ds["paper_mean_error"]
        lines += [f"## {name}", "", f"Runs: {', '.join(ds['runs'])}.",
                  f"The paper's MCL mean error here: {pm['value']}% ({pm['where']})." if pm else
                  "The paper reports no figure for this data: its numbers are not expected, directions are compared.",
                  "", "| model | mean error (%) | failure rate @0.10 (%) | seeds |", "|---|---|---|---|"]
        for m in MAIN_ROWS:
            e = doc["models"].get(prefix + m)
            if e:
                fr = e.get("failure_rate@0.10", {"mean": None, "sd": None, "ci95": None})
                lines.append(f"| {m} | {_pm(e['mean_error'])} | {_pm(fr)} | {e['mean_error']['n']} |")
        lines += ["", ("| claim | per seed (points) | mean [95% interval] | seeds agreeing | sign test p | verdict "
                       "| the paper |"), "|---|---|---|---|---|---|---|"]
        for key, c in doc["claims"].items():
            if prefix and not key.startswith(prefix):
                continue
            ps = ", ".join(f"s{k}: {100 * v:+.3f}" for k, v in c["per_seed"].items())
            ci = f"[{100 * c['ci95'][0]:+.3f}, {100 * c['ci95'][1]:+.3f}]" if c["ci95"] else "n/a"
            mean = f"{100 * c['mean']:+.3f}" if c["mean"] is not None else "n/a"
            note = f" (left out, diverged: {c['diverged_seeds']})" if c["diverged_seeds"] else ""
            pap = f"{c['paper']['finding']} ({c['paper']['where']})" if c["paper"] else "beyond the paper"
            lines.append(f"| {c['claim']} | {ps}{note} | {mean} {ci} | {c['seeds_agreeing']} of {c['n']} | "
                         f"{c['sign_test_p']:.3g} | {c['verdict']} | {pap} |")
        lines += [""]
        lines += ["All models and metrics (mean, sd, interval, per seed): `sweep.json`, key `models`.", ""]
    lines += [f"Plots: {', '.join(doc.get('plots', []))}." if doc.get("plots") else "", ""]
    return "\n".join(lines)


def plots(doc: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name in doc["datasets"]:
        prefix = f"{name}: " if len(doc["datasets"]) > 1 else ""
        rows = [m for m in MAIN_ROWS if prefix + m in doc["models"]]
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, m in enumerate(rows):
            e = doc["models"][prefix + m]["mean_error"]
            vals = [100 * v for v in e["per_seed"].values()]
            a.scatter([i] * len(vals), vals, color="0.4", zorder=3)
            if e["ci95"]:
                a.errorbar([i + 0.15], [100 * e["mean"]], yerr=[[100 * (e["mean"] - e["ci95"][0])],
                           [100 * (e["ci95"][1] - e["mean"])]], fmt="o", color="C0", capsize=4)
        a.set_xticks(range(len(rows)), [r.replace("equal_budget: ", "") for r in rows], rotation=15)
        a.set_ylabel("mean error (% inter-ocular)")
        a.set_title(f"{name}: each seed (gray), mean and 95% interval")
        keys = [k for k in doc["claims"] if not prefix or k.startswith(prefix)]
        for j, k in enumerate(keys):
            c = doc["claims"][k]
            vals = [100 * v for v in c["per_seed"].values()]
            b.scatter(vals, [j] * len(vals), color="0.5", s=12, zorder=3)
            if c["ci95"]:
                b.plot([100 * c["ci95"][0], 100 * c["ci95"][1]], [j, j], color="C3" if c["verdict"] == HOLDS else "C0")
        b.axvline(0, color="k", lw=0.8)
        # The claims' differences span hundredths of a point (fine-tuning) to points (occlusion): a
        # symmetric log scale, linear within 0.01 points, shows both.
        b.set_xscale("symlog", linthresh=0.01)
        b.set_yticks(range(len(keys)), [doc["claims"][k]["claim"] for k in keys], fontsize=7)
        b.set_xlabel("lower - higher (points, symmetric log); < 0: the claim held; red: beyond seed noise")
        b.set_title("claims: per-seed differences and 95% intervals")
        fig.tight_layout()
        path = out / f"sweep_{name}.png"
        save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write(runs: list[Path], out: Path) -> list[Path]:
    """sweep.json, sweep.md and the plots of the runs, under `out` (SWEEP)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = gather([Path(r) for r in runs])
    doc["plots"] = [p.name for p in plots(doc, out)]
    atomic_write(out / "sweep.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write(out / "sweep.md", markdown(doc))
    return [out / "sweep.json", out / "sweep.md"] + [out / p for p in doc["plots"]]
