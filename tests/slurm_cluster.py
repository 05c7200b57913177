"""A one-node Slurm cluster on localhost for the sweep's tests (docs/CLUSTER.md).

Debian's slurmctld, slurmd, slurm-client and munge are installed with apt when missing (root, as
CI runs); the configuration, state and spool live under a temporary folder and SLURM_CONF points
at it, so nothing is written under /etc. Every daemon started is stopped by its PID.
`python tests/slurm_cluster.py` starts one, prints `sinfo`, and stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
STOP_WAIT_S = 30.0  # how long a daemon has to end on SIGTERM before it is killed
BINARIES = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/srun"]


class SlurmUnavailable(RuntimeError):
    """Slurm could not be installed or started here: the message says why."""


def install() -> None:
    if all(Path(b).exists() for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm is not installed and installing {' '.join(PACKAGES)} needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(check=False, args=["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True, env=env,
                          timeout=600)
    if proc.returncode != 0:
        update = subprocess.run(check=False, args=["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(check=False, args=["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True,
                              env=env, timeout=600)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {update.stderr[-500:]}"
                                   f"{proc.stderr[-1500:]}")


CONF = """\
ClusterName=mcl
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
MinJobAge=2
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged, slurmctld and slurmd for one node; `env` is what a client (srun, squeue) needs."""

    def __init__(self, root: Path | None = None, cpus: int | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="mcl-slurm-"))
        self.cpus = cpus or os.cpu_count() or 2
        self.host = socket.gethostname().split(".")[0]
        self.pids: dict[str, int] = {}
        self.env = dict(os.environ)

    def start(self, timeout: float = 30.0) -> Cluster:
        install()
        root = self.root
        for sub in ("state", "spool", "munge"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            raise SlurmUnavailable(f"{key} is missing: munge's package did not create its key")
        socket_path = root / "munge" / "munge.socket"
        munged = subprocess.run(check=False, args=["/usr/sbin/munged", "--force", f"--socket={socket_path}",
                                 f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                                 f"--seed-file={root}/munge/munged.seed", f"--key-file={key}"],
                                capture_output=True, text=True, timeout=30)
        if munged.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {munged.stderr.strip()}")
        self.pids["munged"] = int((root / "munge" / "munged.pid").read_text())
        conf = root / "slurm.conf"
        conf.write_text(CONF.format(host=self.host, root=root, cpus=self.cpus, ctld_port=_free_port(),
                                    d_port=_free_port()))
        self.env.update(SLURM_CONF=str(conf))
        auth = f"socket={socket_path}"
        with conf.open("a") as f:
            f.write(f"AuthInfo={auth}\n")
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run(check=False, args=[f"/usr/sbin/{daemon}", "-f", str(conf)], capture_output=True, text=True,
                                  env=self.env, timeout=30)
            if proc.returncode != 0:
                self.stop()
                raise SlurmUnavailable(f"{daemon} did not start: {proc.stderr.strip()} "
                                       f"{self.log(daemon)[-1500:]}")
            pid_file = root / f"{daemon}.pid"
            for _ in range(100):
                if pid_file.exists() and pid_file.read_text().strip():
                    break
                time.sleep(0.05)
            self.pids[daemon] = int(pid_file.read_text())
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = subprocess.run(check=False, args=["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env)
            state = (proc.stdout + proc.stderr).strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.2)
        self.stop()
        raise SlurmUnavailable(f"the node did not come up within {timeout:.0f} s (sinfo: {state!r}); "
                               f"slurmctld log: {self.log('slurmctld')[-1000:]} slurmd log: "
                               f"{self.log('slurmd')[-1000:]}")

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def queue(self) -> list[str]:
        """The jobs still in the queue, one line each (id, name, state)."""
        proc = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, env=self.env,
                              check=True)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def jobs(self, name: str | None = None, state: str | None = None) -> list[str]:
        """Ids of the jobs in the queue, of one name and state when given."""
        cmd = ["squeue", "-h", "-o", "%i"] + (["-n", name] if name else []) + (["-t", state] if state else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=True)
        return proc.stdout.split()

    def allocations(self) -> list[str]:
        """The controller's log line of every job it has allocated so far, in order."""
        return [line for line in self.log("slurmctld").splitlines() if "_slurm_rpc_allocate_resources" in line]

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            # slurmctld saves its state on SIGTERM, which can take seconds on a busy machine
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended between the last look and the kill
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    with Cluster() as c:
        print(subprocess.run(check=False, args=["sinfo"], capture_output=True, text=True, env=c.env).stdout)
        print(subprocess.run(check=False, args=["srun", "-c1", "hostname"], capture_output=True, text=True, env=c.env))
