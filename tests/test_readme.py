"""The README's commands work as written: its tool commands in the project's environment (entered
with `source .venv/bin/activate`, as the README says), its make commands as a plan (`make -n`),
and every link of the README to a file of the repository resolves."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def commands() -> list[str]:
    """Every command line of the README's shell blocks, continued lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            cmd = line.split("  #")[0].split(" # ")[0].strip()
            if cmd:
                out.append(cmd)
    return out


def in_environment(cmd: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """`cmd` in bash after the README's `source .venv/bin/activate`, from a fresh environment's PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    script = f"source {ROOT / '.venv/bin/activate'} && cd {shlex.quote(str(cwd))} && {cmd}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout, env=env)


def test_the_readme_says_how_to_enter_the_environment_before_its_first_tool():
    cmds = commands()
    first_tool = next(i for i, c in enumerate(cmds) if c.startswith(("tools/", "benchmarks/", "data_prep/")))
    assert "source .venv/bin/activate" in cmds[:first_tool]


def test_every_tool_the_readme_shows_is_an_executable_program_with_help():
    tools = sorted({c.split()[0] for c in commands() if c.startswith(("tools/", "benchmarks/", "data_prep/"))})
    assert tools, "the README shows no tool"
    for t in tools:
        assert os.access(ROOT / t, os.X_OK), f"{t} is not executable"
        r = in_environment(f"{t} --help", ROOT)
        assert r.returncode == 0 and "usage" in r.stdout, (t, r.stderr[-2000:])


def test_the_readme_photo_commands_run_as_written(tmp_path):
    """The "Port and use the model" block: a photo, then landmarks by the in-box models, with runs/ in a
    scratch folder (the commands are otherwise the README's, word for word)."""
    (tmp_path / "runs").mkdir()
    os.symlink(ROOT / "tools", tmp_path / "tools")
    ran = 0
    for cmd in commands():
        if cmd.startswith(("tools/sample_photo.py", "tools/predict.py runs/")):
            r = in_environment(cmd, tmp_path)
            assert r.returncode == 0, (cmd, r.stderr[-3000:])
            ran += 1
    assert ran >= 3
    faces = (tmp_path / "runs/pred/photo.json").read_text()
    assert '"landmarks"' in faces and (tmp_path / "runs/pred/photo.pts").exists()
    assert (tmp_path / "runs/pred5/photo.json").exists()


@pytest.mark.parametrize("cmd", [c for c in commands() if c.startswith("make ") and c.split()[1] not in ("demo", "test")])
def test_the_readme_make_commands_plan_without_writing(cmd, tmp_path):
    """Each make command the README shows is a valid plan (`make -n`, its run in a scratch folder)."""
    run = tmp_path / "run"
    args = shlex.split(cmd)
    r = subprocess.run([args[0], "-n", *args[1:], f"RUN={run}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not run.exists()


def test_every_relative_link_of_the_readme_resolves():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [x for x in links if not re.match(r"[a-z]+://", x)]
    assert local
    missing = [x for x in local if not (ROOT / x).exists()]
    assert missing == []
