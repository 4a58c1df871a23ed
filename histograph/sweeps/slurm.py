"""Slurm sweeps (``hydra/launcher=slurm``): checked before submission, skipped when done, never
waited for forever.

Hydra loads launchers only from its ``hydra_plugins`` package, so the registered class is
``hydra_plugins.histograph_launcher.slurm_launcher.HistographSlurmLauncher``, a thin subclass of
:class:`CheckedSlurmLauncher` here.

:class:`CheckedSlurmLauncher` is hydra-submitit-launcher's Slurm launcher (one job array per sweep,
``submitit`` requeue on ``SIGUSR2``) with three changes, each found on a real single-node Slurm
(scripts/slurm/, ``tests/test_slurm.py``):

1. **Requests are checked against the cluster before anything is submitted**
   (:func:`check_request`): memory, CPUs and GPUs per node, and the time limit, against
   ``sinfo``'s node and partition limits. Slurm refuses some requests at submit time (memory
   above a node's) and accepts others that can never start (more CPUs than a node has: pending
   forever); both end here in one sentence naming the key to change in ``configs/local/``.
2. **Finished jobs are not submitted**: each job's folder is computed in the launcher and a job
   whose ``done.json`` matches its config (:func:`histograph.sweeps.jobs.run_job`'s rule) is
   reported without a Slurm job, so re-running a finished sweep takes seconds.
3. **A job that ends without a result is reported, not waited for**: submitit's ``result()``
   waits until ``sacct`` says the job ended, and without accounting (``slurmdbd``) it never does
   for a job killed by ``scancel``, out of memory or a node failure. Here a job is finished when
   its result file exists, and lost when it has left ``squeue`` without one
   (:func:`wait_for`); a lost job gets ``failed.json`` (the aggregator lists it, the sweep exits
   non-zero) and re-running the sweep retries only it.

Requeue (preemption, time limits): Slurm sends ``SIGUSR2`` (``--signal=USR2@signal_delay_s``;
``preempt_send_user_signal`` at preemption); the run's handler
(:mod:`histograph.training.interrupt`) notes it and hands it on to submitit's, which requeues the
job (``scontrol requeue``) and exits; the requeued job finds its folder and resumes from
``checkpoints/last.ckpt`` (the last completed epoch, with its RNG states), so it ends with the
numbers of an uninterrupted run. Lightning's own Slurm auto-requeue stays off (the run installs
its ``SIGUSR1`` handler first).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import submitit
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import DictConfig, OmegaConf, open_dict
from submitit.core.utils import pickle_load

from histograph.errors import UserError
from histograph.keys import digest, result_config
from histograph.sweeps.jobs import FAILED_FILE, read_done, write_failed

log = logging.getLogger("histograph")

SINFO_FORMAT = "%N|%c|%m|%G|%P|%T"  # sinfo -h -N -o "$SINFO_FORMAT": node, cpus, MB, gres, ...
_LOCAL = "configs/local/default.yaml"


# ---------------------------------------------------------------------- the cluster's limits
def parse_gres_gpus(gres: str) -> int:
    """GPUs in a Gres string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1,shard:8``,
    ``(null)`` or empty -> 2, 4, 3, 0."""
    total = 0
    for part in re.split(r",(?![^(]*\))", gres or ""):
        bits = re.sub(r"\(.*?\)", "", part).strip().split(":")
        if bits[0] != "gpu":
            continue
        count = bits[-1] if len(bits) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


def _int(value: str | None) -> int | None:
    m = re.match(r"\d+", value or "")
    return int(m.group()) if m else None


def parse_sinfo_nodes(text: str) -> dict[str, dict[str, Any]]:
    """Output of ``sinfo -h -N -o '%N|%c|%m|%G|%P|%T'`` (a line per node and partition) ->
    ``{node: {cpus, memory_mb, gpus, state, partitions, default_partition}}``; the default
    partition carries a ``*`` in ``%P``."""
    nodes: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres, part, state = (f.strip() for f in line.split("|")[:6])
        node = nodes.setdefault(name, {"cpus": _int(cpus), "memory_mb": _int(mem),
                                       "gpus": parse_gres_gpus(gres), "state": state,
                                       "partitions": [], "default_partition": None})
        if part.endswith("*"):
            part = part[:-1]
            node["default_partition"] = part
        node["partitions"].append(part)
    return nodes


def parse_time_limit(text: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (``%l`` of sinfo) in minutes; ``None`` for
    ``infinite``/``UNLIMITED``."""
    text = text.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts[-3:]
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


@dataclass
class Partition:
    """What one partition offers: its best node's CPUs, memory and GPUs, and its time limit."""

    name: str
    cpus: int = 0
    memory_mb: int = 0
    gpus: int = 0
    max_time_min: int | None = None
    default: bool = False
    nodes: list[str] = field(default_factory=list)


def cluster_partitions(run: Any = subprocess.run) -> dict[str, Partition]:
    """The partitions of the cluster ``sinfo`` talks to (``run`` is replaceable in tests).

    :raises UserError: when ``sinfo`` is missing or fails (no Slurm reachable).
    """
    try:
        nodes_text = run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True,
                         text=True, check=True, timeout=60).stdout
        limits_text = run(["sinfo", "-h", "-o", "%P|%l"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"hydra/launcher=slurm needs a reachable Slurm, and `sinfo` failed "
                        f"({exc}); run on a login node (or start scripts/slurm/start.sh) or "
                        f"use hydra/launcher=joblib.") from exc
    parts: dict[str, Partition] = {}
    for name, node in parse_sinfo_nodes(nodes_text).items():
        for p in node["partitions"]:
            part = parts.setdefault(p, Partition(p))
            part.nodes.append(name)
            part.cpus = max(part.cpus, node["cpus"] or 0)
            part.memory_mb = max(part.memory_mb, node["memory_mb"] or 0)
            part.gpus = max(part.gpus, node["gpus"])
            part.default = part.default or node["default_partition"] == p
    for line in limits_text.splitlines():
        if "|" in line:
            name, limit = line.split("|", 1)
            name = name.strip().rstrip("*")
            if name in parts:
                parts[name].max_time_min = parse_time_limit(limit)
    return parts


def check_request(params: dict[str, Any], partitions: dict[str, Partition]) -> Partition:
    """Refuse a request no node of the partition can run, before anything is submitted.

    :param params: the launcher's settings (``hydra.launcher.*``).
    :returns: the partition the jobs go to.
    :raises UserError: one sentence naming the ``hydra.launcher`` key and the ``cluster.*`` key
        of ``configs/local/default.yaml`` to change.
    """
    name = params.get("partition")
    if name is None:
        default = [p for p in partitions.values() if p.default]
        if not default:
            raise UserError(f"The cluster has no default partition; set cluster.partition in "
                            f"{_LOCAL} (one of {', '.join(sorted(partitions))}).")
        part = default[0]
    elif name not in partitions:
        raise UserError(f"hydra.launcher.partition={name} is not a partition of this cluster "
                        f"({', '.join(sorted(partitions))}); set cluster.partition in {_LOCAL}.")
    else:
        part = partitions[name]
    tasks = int(params.get("tasks_per_node") or 1)
    cpus = int(params.get("cpus_per_task") or 1) * tasks
    gpus = int(params.get("gpus_per_node") or 0) or int(params.get("gpus_per_task") or 0) * tasks
    mem_mb = float(params.get("mem_gb") or 0) * 1024
    where = f"the nodes of partition {part.name}"
    if cpus > part.cpus:
        raise UserError(f"hydra.launcher.cpus_per_task x tasks_per_node = {cpus} CPUs, but "
                        f"{where} have {part.cpus}; lower cluster.cpus_per_task in {_LOCAL}.")
    if mem_mb > part.memory_mb:
        raise UserError(f"hydra.launcher.mem_gb={params.get('mem_gb')} is more memory than "
                        f"{where} have ({part.memory_mb // 1024} GB); lower cluster.mem_gb in "
                        f"{_LOCAL}.")
    if gpus > part.gpus:
        raise UserError(f"The jobs ask for {gpus} GPU(s) per node (hydra.launcher.gpus_per_node"
                        f"/gpus_per_task) but {where} have {part.gpus}; set cluster."
                        f"gpus_per_node in {_LOCAL} (0 for CPU jobs).")
    timeout = params.get("timeout_min")
    if timeout is not None and part.max_time_min is not None and timeout > part.max_time_min:
        raise UserError(f"hydra.launcher.timeout_min={timeout} is above partition {part.name}'s "
                        f"time limit ({part.max_time_min} min); lower cluster.timeout_min in "
                        f"{_LOCAL}.")
    return part


# ---------------------------------------------------------------------- waiting for the jobs
def queued_job_ids(run: Any = subprocess.run) -> set[str] | None:
    """Job ids in Slurm's queue (array tasks as ``<array>_<task>``), or ``None`` when ``squeue``
    cannot be asked (then nothing is declared lost)."""
    try:
        out = run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True,
                  check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


def wait_for(jobs: Sequence[Any], poll_s: float = 3.0, lost_after_s: float = 20.0,
             queued: Any = queued_job_ids) -> list[tuple[str, Any]]:
    """Wait until every submitit job has its result file, or has left the queue without one.

    :returns: per job ``("done", (outcome, value))`` as submitit pickled it, or ``("lost",
        reason)``.
    """
    out: list[tuple[str, Any] | None] = [None] * len(jobs)
    gone_since: dict[int, float] = {}
    while any(o is None for o in out):
        ids = queued()
        now = time.monotonic()
        for i, job in enumerate(jobs):
            if out[i] is not None:
                continue
            if job.paths.result_pickle.exists():
                out[i] = ("done", pickle_load(job.paths.result_pickle))
            elif ids is not None and str(job.job_id) not in ids:
                since = gone_since.setdefault(i, now)  # a requeue passes through the queue
                if now - since >= lost_after_s:
                    out[i] = ("lost", f"Slurm job {job.job_id} left the queue without a result "
                                      f"(cancelled, killed, out of memory, or a node failure; "
                                      f"see {job.paths.stderr})")
            else:
                gone_since.pop(i, None)
        if any(o is None for o in out):
            time.sleep(poll_s)
    return [o for o in out if o is not None]


def make_executor(params: dict[str, Any]) -> submitit.AutoExecutor:
    """The submitit executor of the launcher's settings (``hydra.launcher.*``), as
    hydra-submitit-launcher translates them (``slurm_`` prefix for Slurm-only keys)."""
    params = {k: v for k, v in params.items() if k != "_target_"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout", 0))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor


# ---------------------------------------------------------------------- the launcher
class CheckedSlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher, checked, idempotent and never stuck (see the
    module docstring). Its settings are those of ``hydra/launcher=submitit_slurm``; the
    project's values come from ``configs/hydra/launcher/slurm.yaml`` and ``configs/local/``."""

    def _job_config(self, overrides: Sequence[str], idx: int) -> tuple[DictConfig, Path]:
        """A job's composed config and its folder, as the job itself will see them."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = idx
            job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            cfg.hydra.runtime.output_dir = str(job_dir)
        return cfg, job_dir

    def _finished(self, cfg: DictConfig, job_dir: Path) -> Any | None:
        """The stored objective when the job's ``done.json`` matches its config, else None."""
        done = read_done(job_dir)
        if done is None:
            return None
        master = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} while the config resolves
        try:
            current = digest(result_config(OmegaConf.masked_copy(
                cfg, [k for k in cfg if k != "hydra"])))
        finally:
            if master is not None:
                HydraConfig.instance().set_config(master)
        return done if done.get("config_hash") == current else None

    def _return(self, overrides: Sequence[str], cfg: DictConfig, job_dir: Path,
                value: Any) -> JobReturn:
        ret = JobReturn(overrides=list(overrides), cfg=cfg, hydra_cfg=cfg,
                        working_dir=str(job_dir), task_name=str(cfg.hydra.job.name),
                        status=JobStatus.COMPLETED)
        ret.return_value = value
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        try:
            check_request(self.params, cluster_partitions())
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        configs = [self._job_config(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        todo = []
        for i, (overrides, (cfg, job_dir)) in enumerate(zip(job_overrides, configs)):
            done = self._finished(cfg, job_dir)
            if done is not None:
                returns[i] = self._return(overrides, cfg, job_dir, done.get("objective"))
            else:
                todo.append(i)
        print(f"[histograph] slurm: {len(job_overrides) - len(todo)} of {len(job_overrides)} "
              f"jobs finished before, {len(todo)} submitted", flush=True)
        if todo:
            submitted = self._submit([job_overrides[i] for i in todo],
                                     [initial_job_idx + i for i in todo])
            for i, (status, value) in zip(todo, wait_for(submitted)):
                overrides, (cfg, job_dir) = job_overrides[i], configs[i]
                if status == "done" and value[0] == "success":
                    returns[i] = value[1]
                    continue
                reason = value if status == "lost" else f"the Slurm job raised: {value[1]}"
                job_dir.mkdir(parents=True, exist_ok=True)
                if not (job_dir / FAILED_FILE).exists():
                    write_failed(job_dir, RuntimeError(str(reason).splitlines()[-1]),
                                 list(overrides))
                log.error("%s: %s", job_dir, reason)
                returns[i] = self._return(overrides, cfg, job_dir, None)
        return [r for r in returns if r is not None]

    def _submit(self, overrides: Sequence[Sequence[str]], indices: Sequence[int]) -> list[Any]:
        """Submit the jobs as one array; the same executor settings as the parent launcher."""
        executor = make_executor(self.params)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        args = [(list(o), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state)
                for o, idx in zip(overrides, indices)]
        return executor.map_array(self, *zip(*args))
