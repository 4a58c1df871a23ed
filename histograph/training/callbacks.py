"""The Lightning callbacks of a run, built in one place (:func:`build_callbacks`)."""

from __future__ import annotations

import os
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


#: ModelCheckpoint state entries that hold a file path (``best_k_models``: a dict keyed by path).
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def relocate_state(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` state with the paths under
    ``old`` (the folder it was saved from) moved under ``new``; other paths are kept."""

    def move(path: Any) -> Any:
        inside = isinstance(path, str) and (path == old or path.startswith(old + os.sep))
        return new + path[len(old):] if inside else path

    out = dict(state, dirpath=new)
    for key in _PATH_KEYS:
        if key in out:
            out[key] = move(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in out["best_k_models"].items()}
    return out


class FolderCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that resumes in a moved or copied
    run folder.

    Lightning restores the best score (and the best-k table) only when the checkpoint's
    ``dirpath`` equals this run's; otherwise it keeps ``best_model_path`` alone, still pointing
    into the old folder, and the first epoch after the resume becomes "best" whatever its
    score, so the tested weights are not the epoch validation selected (found extending a copied
    tune folder with ``resume=force``). Here the stored paths are mapped into this folder first
    (:func:`relocate_state`): the checkpoint files moved with it.
    """

    @property
    def state_key(self) -> str:
        """Lightning files a callback's state under its class name: keep ModelCheckpoint's, so
        that checkpoints written before this class restore into it (and the reverse)."""
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if isinstance(old, str) and self.dirpath and old != self.dirpath:
            state_dict = relocate_state(state_dict, old, str(self.dirpath))
        super().load_state_dict(state_dict)


class LearningRateLog(pl.Callback):
    """Log the learning rate each epoch ran at (``train/lr``, the first parameter group's).

    Logged at the end of validation, on the row of the epoch's other metrics: that row is
    written before the epoch's checkpoint, so a run killed and resumed keeps it. Lightning's
    :class:`~lightning.pytorch.callbacks.LearningRateMonitor` writes rows without an epoch, which
    a resumed run's CSV log (:mod:`histograph.training.csv_logger`) drops; rows logged at the end
    of the training epoch come after the checkpoint and are lost by a kill between the two.
    """

    def __init__(self) -> None:
        self._lr: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # read here: the epoch-interval scheduler steps before the epoch's validation
        self._lr = (float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers
                    else None)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._lr is not None and not trainer.sanity_checking:
            pl_module.log("train/lr", self._lr, sync_dist=True)  # the same on every rank


def build_callbacks(cfg: DictConfig, output_dir: Path, monitor: str | None,
                    flag: SignalFlag, config_changes: list[dict[str, Any]]
                    ) -> tuple[list[pl.Callback], ModelCheckpoint]:
    """The run's callbacks and, separately, the one whose best checkpoint is tested.

    * ``checkpoints/best-epoch=NNN.ckpt``: the epoch selected on ``monitor`` (``val/<metric>``;
      the last epoch when the protocol has no validation set);
    * ``checkpoints/last.ckpt`` after *every* epoch, for resuming (Lightning 2.6's
      ``save_last=True`` writes it only when the monitored checkpoint improved, hence a second
      :class:`~lightning.pytorch.callbacks.ModelCheckpoint`);
    * both resume in a moved or copied run folder (:class:`FolderCheckpoint`);
    * the RNG states, the run's settings and the log of forced config changes stored in every
      checkpoint (exact, checked resume);
    * the non-finite loss/gradient guard, and the stop at the next batch once ``flag`` holds a
      signal (:mod:`histograph.training.interrupt`);
    * each epoch's learning rate in the logs (:class:`LearningRateLog`);
    * the configured ones (``cfg.callbacks``, e.g. early stopping).
    """
    folder = str(output_dir / "checkpoints")
    best = FolderCheckpoint(dirpath=folder, filename="best-{epoch:03d}", monitor=monitor,
                           mode="max", save_top_k=1)
    last = FolderCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    return [best, last, RNGStateCheckpoint(), FiniteLossGuard(), StopOnSignal(flag),
            RunConfigCheckpoint(run_config(cfg), config_changes), LearningRateLog(),
            *configured], best
