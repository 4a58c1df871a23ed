"""The Lightning callbacks of a run, built in one place (:func:`build_callbacks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from histograph.checkpoints import RunConfigCheckpoint, run_config
from histograph.training.guards import FiniteLossGuard
from histograph.training.interrupt import SignalFlag, StopOnSignal
from histograph.training.rng_state import RNGStateCheckpoint


def build_callbacks(cfg: DictConfig, output_dir: Path, monitor: str | None,
                    flag: SignalFlag, config_changes: list[dict[str, Any]]
                    ) -> tuple[list[pl.Callback], ModelCheckpoint]:
    """The run's callbacks and, separately, the one whose best checkpoint is tested.

    * ``checkpoints/best-epoch=NNN.ckpt``: the epoch selected on ``monitor`` (``val/<metric>``;
      the last epoch when the protocol has no validation set);
    * ``checkpoints/last.ckpt`` after *every* epoch, for resuming (Lightning 2.6's
      ``save_last=True`` writes it only when the monitored checkpoint improved, hence a second
      :class:`~lightning.pytorch.callbacks.ModelCheckpoint`);
    * the RNG states, the run's settings and the log of forced config changes stored in every
      checkpoint (exact, checked resume);
    * the non-finite loss/gradient guard, and the stop at the next batch once ``flag`` holds a
      signal (:mod:`histograph.training.interrupt`);
    * the configured ones (``cfg.callbacks``, e.g. early stopping).
    """
    folder = str(output_dir / "checkpoints")
    best = ModelCheckpoint(dirpath=folder, filename="best-{epoch:03d}", monitor=monitor,
                           mode="max", save_top_k=1)
    last = ModelCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    return [best, last, RNGStateCheckpoint(), FiniteLossGuard(), StopOnSignal(flag),
            RunConfigCheckpoint(run_config(cfg), config_changes), *configured], best
