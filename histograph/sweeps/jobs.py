"""Idempotent sweep jobs: stable job folders, done/failure markers, skip-if-done.

A multirun job writes into ``<hydra.sweep.dir>/<job dir>`` where

* the sweep dir is ``${paths.log_dir}/sweeps/${sweep_name}`` (no timestamp), and
* the job dir is the job's overrides, as Hydra's ``hydra.job.override_dirname`` writes them
  (sorted ``key=value`` joined by ``,``; keys that do not change a result, such as ``logger`` or
  ``threads``, are left out by ``hydra.job.config.override_dirname.exclude_keys``), made
  file-system safe by :func:`job_dir_name` (the ``${hg.job_dir:...}`` resolver).

So the same sweep command always maps a job to the same folder, whatever the launcher (basic,
joblib, submitit) or the job's index. :func:`run_idempotent` wraps one job:

* ``done.json`` (with ``results.json``) already there and the same config -> the job is skipped
  and returns its stored objective; nothing is trained;
* otherwise the job trains (resuming from ``checkpoints/last.ckpt`` when a killed or requeued
  attempt left one) and, on success, writes ``done.json``: its metrics, the config hash and its
  overrides;
* any exception becomes ``failed.json`` (``error``, ``traceback``, ``overrides``) and the job
  returns ``None``, so the other jobs of the sweep keep going (Hydra would otherwise re-raise the
  first failure when the sweep ends, skipping the ``on_multirun_end`` aggregation);
* a finished job whose config changed since (e.g. an edited experiment preset) is not silently
  kept: its outputs move to ``superseded/<UTC time>/`` and the job trains again.

A DDP job of a sweep runs one launcher task per rank (``hydra.launcher.tasks_per_node``, see
:func:`setup_distributed`); every rank runs the job, only global rank 0 writes the markers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from histograph.utils import atomic_write_json

log = logging.getLogger("histograph")

DONE_FILE = "done.json"
FAILED_FILE = "failed.json"
RESULTS_FILE = "results.json"
#: Outputs of a finished job that move to ``superseded/<time>/`` when its config changed.
JOB_OUTPUTS = (RESULTS_FILE, DONE_FILE, FAILED_FILE, "checkpoints", "csv", "wandb",
               "tensorboard")
#: Config keys that do not change what a job computes; left out of :func:`config_hash`.
HASH_IGNORED = ("paths", "logger", "sweep_name", "task_name", "tags", "threads", "resume",
                "cluster", "hydra", "data.num_workers", "data.eval_batch_size",
                "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                "trainer.enable_progress_bar", "trainer.enable_model_summary",
                "trainer.log_every_n_steps")
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


# ---------------------------------------------------------------------- job folder names
def job_dir_name(overrides: str | None, max_len: int = MAX_NAME) -> str:
    """A file-system safe folder name for a job, from its ``override_dirname``.

    Characters other than letters, digits and ``._,=+@-`` become ``_`` (``/`` included, so a
    value never creates sub-folders); a leading ``.`` is dropped (no hidden folders). Names
    longer than ``max_len`` keep their first characters and end in a short hash of the whole
    text, so two different long override sets never share a folder. No overrides -> ``default``.

    >>> job_dir_name("model.layers=4,readout=mean")
    'model.layers=4,readout=mean'
    >>> job_dir_name("paths.x=/a b")
    'paths.x=_a_b'
    """
    text = "" if overrides is None else str(overrides)
    safe = _UNSAFE.sub("_", text).lstrip(".")
    if not safe:
        return "default"
    if len(safe) > max_len:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        safe = f"{safe[:max_len - 11].rstrip(',_')}-{digest}"
    return safe


def register_resolvers() -> None:
    """Register ``${hg.job_dir:<text>}`` (:func:`job_dir_name`) with OmegaConf (idempotent).

    Called when :mod:`histograph.train` is imported, which happens in every process that runs a
    job (the launcher's workers unpickle the task function from that module).
    """
    if not OmegaConf.has_resolver("hg.job_dir"):
        OmegaConf.register_new_resolver("hg.job_dir", job_dir_name)


register_resolvers()


# ---------------------------------------------------------------------- hydra state
def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """This job's task overrides (``hydra.overrides.task``), or ``[]`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def job_name() -> str | None:
    """The job's readable name from its overrides (its folder name), or ``None`` without any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    name = HydraConfig.get().job.get("override_dirname")
    return job_dir_name(name) if name else None


def global_rank() -> int:
    """The distributed rank of this process from the launcher's environment (0 when alone).

    Lightning's own launcher sets ``RANK``/``LOCAL_RANK`` for the processes it starts; under
    Slurm (submitit with ``tasks_per_node > 1``) each task has ``SLURM_PROCID``.
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def _is_ddp(cfg: DictConfig) -> bool:
    trainer = cfg.get("trainer") or {}
    return str(trainer.get("strategy") or "").startswith("ddp") and (
        trainer.get("devices") not in (1, "1") or int(trainer.get("num_nodes") or 1) > 1)


def setup_distributed(cfg: DictConfig) -> int:
    """Let the launcher's tasks be the DDP ranks of a sweep job; return the number of tasks.

    Lightning starts extra DDP ranks by re-running ``sys.argv``; inside a multirun that re-runs
    the sweep (basic/joblib launchers) or breaks (submitit's job runner takes no Hydra
    arguments). So a DDP job of a sweep runs with ``hydra.launcher.tasks_per_node=<devices>``:
    Slurm (or submitit's local executor) starts one process per rank, and this exports
    ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` from submitit's job
    environment, so Lightning uses those processes instead of launching its own (under Slurm it
    reads the same from ``SLURM_*``).

    :raises UserError: for a DDP job without such tasks, for several tasks without
        ``trainer=ddp``, and for ``trainer.devices`` that differs from the tasks per node.
    """
    from histograph.errors import UserError

    tasks, nodes = 1, 1
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.JobEnvironment()
        tasks, nodes = int(env.num_tasks), int(env.num_nodes)
    ddp = _is_ddp(cfg)
    if ddp and tasks == 1:
        raise UserError("A DDP job in a sweep needs its ranks started by the launcher: use "
                        "hydra/launcher=slurm (or submitit_local) with "
                        "hydra.launcher.tasks_per_node=<trainer.devices>.")
    if tasks > 1 and not ddp:
        raise UserError(f"hydra.launcher.tasks_per_node gives {tasks // nodes} tasks per node "
                        f"but the trainer is not DDP; add trainer=ddp "
                        f"trainer.devices={tasks // nodes}, or set tasks_per_node=1.")
    if tasks > 1:
        devices = cfg.trainer.get("devices")
        if str(devices) != str(tasks // nodes):
            raise UserError(f"trainer.devices={devices} must equal "
                            f"hydra.launcher.tasks_per_node={tasks // nodes} (one task per "
                            f"device).")
        if "SLURM_JOB_ID" not in os.environ:  # under Slurm, Lightning reads SLURM_* itself
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return tasks


# ---------------------------------------------------------------------- config identity
def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys that do not change results (:data:`HASH_IGNORED`)."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(tree, dict)
    for key in HASH_IGNORED:
        _drop(tree, key)
    return tree


def _digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig) -> str:
    """A short SHA-256 of :func:`hashed_config` (keys sorted), stable across processes."""
    return _digest(hashed_config(cfg))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """``"trainer.max_epochs 100 -> 200, ..."`` for the first ``limit`` differing keys."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(parts) + more


# ---------------------------------------------------------------------- markers
def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_done(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's ``done.json`` when it finished (``done.json`` and ``results.json`` exist)."""
    job_dir = Path(job_dir)
    if not (job_dir / DONE_FILE).is_file() or not (job_dir / RESULTS_FILE).is_file():
        return None
    try:
        return json.loads((job_dir / DONE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("Unreadable %s (%s); the job runs again.", job_dir / DONE_FILE, exc)
        return None


def objective(results: dict[str, Any]) -> float | None:
    """What a job returns to Hydra's sweeper: validation metric, else test (``gin`` protocol)."""
    value = results.get("val")
    return results.get("test") if value is None else value


def write_done(job_dir: str | os.PathLike, results: dict[str, Any], config: dict[str, Any],
               overrides: list[str]) -> Path:
    """Write ``done.json``: the job's headline metrics, overrides and :func:`hashed_config`
    (``config``, taken before the job ran: training may fill values such as ``model.hidden``)."""
    path = Path(job_dir) / DONE_FILE
    atomic_write_json(path, {
        "status": "done",
        "metric": results.get("metric"),
        "val": results.get("val"),
        "test": results.get("test"),
        "objective": objective(results),
        "selected_epoch": results.get("selected_epoch"),
        "epochs": results.get("epochs"),
        "num_params": results.get("num_params"),
        "wall_time_s": results.get("wall_time_s"),
        "overrides": overrides,
        "config_hash": _digest(config),
        "config": config,
        "finished_at": _utc_now(),
        "host": socket.gethostname(),
    })
    return path


def write_failed(job_dir: str | os.PathLike, exc: BaseException, overrides: list[str]) -> Path:
    """Write ``failed.json``: ``error`` (one line), ``traceback``, ``overrides`` and context."""
    from histograph.errors import UserError

    path = Path(job_dir) / FAILED_FILE
    message = str(exc).strip() or type(exc).__name__
    error = message if isinstance(exc, UserError) else f"{type(exc).__name__}: {message}"
    atomic_write_json(path, {
        "status": "failed",
        "error": error,
        "exception": type(exc).__name__,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "overrides": overrides,
        "failed_at": _utc_now(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    })
    return path


def supersede(job_dir: str | os.PathLike) -> Path:
    """Move a finished job's outputs into ``superseded/<UTC time>/`` (nothing is deleted)."""
    job_dir = Path(job_dir)
    target = job_dir / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(parents=True, exist_ok=True)
    for name in JOB_OUTPUTS:
        if (job_dir / name).exists():
            shutil.move(str(job_dir / name), str(target / name))
    return target


# ---------------------------------------------------------------------- the wrapper
def run_idempotent(cfg: DictConfig, run: Callable[[DictConfig], dict[str, Any]]
                   ) -> float | None:
    """Run one multirun job at most once: skip when done, mark done or failed, never raise.

    :param cfg: the job's composed config (``paths.output_dir`` is its folder).
    :param run: trains and evaluates the job, returns its results (``histograph.train.run``).
    :returns: the job's objective (validation metric, else test), or ``None`` when it failed.
    """
    job_dir = Path(cfg.paths.output_dir)
    overrides = job_overrides()
    try:
        setup_distributed(cfg)  # may export RANK (submitit tasks as DDP ranks)
        rank0 = global_rank() == 0
        current = hashed_config(cfg)  # before `run`, which fills values such as model.hidden
        done = read_done(job_dir)
        if done is not None and done.get("config_hash") == _digest(current):
            log.info("Skipping %s: done.json says it finished at %s (%s %s).", job_dir,
                     done.get("finished_at"), done.get("metric"), done.get("objective"))
            return done.get("objective")
        if done is not None and rank0:
            diff = config_diff(done.get("config") or {}, current)
            moved = supersede(job_dir)
            log.warning("%s finished under a different config (%s); its outputs moved to %s "
                        "and the job trains again.", job_dir, diff, moved)
        elif rank0:
            from histograph.checkpoints import stale_checkpoint

            stale = stale_checkpoint(cfg, job_dir)  # an unfinished (failed, killed) attempt
            if stale:
                moved = supersede(job_dir)
                log.warning("%s was started under a different config (%s); its outputs moved "
                            "to %s and the job trains from scratch.", job_dir,
                            ", ".join(stale[:3]), moved)
        if rank0 and (job_dir / FAILED_FILE).exists():
            (job_dir / FAILED_FILE).unlink()  # a new attempt; a stale marker would mislead
        results = run(cfg)
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the sweep
        if global_rank() == 0:
            path = write_failed(job_dir, exc, overrides)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"[histograph] FAILED {job_dir}: {first} -> {path}", file=sys.stderr,
                  flush=True)
        log.exception("Job %s failed", job_dir)
        return None
    if rank0:
        write_done(job_dir, results, current, overrides)
    return objective(results)
