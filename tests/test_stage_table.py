"""Algorithm 1's table (mcl/method/stages.py) is the source: the Makefile's plan and the audit's models
follow its rows (tools/run_stage.py's defaults and overrides: tests/test_pipeline.py).

The Makefile writes every stage's inputs out (make needs them as prerequisites); `make -n` prints
the plan, and this test reads it against the table, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from conftest import ROOT

from mcl.evaluation import audit
from mcl.method import stages
from mcl.method.stages import ASSEMBLIES, DERIVED, LOSS_WEIGHTS, PERTURBATION_DELTAS, STAGES, resolve


def plan(tmp_path, *goals: str, **variables: str) -> list[list[str]]:
    """The commands `make -n` prints for `goals` in a fresh run folder, one argv each."""
    run = tmp_path / "run"
    args = ["make", "--no-print-directory", "-n", *goals, f"RUN={run}",
            *[f"{k}={v}" for k, v in variables.items()]]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"\\\n\s*", " ", proc.stdout)  # a recipe's continued lines as one
    assert not run.exists()
    return [[a.replace(f"{run}/", "") for a in shlex.split(line)] for line in text.splitlines() if line.strip()]


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def calls(commands, script: str) -> list[list[str]]:
    return [c[c.index(next(a for a in c if a.endswith(script))) + 1:] for c in commands
            if any(a.endswith(script) for a in c)]


def test_the_makefile_trains_every_row_as_the_table_says(tmp_path):
    trained = {}
    for argv in calls(plan(tmp_path, "audit"), "tools/run_stage.py"):
        stage, name = option(argv, "--stage"), option(argv, "--name")
        trained[name or stage] = (option(argv, "--init"), option(argv, "--loss-weights"), option(argv, "--out"))
    want = {}
    for key in ("stage1", "stage2", "stage3", "heads", "pre_bm", "equal_budget"):
        row = resolve(key)
        want[key] = (row.init, row.loss_weights, row.out)
    for name, d in DERIVED.items():
        want[name] = (d.start, d.loss_weights, None)  # a derived row's product: --out, checked below
    got = {k: (v[0], v[1], None) if k in DERIVED else v for k, v in trained.items()}
    assert got == want
    for name, d in DERIVED.items():
        assert trained[name][2] == d.product, name


def test_the_makefile_computes_each_loss_weights_file_as_the_table_says(tmp_path):
    commands = plan(tmp_path, "audit")
    made = {option(a, "--out"): (option(a, "--model"), int(option(a, "--eq")))
            for a in calls(commands, "tools/compute_weights.py")}
    assert made == {f"{stages.LOSS_WEIGHTS_DIR}/{k}.json": v for k, v in LOSS_WEIGHTS.items()}
    deltas = sorted(float(option(a, "--delta")) for a in calls(commands, "tools/audit.py") if a[0] == "perturb")
    assert deltas == sorted(PERTURBATION_DELTAS) == [0.1, 0.2, 0.3, 0.4]  # Sec. IV-C-2: up to 0.4, four steps
    assembled = {option(a, "--out"): option(a, "--heads") for a in calls(commands, "tools/assemble.py")}
    for a in ASSEMBLIES.values():
        assert assembled[a.model] == a.heads


def test_separate_heads_are_listed_where_the_table_says(tmp_path):
    (argv,) = calls(plan(tmp_path, "heads", HEADS="separate"), "tools/run_stage.py")[-1:]
    assert option(argv, "--out") == resolve("heads", separate=True).out == "models/heads_separate.json"


def test_the_rows_follow_algorithm_1():
    """Algorithm 1 (METHOD §5.1) as the paper orders it, stated here, not read from the table."""
    assert [(r.init, r.loss_weights, r.out) for r in map(resolve, ("stage1", "stage2", "stage3", "heads"))] == [
        (None, None, "models/bm.caffemodel"),
        ("models/bm.caffemodel", "loss_weights/bm_eq5.json", "models/stage2.caffemodel"),
        ("models/stage2.caffemodel", "loss_weights/bm_eq5.json", "models/wm.caffemodel"),
        ("models/wm.caffemodel", "loss_weights/wm_eq9.json", "models/heads.caffemodel")]
    assert resolve("heads").init_build == "heads" and resolve("stage2").init_build == "copy"
    # Simplified AM (Sec. IV-C-4): heads from BM with Eq. 9 of BM; weighting it: stages 2 and 3 from it.
    assert (DERIVED["sam_heads"].base, DERIVED["sam_heads"].start) == ("heads", "models/bm.caffemodel")
    assert DERIVED["wsam_stage2"].start == ASSEMBLIES["sam"].model
    with pytest.raises(ValueError, match="trains it as heads"):
        resolve("stage2", "sam_heads")


def test_the_audit_scores_the_tables_products():
    assert [(m.name, m.model, m.deploy) for m in (audit.BM, audit.WM, audit.AM)] == [
        ("BM", "models/bm.caffemodel", "nets/deploy.prototxt"), ("WM", "models/wm.caffemodel", "nets/deploy.prototxt"),
        ("AM", "models/am.caffemodel", "models/am_deploy.prototxt")]
    pre = audit.of_stage(STAGES["pre_bm"])
    assert (pre.model, pre.deploy, pre.output) == ("models/pre_bm.caffemodel", "nets/pre_bm_deploy.prototxt", "fc6")
    assert audit.of_derived("wsam_stage3").model == "audit/models/wsam.caffemodel"
    assert audit.DELTAS == PERTURBATION_DELTAS


def test_the_pytorch_algorithm1_trains_the_tables_chain(monkeypatch):
    """mcl.method.pytorch.algorithm1 trains the rows after step 1 in the order the paper gives them (stated
    here), each after the rows it starts from; a row added to the table joins the chain."""
    from mcl.method import pytorch

    chain = stages.algorithm1_chain()
    assert chain == ("stage1", "stage2", "stage3", "heads", "equal_budget") == pytorch.ALGORITHM1_STAGES
    assert "pre_bm" not in chain and "warmup" not in chain  # step 1's alternatives, not rows after it
    extra = stages.Stage("more", "x", 0.001, 100, (), "eq9", start="heads", weights_from="stage3", product="more")
    monkeypatch.setitem(STAGES, "more", extra)
    assert stages.algorithm1_chain() == chain + ("more",)
