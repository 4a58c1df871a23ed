"""A real single-node Slurm for tests: start it (scripts/slurm/start.sh), read its limits, stop it.

    from tests.slurm_cluster import slurm_cluster   # the session fixture; or the plain functions:
    reason = skip_reason()            # None, or why this machine cannot run the cluster
    info = ensure_cluster()           # starts it or reuses a running one; sets SLURM_CONF here
    stop_cluster(info)                # by PID (scripts/slurm/stop.sh); the fixture does it only
                                      # when this session started the cluster

Opt-in: the ``slurm_cluster`` fixture starts a cluster (and may ``apt-get install`` the packages)
only when ``HISTOGRAPH_SLURM_TESTS=1`` or pytest was run with ``-m slurm``; otherwise it reuses a
running cluster or skips. ``HISTOGRAPH_SLURM_REQUIRED=1`` turns a skip into a failure (CI that must
exercise Slurm). ``HISTOGRAPH_SLURM_ACCOUNTING=1`` starts it with slurmdbd + mariadb (``sacct``).

The node-limit parsers live in the package (:mod:`histograph.sweeps.slurm`), which checks a sweep's
request against the same ``sinfo`` output before submitting it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from histograph.sweeps.slurm import SINFO_FORMAT, parse_sinfo_nodes

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"
DEFAULT_DIR = "/tmp/histograph-slurm"
LOW_PARTITION, HIGH_PARTITION = "low", "high"   # as in scripts/slurm/slurm.conf.in
BINARIES = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch")
ACCOUNTING_BINARIES = ("/usr/sbin/slurmdbd", "/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db")


class ClusterUnavailable(RuntimeError):
    """start.sh failed; the message holds the tail of its output."""


# ----------------------------------------------------------------------------- cluster
@dataclass
class ClusterInfo:
    dir: Path
    slurm_conf: Path
    node: str
    cpus: int
    memory_mb: int
    gpus: int
    partitions: list[str]
    default_partition: str | None
    high_partition: str
    accounting: bool
    started_here: bool                       # this process started it (so it should stop it)
    start_seconds: float
    start_output: str = field(repr=False, default="")

    @property
    def env(self) -> dict[str, str]:
        """Environment for ``sinfo``/``sbatch``/submitit subprocesses."""
        return dict(os.environ, SLURM_CONF=str(self.slurm_conf), HISTOGRAPH_SLURM_DIR=str(self.dir))


def state_dir() -> Path:
    return Path(os.environ.get("HISTOGRAPH_SLURM_DIR") or DEFAULT_DIR)


def skip_reason(accounting: bool = False) -> str | None:
    """Why this machine cannot run the test cluster, or None when start.sh should work.

    Cheap checks only: Linux, root, the scripts, and either the binaries or apt-get (start.sh
    installs ``slurm-wlm munge`` [+ ``slurmdbd mariadb-server``] with apt when missing). An apt
    failure (no network, no candidate) shows up as :class:`ClusterUnavailable` from
    :func:`ensure_cluster`.
    """
    if not sys.platform.startswith("linux"):
        return f"the Slurm test cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the Slurm test cluster runs its daemons as root (scripts/slurm/start.sh); not root"
    if not (SCRIPTS / "start.sh").is_file():
        return f"{SCRIPTS / 'start.sh'} is missing"
    for tool in ("flock", "runuser", "setsid"):
        if not shutil.which(tool):
            return f"'{tool}' is not installed (util-linux)"
    needed = BINARIES + (ACCOUNTING_BINARIES if accounting else ())
    missing = [b for b in needed if not os.access(b, os.X_OK)]
    if not missing:
        return None
    if os.environ.get("HISTOGRAPH_SLURM_NO_INSTALL") == "1":
        return f"Slurm is not installed ({', '.join(missing)}) and HISTOGRAPH_SLURM_NO_INSTALL=1"
    if not shutil.which("apt-get"):
        return (f"Slurm is not installed ({', '.join(missing)}) and there is no apt-get to install "
                "slurm-wlm and munge")
    return None


def is_running() -> bool:
    """slurmctld and slurmd of the cluster in :func:`state_dir` run (by their pid files)."""
    r = subprocess.run(["bash", str(SCRIPTS / "status.sh")], capture_output=True, text=True,
                       env=dict(os.environ, HISTOGRAPH_SLURM_DIR=str(state_dir())))
    return r.returncode == 0


def _run(cmd: list[str], env: dict[str, str], timeout: float = 30) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=True).stdout


def ensure_cluster(accounting: bool | None = None, gpus: int | None = None,
                   timeout: float = 600) -> ClusterInfo:
    """Start the cluster with start.sh (a no-op when it runs) and describe it.

    Sets ``SLURM_CONF`` and ``HISTOGRAPH_SLURM_DIR`` in ``os.environ`` so that ``sbatch`` and
    submitit in this process find it. ``accounting=None`` follows ``HISTOGRAPH_SLURM_ACCOUNTING``;
    a running cluster is reused as it is (with or without accounting) unless accounting=True is
    asked of one without (start.sh then fails: stop it first).
    """
    if accounting is None:
        accounting = os.environ.get("HISTOGRAPH_SLURM_ACCOUNTING") == "1"
    d = state_dir()
    env = dict(os.environ, HISTOGRAPH_SLURM_DIR=str(d))
    if gpus is not None:
        env["HISTOGRAPH_SLURM_GPUS"] = str(gpus)
    cmd = ["bash", str(SCRIPTS / "start.sh")] + (["--accounting"] if accounting else [])
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.monotonic() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise ClusterUnavailable(f"{' '.join(cmd)} failed ({r.returncode}):\n{tail}")
    conf = d / "etc" / "slurm.conf"
    os.environ["SLURM_CONF"] = str(conf)
    os.environ["HISTOGRAPH_SLURM_DIR"] = str(d)
    env["SLURM_CONF"] = str(conf)
    nodes = parse_sinfo_nodes(_run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], env))
    (name, node), = nodes.items()
    has_acct = "AccountingStorageType=accounting_storage/slurmdbd" in conf.read_text()
    return ClusterInfo(dir=d, slurm_conf=conf, node=name, cpus=node["cpus"],
                       memory_mb=node["memory_mb"], gpus=node["gpus"],
                       partitions=node["partitions"], default_partition=node["default_partition"],
                       high_partition=HIGH_PARTITION, accounting=has_acct,
                       started_here="already running" not in out, start_seconds=seconds,
                       start_output=out)


def stop_cluster(info: ClusterInfo | None = None, timeout: float = 120) -> str:
    """scripts/slurm/stop.sh: cancels the jobs, stops the daemons by PID (a no-op when stopped)."""
    d = info.dir if info else state_dir()
    r = subprocess.run(["bash", str(SCRIPTS / "stop.sh")], capture_output=True, text=True,
                       env=dict(os.environ, HISTOGRAPH_SLURM_DIR=str(d)), timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"stop.sh failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r.stdout


def _opted_in(config) -> bool:  # noqa: ANN001
    if os.environ.get("HISTOGRAPH_SLURM_TESTS") == "1":
        return True
    expr = (config.getoption("markexpr", "") or "") if config is not None else ""
    return "slurm" in expr and "not slurm" not in expr


try:
    import pytest
except ImportError:  # pragma: no cover - the module is also usable without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster(request) -> ClusterInfo:
        """The running test cluster (started for this session when needed, stopped after)."""
        required = os.environ.get("HISTOGRAPH_SLURM_REQUIRED") == "1"
        accounting = os.environ.get("HISTOGRAPH_SLURM_ACCOUNTING") == "1"

        def skip(reason: str):
            if required:
                pytest.fail(f"HISTOGRAPH_SLURM_REQUIRED=1 but: {reason}", pytrace=False)
            pytest.skip(reason)

        reason = skip_reason(accounting)
        if reason:
            skip(reason)
        if not is_running() and not _opted_in(request.config):
            skip("no Slurm test cluster is running; start one (scripts/slurm/start.sh), or let "
                 "the tests start it: HISTOGRAPH_SLURM_TESTS=1 or pytest -m slurm")
        try:
            info = ensure_cluster(accounting)
        except ClusterUnavailable as e:
            skip(str(e))
        yield info
        if info.started_here and os.environ.get("HISTOGRAPH_SLURM_KEEP") != "1":
            stop_cluster(info)
