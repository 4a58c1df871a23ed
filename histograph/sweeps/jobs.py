"""The one job runner of sweeps and nested CV: at most once, done/failed markers, never raises.

:func:`run_job` runs one job in its folder (``paths.output_dir``):

* ``done.json`` (with ``results.json``) already there and the same result config
  (:func:`histograph.keys.config_hash`) -> the job is skipped and its stored results returned;
  nothing is trained;
* otherwise the job trains (resuming from ``checkpoints/last.ckpt`` when a killed or requeued
  attempt left one) and, on success, writes ``done.json``: its metrics, the config hash, the
  result config and its overrides;
* any exception becomes ``failed.json`` (``error``, ``exception``, ``traceback``, ``overrides``)
  and an outcome with status ``failed``, so the other jobs keep going (Hydra would otherwise
  re-raise the first failure when the sweep ends, skipping the ``on_multirun_end`` aggregation);
* a finished job whose result config changed since (e.g. an edited experiment preset) is not
  silently kept: its outputs move to ``superseded/<UTC time>/`` and the job trains again; so does
  an unfinished one whose ``last.ckpt`` came from another config. With ``resume=force`` both
  continue from their ``last.ckpt`` instead (more epochs for a finished sweep: the change is
  recorded in ``results.json``; only the earlier results and markers move aside);
* a job stopped by a signal (:class:`~histograph.training.interrupt.RunInterrupted`) leaves
  ``interrupted.json`` (no ``failed.json``: it is resumable) and every later job of the same
  process is not started, so that the sweep ends, writes its summary and exits non-zero
  (:mod:`histograph.sweeps.callbacks`). A stopping signal that arrives *between* jobs of a
  multirun (no run is there to catch it) does the same (:func:`stop_between_jobs`): without it
  the process would die at once and the sweep end without its summary.

Hydra multiruns call it through :func:`run_idempotent`; :mod:`histograph.nested` calls it for
every grid point and retrain. A DDP job of a sweep runs one launcher task per rank
(``hydra.launcher.tasks_per_node``, see :func:`setup_distributed`); every rank runs the job, only
global rank 0 writes the markers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from histograph.errors import RunInterrupted, UserError
from histograph.keys import changed_keys, describe_changes, digest, result_config
from histograph.sweeps.names import global_rank, job_overrides
from histograph.utils import atomic_write_json

log = logging.getLogger("histograph")

DONE_FILE = "done.json"
FAILED_FILE = "failed.json"
RESULTS_FILE = "results.json"
INTERRUPTED_FILE = "interrupted.json"
#: Outputs of a finished job that move to ``superseded/<time>/`` when its config changed.
JOB_OUTPUTS = (RESULTS_FILE, DONE_FILE, FAILED_FILE, INTERRUPTED_FILE, "checkpoints", "csv",
               "wandb", "tensorboard")
#: Set when a job of this process was stopped by a signal: the sweep stops starting jobs.
_stopped_by: str | None = None


@dataclass
class JobOutcome:
    """What :func:`run_job` did: ``status`` is ``"done"`` (trained now), ``"skipped"`` (done
    before, same config), ``"failed"``, ``"interrupted"`` (stopped by a signal, resumable) or
    ``"not_started"`` (an earlier job of this sweep was interrupted); ``results`` is the
    ``results.json`` record (``None`` unless done or skipped), ``error`` the one-line reason."""

    status: str
    results: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.results is not None


# ---------------------------------------------------------------------- distributed jobs
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
    tasks, nodes = 1, 1
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit  # only inside a submitit job (an optional dependency)

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


# ---------------------------------------------------------------------- markers
def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("Unreadable %s (%s); the job runs again.", path, exc)
        return None


def read_results(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A finished job's ``results.json``, its ``checkpoint`` path made to point into this folder.

    ``checkpoint`` is recorded as the absolute path the run wrote; a sweep folder copied from a
    cluster (or moved) keeps the old one. The file of that name in ``<job_dir>/checkpoints/`` is
    returned whenever it exists, so a consumer that loads the selected weights (a frozen-backbone
    run, a probe) reads this folder's, never the original's (which may be gone, or continued by
    then)."""
    job_dir = Path(job_dir)
    results = _read_json(job_dir / RESULTS_FILE)
    recorded = (results or {}).get("checkpoint")
    if recorded and (here := job_dir / "checkpoints" / Path(recorded).name).is_file():
        results["checkpoint"] = str(here.resolve())
    return results


def read_done(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's ``done.json`` when it finished (``done.json`` and ``results.json`` exist)."""
    job_dir = Path(job_dir)
    if not (job_dir / DONE_FILE).is_file() or not (job_dir / RESULTS_FILE).is_file():
        return None
    return _read_json(job_dir / DONE_FILE)


def objective(results: dict[str, Any] | None) -> float | None:
    """What a job returns to Hydra's sweeper: validation metric, else test (``gin`` protocol)."""
    if results is None:
        return None
    value = results.get("val")
    return results.get("test") if value is None else value


def write_done(job_dir: str | os.PathLike, results: dict[str, Any], config: dict[str, Any],
               overrides: list[str]) -> Path:
    """Write ``done.json``: the job's headline metrics, overrides and result config."""
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
        "config_hash": digest(config),
        "config": config,
        "finished_at": _utc_now(),
        "host": socket.gethostname(),
    })
    return path


def write_failed(job_dir: str | os.PathLike, exc: BaseException, overrides: list[str]) -> Path:
    """Write ``failed.json``: ``error`` (one line), ``traceback``, ``overrides`` and context."""
    path = Path(job_dir) / FAILED_FILE
    atomic_write_json(path, {
        "status": "failed",
        "error": one_line(exc),
        "exception": type(exc).__name__,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "overrides": overrides,
        "failed_at": _utc_now(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    })
    return path


def one_line(exc: BaseException) -> str:
    """A failure in one line: a UserError's sentence, else ``Type: first line``."""
    message = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    return message if isinstance(exc, UserError) else f"{type(exc).__name__}: {message}"


#: What a forced continuation (``resume=force``) keeps in place: the checkpoints it continues
#: from and the logs that go on with the same rows (:func:`histograph.train.run`).
CONTINUED_OUTPUTS = ("checkpoints", "csv", "wandb", "tensorboard")


def supersede(job_dir: str | os.PathLike, keep: tuple[str, ...] = ()) -> Path:
    """Move a job's outputs, except ``keep``, into ``superseded/<UTC time>/`` (nothing is
    deleted)."""
    job_dir = Path(job_dir)
    target = job_dir / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target.mkdir(parents=True, exist_ok=True)
    for name in (n for n in JOB_OUTPUTS if n not in keep):
        if (job_dir / name).exists():
            shutil.move(str(job_dir / name), str(target / name))
    return target


# ---------------------------------------------------------------------- the runner
def _clear_stale(cfg: DictConfig, job_dir: Path, done: dict[str, Any] | None,
                 current: dict[str, Any]) -> None:
    """Move aside the outputs of an earlier attempt under another result config.

    With ``resume=force`` a job that has a ``checkpoints/last.ckpt`` continues from it under the
    new config instead (e.g. ``trainer.max_epochs`` raised for runs that selected late): only its
    earlier markers and ``results.json`` move aside; the run records the change
    (:func:`histograph.checkpoints.resume_point`, ``config_changes`` in ``results.json``).
    """
    if cfg.get("resume", True) == "force" and (job_dir / "checkpoints" / "last.ckpt").exists():
        if done is not None:
            diff = describe_changes(changed_keys(done.get("config") or {}, current))
            moved = supersede(job_dir, keep=CONTINUED_OUTPUTS)
            log.warning("%s finished under a different config (%s); resume=force: it continues "
                        "from its last.ckpt, the earlier results moved to %s.", job_dir, diff,
                        moved)
        return
    if done is not None:
        diff = describe_changes(changed_keys(done.get("config") or {}, current))
        moved = supersede(job_dir)
        log.warning("%s finished under a different config (%s); its outputs moved to %s and "
                    "the job trains again.", job_dir, diff, moved)
        return
    from histograph.checkpoints import stale_checkpoint  # torch: only when a job trains

    stale = stale_checkpoint(cfg, job_dir)  # an unfinished (failed, killed) attempt
    if stale:
        moved = supersede(job_dir)
        log.warning("%s was started under a different config (%s); its outputs moved to %s "
                    "and the job trains from scratch.", job_dir, ", ".join(stale[:3]), moved)


def run_job(cfg: DictConfig, run: Callable[[DictConfig], dict[str, Any]],
            overrides: list[str]) -> JobOutcome:
    """Run one job at most once in ``cfg.paths.output_dir``; never raises for a job's failure.

    :param cfg: the job's composed config.
    :param run: trains and evaluates the job, returns its results (``histograph.train.run``).
    :param overrides: the job's overrides, recorded in the markers.
    """
    global _stopped_by
    job_dir = Path(cfg.paths.output_dir)
    if _stopped_by is not None:
        return JobOutcome("not_started", error=f"not started: the sweep was stopped by "
                                               f"{_stopped_by}")
    try:
        setup_distributed(cfg)  # may export RANK (submitit tasks as DDP ranks)
        rank0 = global_rank() == 0
        current = result_config(cfg)
        done = read_done(job_dir)
        if done is not None and done.get("config_hash") == digest(current):
            log.info("Skipping %s: done.json says it finished at %s (%s %s).", job_dir,
                     done.get("finished_at"), done.get("metric"), done.get("objective"))
            results = read_results(job_dir)
            if results is not None:
                return JobOutcome("skipped", results)
        if rank0:
            _clear_stale(cfg, job_dir, done, current)
            for stale in (FAILED_FILE, INTERRUPTED_FILE):  # a stale marker would mislead
                (job_dir / stale).unlink(missing_ok=True)
        results = run(cfg)
    except RunInterrupted as exc:
        _stopped_by = exc.name
        if global_rank() == 0:
            print(f"[histograph] INTERRUPTED {job_dir}: {exc}; the same command resumes it",
                  file=sys.stderr, flush=True)
        return JobOutcome("interrupted", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the others
        if global_rank() == 0:
            path = write_failed(job_dir, exc, overrides)
            print(f"[histograph] FAILED {job_dir}: {one_line(exc)} -> {path}", file=sys.stderr,
                  flush=True)
        log.debug("Job %s failed", job_dir, exc_info=True)
        return JobOutcome("failed", error=one_line(exc))
    if rank0:
        write_done(job_dir, results, current, overrides)
    return JobOutcome("done", results)


def stopped_by() -> str | None:
    """The signal that stopped a job of this process (then no further job starts), or None."""
    return _stopped_by


def _stop_sweep(signum: int, frame: Any) -> None:
    from histograph.training.interrupt import note_stop

    global _stopped_by
    note_stop(signum)  # a job already past the check below stops at its first batch
    if _stopped_by is None:
        _stopped_by = signal.Signals(signum).name
        log.warning("Received %s: no further job of this sweep starts here.", _stopped_by)


def stop_between_jobs() -> None:
    """Make the stopping signals (:data:`~histograph.training.interrupt.SIGNALS`) end the sweep
    in this process after the running job instead of killing it: installed once per process,
    only over the default action (a launcher's own handler, e.g. submitit's, is kept). While a
    job trains, its :class:`~histograph.training.interrupt.SignalFlag` handles the signal first
    and then calls this one."""
    from histograph.training.interrupt import SIGNALS

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    for signum in SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _stop_sweep)


def run_idempotent(cfg: DictConfig, run: Callable[[DictConfig], dict[str, Any]]
                   ) -> float | None:
    """One Hydra multirun job through :func:`run_job`; returns its objective (``None`` when it
    failed) for Hydra's sweeper."""
    stop_between_jobs()
    return objective(run_job(cfg, run, job_overrides()).results)
