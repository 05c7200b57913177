"""The house plan, measured from the code's own imports (docs/LAYOUT.md; README, "How the code is laid out").

`python tests/test_layout.py` prints the figures these tests hold the code to.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_ENTRY_LINES = 150
MAX_TOP_MODULES = 10
# The floors of the house (docs/LAYOUT.md; README, "How the code is laid out"): a package may import only packages on
# the floors below its own. `mcl` is mcl/fileio.py (and mcl/__init__.py).
# The run folder's records stand below the torch engine, the runner, the evaluation and the port; the
# evaluation and the port stand on the records, not on the engine or the runner.
FLOORS = [["mcl"], ["mcl.method"], ["mcl.caffe"], ["mcl.data", "mcl.torchnet"], ["mcl.records"],
          ["mcl.engine", "mcl.evaluation"], ["mcl.run", "mcl.port"]]
ENTRY_FOLDERS = ("tools", "data_prep", "benchmarks")


def modules() -> dict[str, Path]:
    """Every module of the library: dotted name -> file."""
    out = {}
    for path in sorted((ROOT / "mcl").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path):
    """(module imported, names taken, inside a function?) for every project import of a file."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0 \
                    and (child.module == "mcl" or child.module.startswith("mcl.")):
                found.append((child.module, [a.name for a in child.names], in_function))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("mcl."):
                        found.append((a.name, [], in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports (a name taken from a package counts as its module)."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, names, _ in _imports(path):
            for name in names or [None]:
                sub = f"{target}.{name}" if name else target
                dest = sub if sub in mods else target
                if dest in mods and dest != mod:
                    edges[mod].add(dest)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)
    return out


def package_graph() -> dict[str, set[str]]:
    """Sub-package -> the sub-packages its modules import (mcl/fileio.py and mcl/__init__.py count as `mcl`)."""
    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir() else "mcl"
    out: dict[str, set[str]] = {}
    for a, targets in graph().items():
        out.setdefault(package(a), set())
        for b in targets:
            if package(a) != package(b):
                out[package(a)].add(package(b))
                out.setdefault(package(b), set())
    return out


def private_imports() -> list[str]:
    """`from mcl.x import _name` anywhere in the library, tools, data_prep or tests."""
    bad = []
    for path in sorted(list((ROOT / "mcl").rglob("*.py")) + list((ROOT / "tools").glob("*.py"))
                       + list((ROOT / "data_prep").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
                       + list((ROOT / "tests").glob("*.py"))):
        for target, names, _ in _imports(path):
            bad += [f"{path.relative_to(ROOT)}: {target}.{n}" for n in names if _private(n)]
    return bad


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def function_imports() -> list[str]:
    return [f"{path.relative_to(ROOT)}: {target}" for path in modules().values()
            for target, _, inside in _imports(path) if inside]


def entry_lines() -> dict[str, int]:
    return {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for p in sorted(list((ROOT / "tools").glob("*.py")) + list((ROOT / "data_prep").glob("*.py")))}


def top_modules() -> list[str]:
    return sorted(p.name for p in (ROOT / "mcl").glob("*.py"))


def test_no_import_cycle_inside_mcl():
    assert cycles(graph()) == []


def test_the_packages_stand_on_each_other_without_a_circle():
    """method < caffe < data, torchnet < engine < run < evaluation < port: no package imports one above it."""
    assert cycles(package_graph()) == []


def floor_of(package: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if package in floor)


def upward_imports(packages: dict[str, set[str]]) -> list[str]:
    """`a imports b` for every package that imports one on its own floor or above."""
    return sorted(f"{a} imports {b}" for a, targets in packages.items() for b in targets
                  if floor_of(b) >= floor_of(a))


def test_every_package_stands_on_its_floor():
    """method < caffe < data, torchnet < engine < run < evaluation < port: each imports only floors below."""
    packages = package_graph()
    assert sorted(packages) == sorted(p for floor in FLOORS for p in floor)
    assert upward_imports(packages) == []


def test_the_floor_check_sees_an_upward_import():
    assert upward_imports({"mcl.caffe": {"mcl.method", "mcl.data"}, "mcl.data": {"mcl.torchnet"}}) == [
        "mcl.caffe imports mcl.data", "mcl.data imports mcl.torchnet"]


def declared_imports(doc: str) -> set[str]:
    """The packages of `mcl` a package docstring's "May import" paragraph names (mcl.fileio counts as `mcl`)."""
    start = doc.lower().find("may import")
    assert start >= 0, "no 'May import' paragraph"
    paragraph = re.sub(r"\([^()]*\)", "", doc[start:].split("\n\n")[0])  # asides in brackets are not the list
    sentence = re.split(r"\.\s|;", paragraph)[0]  # the list ends with its sentence (or clause: "; not `mcl.x`")
    names = re.findall(r"`(mcl(?:\.[a-z_]+)?)", sentence)
    return {"mcl" if n in ("mcl", "mcl.fileio") else ".".join(n.split(".")[:2]) for n in names}


def test_each_package_imports_only_what_its_docstring_says_it_may():
    packages = package_graph()
    for init in sorted((ROOT / "mcl").glob("*/__init__.py")):
        name = f"mcl.{init.parent.name}"
        declared = declared_imports(ast.get_docstring(ast.parse(init.read_text())) or "")
        assert packages[name] <= declared, (f"{init.relative_to(ROOT)}: imports {sorted(packages[name] - declared)} "
                                            f"that its 'May import' line does not name")


def test_the_may_import_reading_takes_the_paragraph_only():
    doc = ("Modules.\n\nMay import: `mcl.method` (not `mcl.port`), `mcl.fileio`\nand `mcl.caffe.proto`'s layer; "
           "not `mcl.data`. Nor `mcl.engine`.\n\nNot `mcl.run`.")
    assert declared_imports(doc) == {"mcl.method", "mcl", "mcl.caffe"}


def test_no_entry_file_touches_sys_path_and_each_runs_as_a_program():
    """The package is installed into .venv (scripts/setup.sh, editable); every entry runs as written
    (`tools/predict.py --help` in the project's environment: executable, its shebang finds the
    environment's python3)."""
    for folder in ENTRY_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            text = path.read_text()
            assert "sys.path" not in text, path
            assert text.startswith("#!/usr/bin/env python3\n"), path
            assert os.access(path, os.X_OK), f"{path} is not executable"


def test_the_library_does_not_import_the_benchmarks():
    for path in (ROOT / "mcl").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in {"benchmarks", "bench_engine", "bench_port", "gpu_check"}
                               for n in names), path


def test_no_module_imports_a_private_name():
    assert private_imports() == []


def test_entry_points_are_short():
    long = {p: n for p, n in entry_lines().items() if n > MAX_ENTRY_LINES}
    assert long == {}


def test_few_modules_stand_directly_in_mcl():
    assert len(top_modules()) <= MAX_TOP_MODULES, top_modules()


def test_every_package_says_what_it_holds_and_may_import():
    for init in sorted((ROOT / "mcl").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 20 and "import" in doc, init


def test_entry_points_import_only_public_names():
    for path in list((ROOT / "tools").glob("*.py")) + list((ROOT / "data_prep").glob("*.py")):
        for target, names, _ in _imports(path):
            assert not any(_private(n) for n in names), (path, target, names)
            assert not any(part.startswith("_") for part in target.split(".")), (path, target)


def test_make_dry_run_writes_nothing(tmp_path):
    """`make -n assemble` prints Algorithm 1 and creates nothing, not even the run folder."""
    run = tmp_path / "run"
    proc = subprocess.run(["make", "-n", "assemble", f"RUN={run}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tools/run_stage.py" in proc.stdout and "tools/assemble.py" in proc.stdout
    assert not run.exists()


def test_engine_and_device_do_not_regenerate_the_nets(tmp_path):
    """The nets depend on their own settings only: switching ENGINE or DEVICE leaves them as they are."""
    run = tmp_path / "run"
    nets = run / "nets" / ".generated"
    make = ["make", str(nets), f"RUN={run}", "LAYOUT=5", "SCALE=0.0001"]
    first = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "make_nets.py" in first.stdout, first.stderr
    made = nets.stat().st_mtime_ns
    again = subprocess.run(make + ["ENGINE=torch", "DEVICE=cuda"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "make_nets.py" not in again.stdout, again.stdout
    assert nets.stat().st_mtime_ns == made
    changed = subprocess.run(make[:-1] + ["SCALE=0.0002"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "make_nets.py" in changed.stdout  # a setting the nets do depend on regenerates them
    assert json.loads((run / "run.json").read_text())["schedule_scale"] == 0.0002


def test_a_run_with_the_old_weights_folder_is_told_how_to_rename_it(tmp_path):
    """RUN/weights/ (loss weights, before the folder was named loss_weights/) stops make with the command."""
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "bm_eq5.json").write_text("{}")
    proc = subprocess.run(["make", "stage2", f"RUN={run}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"mv {run}/weights {run}/loss_weights" in proc.stderr
    assert not (run / "loss_weights").exists() and not (run / ".settings").exists()


def test_the_graph_sees_a_planted_cycle():
    """The measurement itself: a cycle planted in a small graph is found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


if __name__ == "__main__":
    e = graph()
    print(f"modules: {len(e)}; directly in mcl/: {len(top_modules())} ({', '.join(top_modules())})")
    print(f"imports between modules: {sum(len(v) for v in e.values())}")
    print(f"import cycles: {cycles(e) or 'none'}; between packages: {cycles(package_graph()) or 'none'}")
    for pkg, deps in sorted(package_graph().items()):
        print(f"    {pkg} imports {', '.join(sorted(deps)) or 'nothing of mcl'}")
    print(f"function-level imports of the project's own modules: {len(function_imports())}")
    for line in function_imports():
        print("   ", line)
    print(f"private names imported across modules: {private_imports() or 'none'}")
    lines = entry_lines()
    print(f"tools/ + data_prep/ lines: {sum(lines.values())}, longest {max(lines.values())}")
    for p, n in lines.items():
        if n > MAX_ENTRY_LINES:
            print(f"    {p}: {n}")
    per = {}
    for m in e:
        folder = "/".join(m.split(".")[:-1]) if not (ROOT / m.replace(".", "/")).is_dir() else m.replace(".", "/")
        per[folder] = per.get(folder, 0) + 1
    print("modules per folder:", ", ".join(f"{k}/ {v}" for k, v in sorted(per.items())))
