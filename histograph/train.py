"""One training job: validate -> build the task's parts -> fit -> test -> ``results.json``.

:func:`run` is what the command line (:mod:`histograph.cli`), sweeps and nested CV call with a
composed config, and what tests call. The task object (:mod:`histograph.tasks`, chosen by
``task=`` and ``mode=``) builds the DataModule, the network, the LightningModule and the
diagnostics; everything task-specific lives there. The run holds its folder's lock and stops
cleanly on a signal (:mod:`histograph.training.interrupt`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from histograph.checkpoints import check_selected_checkpoint, resume_point
from histograph.config import check_devices, plain, validate_config
from histograph.diagnostics import smoothing_metrics
from histograph.errors import UserError
from histograph.results import results_record, run_name, summary_line, write_results
from histograph.sweeps.names import global_rank
from histograph.tasks import build_task
from histograph.training.callbacks import build_callbacks
from histograph.training.csv_logger import resume_loggers
from histograph.training.interrupt import (RunDirLock, RunInterrupted, SignalFlag,
                                           write_interrupted)
from histograph.training.loggers import (finish_wandb, log_config, log_metrics,
                                         publish_summary, run_loggers)
from histograph.training.module import selected_round
from histograph.training.progress import EpochLines
from histograph.utils import prepare_output_dir, resolve_threads

log = logging.getLogger("histograph")


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, output_dir: Path
                  ) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer``; a rejected setting ends in one sentence.

    ``trainer.enable_progress_bar: auto`` draws the bar on a terminal and logs one line per epoch
    otherwise (:class:`~histograph.training.progress.EpochLines`, also when the bar is off).
    ``trainer.matmul_precision`` is not a Trainer argument: it sets
    ``torch.set_float32_matmul_precision`` on GPU runs (``high``: TF32 matmuls on Ampere and
    later; ``highest``: full fp32), and is left alone on the CPU.
    """
    settings = OmegaConf.masked_copy(cfg.trainer, [k for k in cfg.trainer if k not in
                                                   ("matmul_precision", "enable_progress_bar")])
    precision = cfg.trainer.get("matmul_precision")
    if precision and torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu":
        torch.set_float32_matmul_precision(precision)
    bar = cfg.trainer.get("enable_progress_bar", "auto")
    if bar == "auto":  # a bar on a terminal, one line per epoch elsewhere (training/progress.py)
        bar = sys.stdout.isatty()
    if not bar:
        callbacks = [*callbacks, EpochLines()]
    try:
        return instantiate(settings, callbacks=callbacks, logger=loggers,
                           enable_progress_bar=bool(bar), default_root_dir=str(output_dir))
    except Exception as exc:  # Hydra wraps the Trainer's own error (MisconfigurationException)
        cause = exc.__cause__ or exc
        raise UserError(f"The trainer settings were rejected ({type(cause).__name__}: "
                        f"{cause}); check the trainer.* overrides.") from exc


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one job; write ``results.json`` atomically; return the results.

    :raises RunInterrupted: when a signal stopped it (``interrupted.json`` is written; the same
        command resumes it).
    """
    start = time.time()
    validate_config(cfg)
    check_devices(cfg, torch.cuda.is_available())
    threads = resolve_threads(cfg.get("threads", "auto"))
    if threads is not None:
        torch.set_num_threads(threads)
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    with RunDirLock(output_dir, enabled=global_rank() == 0), SignalFlag() as flag:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        task = build_task(cfg)
        dm = task.datamodule(cfg)
        network = task.network(cfg, dm)
        lit = task.lightning_module(cfg, network, dm)
        resume = resume_point(cfg, output_dir, lit)  # refused when it belongs to another run
        callbacks, best = build_callbacks(cfg, output_dir, f"val/{dm.data.metric}" if "val"
                                          in dm.eval_splits else None, flag, resume.changes)
        loggers = run_loggers(cfg, output_dir, run_name(cfg))
        if resume.epoch is not None:
            resume_loggers(loggers, resume.epoch)  # keep the CSV rows of the epochs done
        failed = True
        try:
            flag.check()  # a signal during start-up
            log_config(loggers, plain(cfg))
            trainer = build_trainer(cfg, callbacks, loggers, output_dir)
            trainer.fit(lit, datamodule=dm, ckpt_path=resume.path, weights_only=True)
            history = lit.history  # before testing, which restores the selected epoch's copy
            if not history["test"]:
                raise UserError("Training ran no evaluation epoch; raise trainer.max_epochs.")
            selected = selected_round(history)
            check_selected_checkpoint(best.best_model_path, history["epoch"][selected])
            tested = trainer.test(lit, datamodule=dm, ckpt_path=best.best_model_path,
                                  verbose=False, weights_only=True)[0]
            diagnostics = task.measure(lit.model, dm, trainer)  # the selected weights
            log_metrics(loggers, smoothing_metrics(diagnostics, diagnostics["diagnostics_split"]),
                        step=trainer.global_step)
            record = results_record(cfg, dm=dm, network=network, lit=lit, trainer=trainer,
                                    history=history, tested=tested,
                                    selected=selected,
                                    checkpoint=best.best_model_path, diagnostics=diagnostics,
                                    config_changes=resume.changes, start=start)
            publish_summary(loggers, record)  # the dashboards' keys (docs/dashboards.md)
            failed = False
        except (RunInterrupted, SIGTERMException) as exc:
            stop = exc if isinstance(exc, RunInterrupted) else RunInterrupted(flag.received or 15)
            write_interrupted(output_dir, stop, lit)
            raise stop from None
        finally:
            finish_wandb(loggers, failed)
    if trainer.is_global_zero:  # DDP: every rank returns the results, rank 0 writes them
        path = write_results(output_dir, record)
        print(summary_line(record, path), flush=True)
    return record
