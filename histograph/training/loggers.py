"""Logger construction: always a CSV log; W&B runs named, grouped and always finished."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, open_dict

from histograph.config import choice
from histograph.sweeps.names import is_multirun, job_name

from histograph.training.csv_logger import ResumableCSVLogger
from histograph.training.wandb_auth import wandb_online_possible

log = logging.getLogger("histograph")


def build_loggers(logger_cfg: DictConfig | None, output_dir: Path, run_name: str,
                  group: str | None, job_type: str | None,
                  tags: list[str] | None = None) -> list[Logger]:
    """Instantiate the configured loggers, filling W&B's name/group/job_type/tags when unset,
    and add a CSV logger (``<output_dir>/csv/metrics.csv``) when none is configured."""
    loggers: list[Logger] = []
    for key, node in (logger_cfg or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        node = node.copy()
        if node._target_.endswith("WandbLogger"):
            with open_dict(node):
                node.name = node.get("name") or run_name
                node.group = node.get("group") or group
                node.job_type = node.get("job_type") or job_type
                node.tags = list(node.get("tags") or []) + list(tags or [])
                if not node.get("offline") and not wandb_online_possible():
                    log.warning("W&B has no API key here (WANDB_API_KEY or `wandb login`): "
                                "logging offline to %s/wandb; upload later with `wandb sync`.",
                                node.save_dir)
                    node.offline = True
                    node.log_model = False  # uploading checkpoints needs a login
                if node.get("offline"):
                    os.environ.setdefault("WANDB_MODE", "offline")
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(node))
    if not any(isinstance(lg, CSVLogger) for lg in loggers):
        loggers.insert(0, ResumableCSVLogger(save_dir=str(output_dir), name="csv", version=""))
    return loggers


def run_loggers(cfg: DictConfig, output_dir: Path, name: str) -> list[Logger]:
    """:func:`build_loggers` for a run: W&B runs grouped by sweep (the task name for single
    runs), typed by readout, named after the job's overrides (else ``name``), tagged with the
    experiment preset."""
    tags = [t for t in dict.fromkeys([*(cfg.get("tags") or []), choice(cfg, "experiment")]) if t]
    # a sweep job is named by its overrides (unique in the group), a single run by its content
    return build_loggers(cfg.get("logger"), output_dir,
                         run_name=(job_name() if is_multirun() else None) or name,
                         group=cfg.get("sweep_name") if is_multirun() else cfg.get("task_name"),
                         job_type=choice(cfg, "readout"), tags=tags)


def log_config(loggers: list[Logger], config: dict[str, Any]) -> None:
    """Store the resolved config as hyper-parameters in every logger."""
    for lg in loggers:
        lg.log_hyperparams(config)


def log_metrics(loggers: list[Logger], metrics: dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` to every logger and flush them (nothing when empty)."""
    if not metrics:
        return
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
        lg.save()


def summary_values(record: dict[str, Any]) -> dict[str, Any]:
    """The W&B summary keys every run sets, from its ``results.json`` record: the *selected*
    epoch's figures under fixed names (a W&B run's own summary of ``val/acc`` is the last
    epoch's), the collapse flag and the run's identity (docs/dashboards.md)."""
    return {"selected/epoch": record["selected_epoch"], "selected/val": record["val"],
            "selected/test": record["test"], "selected/metric": record["metric"],
            "collapsed": record.get("collapsed"), "collapsed_from": record.get("collapsed_from"),
            "collapse_cause": record.get("collapse_cause"),
            "collapse_signal": record.get("collapse_signal"), "num_params": record["num_params"],
            "dataset": record["dataset"], "model": record["model"], "readout": record["readout"],
            "layers": record["layers"], "fold": record["fold"], "seed": record["seed"],
            "protocol": record["protocol"]}


def publish_summary(loggers: list[Logger], record: dict[str, Any]) -> None:
    """Put :func:`summary_values` in the W&B run's summary, and the per-layer vectors as tables:
    ``layer_weights`` (``layer``, ``alpha``) and ``oversmoothing`` (``layer``,
    ``dirichlet_energy``, ``mad``), so that a panel needs no run history."""
    runs = [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]
    if not runs:
        return
    import wandb  # only when a W&B logger is configured (an optional dependency)

    for run in runs:
        run.summary.update(summary_values(record))
        tables = {}
        if record.get("layer_weights"):
            tables["layer_weights"] = wandb.Table(
                columns=["layer", "alpha"],
                data=[[i, float(a)] for i, a in enumerate(record["layer_weights"])])
        energy = record.get("dirichlet_energy")
        if energy:
            mad = record.get("mad") or [None] * len(energy)
            tables["oversmoothing"] = wandb.Table(
                columns=["layer", "dirichlet_energy", "mad"],
                data=[[i, float(e), None if m is None else float(m)]
                      for i, (e, m) in enumerate(zip(energy, mad))])
        if tables:
            run.log(tables)


def finish_wandb(loggers: list[Logger], failed: bool) -> None:
    """Finish the W&B run of this job (Lightning does not between jobs of a multirun)."""
    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)


