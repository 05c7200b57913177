"""One recipe through a cluster launcher (`LAUNCH_TRAIN`, `LAUNCH`; docs/CLUSTER.md).

  python -m mcl.run.launch --run RUN --target FILE -- srun -c4 --gres=gpu:1 .venv/bin/python tools/run_stage.py ...

The launcher (srun, or any command that runs its arguments as a job and waits for it) runs in a
session of its own, so that Ctrl-C at make's terminal reaches this process only: a single SIGINT
leaves srun running (it asks for a second one within a second). On SIGINT, SIGTERM or SIGHUP this
process sends SIGTERM to the launcher, which srun answers by cancelling the job (its stage
snapshots and the next make resumes it), and waits for it to end: make, interrupted, leaves no
job in the queue. A job that fails, or that Slurm ended (scancel, its time limit, preemption), is
named with its run folder, stage and log.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

# How long the launcher has to cancel its job after SIGTERM before it is killed.
CANCEL_GRACE_S = 60.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stage_of(command: list[str]) -> str | None:
    """The stage a tools/run_stage.py command trains (its --name, else its --stage), or None."""
    found = {}
    for flag in ("--name", "--stage"):
        if flag in command[:-1]:
            found[flag] = command[command.index(flag) + 1]
    return found.get("--name") or found.get("--stage")


def launcher(command: list[str]) -> str:
    """The launcher's own words: those before the Python that runs the recipe."""
    words = []
    for word in command:
        if Path(word).name.startswith("python"):
            break
        words.append(word)
    return " ".join(words or command[:1])


def describe(run: str, target: str, command: list[str]) -> str:
    stage = stage_of(command)
    where = f"run folder {run}, target {target}"
    if stage:
        where += f", stage {stage}, log {Path(run) / 'logs' / f'{stage}.log'}"
    return where


def launch(run: str, target: str, command: list[str]) -> int:
    received: list[int] = []
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)

    def on_signal(signum, frame):
        if not received:
            proc.send_signal(signal.SIGTERM)
        received.append(signum)

    for s in SIGNALS:
        signal.signal(s, on_signal)
    rc = None
    while rc is None:
        try:
            rc = proc.wait(timeout=CANCEL_GRACE_S if received else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    if received:
        print(f"launch: interrupted ({signal.Signals(received[0]).name}); the job was cancelled: "
              f"{describe(run, target, command)}", file=sys.stderr)
        return 128 + received[0]
    if rc != 0:
        ended = f"signal {-rc}" if rc < 0 else f"exit {rc}"
        print(f"launch: job failed ({ended}): {describe(run, target, command)}; launcher: {launcher(command)}",
              file=sys.stderr)
        return rc if rc > 0 else 128 - rc
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the run folder the recipe works in (named when the job fails)")
    p.add_argument("--target", required=True, help="the file the recipe makes (named when the job fails)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- LAUNCHER... COMMAND...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the launcher and the command after --")
    try:
        return launch(args.run, args.target, command)
    except FileNotFoundError as exc:
        print(f"launch: {exc.filename}: launcher not found (LAUNCH or LAUNCH_TRAIN: {' '.join(command)}); "
              f"{describe(args.run, args.target, command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
