"""A real single-node SLURM cluster of a test's own: Debian's slurmctld, slurmd and munged,
run as root from a temporary folder on free ports, CPU only, with two fake GPUs (character
devices made with mknod, named in gres.conf, so that SLURM hands one to each task and sets
CUDA_VISIBLE_DEVICES as it would for real ones). Two partitions: `work` (the default) and
`urgent`, whose jobs preempt `work`'s and requeue them (PreemptMode=REQUEUE)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

GPUS = 2


def _daemon(name: str) -> str:
    """A daemon's path: /usr/sbin may be missing from a CI job's PATH."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    """Start with `SlurmCluster()`, stop with `.stop()`; `.env` is what SLURM's commands need
    (SLURM_CONF), `.run(...)` runs one of them."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lsearch-slurm-"))
        self.folder.chmod(0o755)  # munged wants its socket's folders reachable by all
        for name in ("munge", "state", "spool", "log", "gpus"):
            (self.folder / name).mkdir()
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._start_munge()
        for index in range(GPUS):  # (1, 3) is /dev/null's device number: harmless if opened
            os.mknod(self.folder / "gpus" / f"nvidia{index}", 0o666 | 0o020000, os.makedev(1, 3))
        self._write_config()
        for daemon in ("slurmctld", "slurmd"):
            command = [_daemon(daemon), "-f", str(self.conf)]
            subprocess.run(command, check=True, timeout=60, env=self.env)
        self._wait_until_idle()

    def _start_munge(self) -> None:
        munge = self.folder / "munge"
        munge.chmod(0o711)
        (munge / "key").write_bytes(os.urandom(1024))
        (munge / "key").chmod(0o400)
        self.munge_socket = munge / "socket"
        subprocess.run(
            [_daemon("munged"), "--force", f"--key-file={munge / 'key'}",
             f"--socket={self.munge_socket}",
             f"--log-file={munge / 'log'}", f"--pid-file={munge / 'pid'}",
             f"--seed-file={munge / 'seed'}"],
            check=True, timeout=60,
        )  # fmt: skip

    def _write_config(self) -> None:
        folder, host = self.folder, socket.gethostname().split(".")[0]
        self.conf.write_text(
            f"ClusterName=lsearchtest\nSlurmctldHost={host}(127.0.0.1)\n"
            f"SlurmctldPort={_free_port()}\nSlurmdPort={_free_port()}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={self.munge_socket}\n"
            f"StateSaveLocation={folder / 'state'}\nSlurmdSpoolDir={folder / 'spool'}\n"
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}\nSlurmdPidFile={folder / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={folder / 'log/slurmctld.log'}\n"
            f"SlurmdLogFile={folder / 'log/slurmd.log'}\n"
            # No cgroups in a container: processes are tracked through /proc.
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
            "MpiDefault=none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n"
            "SchedulerType=sched/backfill\nReturnToService=2\nKillWait=30\nMinJobAge=600\n"
            "GresTypes=gpu\nPreemptType=preempt/partition_prio\nPreemptMode=REQUEUE\n"
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 Gres=gpu:{GPUS} "
            "State=UNKNOWN\n"
            "PartitionName=work Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 "
            "GraceTime=0\n"
            "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 "
            "PreemptMode=OFF\n"
        )
        (self.folder / "gres.conf").write_text(
            f"Name=gpu File={self.folder / 'gpus'}/nvidia[0-{GPUS - 1}]\n"
        )

    def run(self, *command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """Run a SLURM command against this cluster; its stdout."""
        done = subprocess.run(
            command, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
        return done.stdout

    def _wait_until_idle(self, deadline_s: float = 60) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "--noheader", "--partition=work", "--format=%T"],
                env=self.env, capture_output=True, text=True, timeout=30,
            ).stdout.strip()  # fmt: skip
            if state == "idle":
                return
            time.sleep(0.5)
        raise AssertionError(f"SLURM's node never came up: {self.logs()}")

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields for one job (an array task: `ID_TASK`)."""
        text = self.run("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def tasks(self, array_id: str) -> list[dict[str, str]]:
        """Every task of an array, by task id."""
        text = self.run("scontrol", "show", "job", "--oneliner", array_id)
        found = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line]
        # (Tasks not started yet are one record, its ArrayTaskId a range such as 1-2%1.)
        return sorted(found, key=lambda fields: int(re.split(r"\D", fields["ArrayTaskId"])[0]))

    def wait_for(self, job_id: str, states: set[str], deadline_s: float = 300) -> dict[str, str]:
        """Wait until the job (or array task) is in one of `states`; its fields then."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            fields = self.job(job_id)
            if fields["JobState"] in states:
                return fields
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} never reached {states}: {fields}\n{self.logs()}")

    def wait_until_done(self, array_id: str, deadline_s: float = 600) -> list[dict[str, str]]:
        """Wait until no task of the array is pending or running; the tasks then."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            tasks = self.tasks(array_id)
            if all(t["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") for t in tasks):
                return tasks
            time.sleep(1)
        raise AssertionError(f"array {array_id} did not finish: {tasks}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-30:])
            for path in sorted((self.folder / "log").iterdir())
        )

    def stop(self) -> None:
        # A test that failed may leave tasks running: their workers must not outlive it.
        subprocess.run(["scancel", "--signal=KILL", "--user=root"], env=self.env,
                       capture_output=True, timeout=60)  # fmt: skip
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=60)
        for name in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            with contextlib.suppress(OSError, ValueError):  # already gone
                _stop(int((self.folder / name).read_text()))
        shutil.rmtree(self.folder, ignore_errors=True)


def _stop(pid: int, deadline_s: float = 30) -> None:
    """SIGTERM, then wait for the process to end: munged writes its seed file as it exits,
    which would otherwise come back after the folder is removed."""
    os.kill(pid, 15)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        os.kill(pid, 0)  # OSError once it is gone (they are not our children: no zombies)
        time.sleep(0.1)
