"""Checkpoints: safe loading, the run settings they record, and the check before a resume.

Loading is always ``torch.load(weights_only=True)``: a ``.ckpt`` is a pickle, and a full
unpickle of a file from a shared folder can run arbitrary code. Everything histograph and
Lightning store is kept to tensors, numbers, strings, lists, tuples and dicts (the RNG states of
:mod:`histograph.training.rng_state` included), which the weights-only unpickler accepts without
any ``torch.serialization.add_safe_globals`` entry; ``tests/test_resume.py`` loads checkpoints
that way. (OGB's processed datasets do need PyG's data classes registered:
:mod:`histograph.data.ogb` does that.)

A run folder is resumed from ``checkpoints/last.ckpt`` when it exists. If the folder was used by a
*different* run (another model, dataset, fold, seed, optimizer, number of epochs, ...), Lightning
would either fail with a long ``load_state_dict`` error or, when the shapes happen to match,
silently continue the other run under this run's name and settings. :class:`RunConfigCheckpoint`
stores the run's result keys (every config key that can change its numbers,
:func:`histograph.keys.result_config`) in every checkpoint, and :func:`check_resume` refuses a
mismatch with one sentence listing the changed keys (``resume=force`` continues anyway).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from histograph.errors import UserError
from histograph.keys import flatten, result_config

log = logging.getLogger("histograph")

RUN_CONFIG_KEY = "histograph_run_config"
CHANGES_KEY = "histograph_config_changes"
RESUME_MODES = (True, False, "force")


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Load a ``.ckpt`` on the CPU with ``weights_only=True``.

    :param what: how the file is named in error messages (``"backbone_ckpt"``, ...).
    :raises UserError: when the file is missing, truncated, not a checkpoint, or holds objects
        that the weights-only unpickler refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The {what} {str(path)!r} does not exist; pass the path of a .ckpt file "
                        f"written by train.py (in a run folder's checkpoints/).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file ends in one sentence
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"The {what} {str(path)!r} cannot be loaded safely ({type(exc).__name__}:"
                        f" {first[:200]}); it is truncated, not a torch checkpoint, or holds "
                        f"pickled objects; delete it or pass a checkpoint written by train.py."
                        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"The {what} {str(path)!r} is not a Lightning checkpoint (no state_dict);"
                        f" pass a .ckpt written by train.py.")
    return ckpt


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's result keys, resolved and flattened (``{"model.layers": 5, ...}``): the same
    table as sweep hashes and job folders (:mod:`histograph.keys`)."""
    return flatten(result_config(cfg))


class RunConfigCheckpoint(pl.Callback):
    """Store :func:`run_config` in every checkpoint (read back by :func:`check_resume`), and the
    log of settings changed by forced resumes (``resume=force``): one entry per resume that
    changed a result key, ``{"from_epoch": e, "changes": {key: [old, new]}}``.
    """

    def __init__(self, config: Mapping[str, Any],
                 changes: list[dict[str, Any]] | None = None) -> None:
        self.config = dict(config)
        self.changes = list(changes or [])

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.config
        checkpoint[CHANGES_KEY] = self.changes


#: Config groups a resume takes from the checkpoint (the optimizer's param groups, the
#: scheduler's state): a forced change of them would be recorded but not take effect.
RESTORED_GROUPS = ("optimizer", "scheduler")


def changed_settings(ckpt: Mapping[str, Any], config: Mapping[str, Any]
                     ) -> dict[str, list[Any]]:
    """``{key: [stored, this run's]}`` for the result keys present in both (a setting added to
    the code base after the checkpoint was written is not a change)."""
    stored = ckpt.get(RUN_CONFIG_KEY)
    if not isinstance(stored, Mapping):
        return {}
    return {k: [stored[k], config[k]] for k in config if k in stored and stored[k] != config[k]}


def check_resume(ckpt: Mapping[str, Any], path: str | os.PathLike, config: Mapping[str, Any],
                 module: torch.nn.Module, force: bool = False) -> dict[str, list[Any]]:
    """Refuse to resume from a checkpoint written by a different run or model.

    Compares the stored result keys with this run's (:func:`changed_settings`) and the parameter
    names and shapes with ``module``'s. With ``force`` a settings change is allowed (and
    returned, to be recorded), except of the optimizer or scheduler (:data:`RESTORED_GROUPS`:
    the resume restores them, the change would not take effect); a different model never is.

    :returns: the changed settings (empty unless ``force``).
    :raises UserError: naming the first differences and how to proceed.
    """
    fix = ("re-run with the settings it was written with, use a fresh run folder "
           "(hydra.run.dir=...), pass resume=force to continue with the new settings (recorded "
           "in results.json), or resume=false to overwrite it")
    changes = changed_settings(ckpt, config)
    if changes and not force:
        diff = [f"{k}={old!r} (this run: {new!r})" for k, (old, new) in changes.items()]
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise UserError(f"{path} belongs to a different run: it was written with "
                        f"{', '.join(diff[:3])}{more}; {fix}.")
    restored = [k for k in changes if k.split(".")[0] in RESTORED_GROUPS]
    if restored:
        raise UserError(f"{path} cannot continue with other {', '.join(restored[:3])}: a resume "
                        f"restores the optimizer and the scheduler from the checkpoint, so the "
                        f"new value would be recorded but not used; pass resume=false (or use a "
                        f"fresh run folder) to train with it.")
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    problems = [f"missing {k}" for k in own if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in own]
    problems += [f"{k} has shape {list(theirs[k])}, this model {list(own[k])}"
                 for k in own if k in theirs and theirs[k] != own[k]]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        fix = ("use a fresh run folder (hydra.run.dir=...) or pass resume=false to overwrite "
               "it")
        raise UserError(f"{path} was written by a different model ({'; '.join(problems[:3])}"
                        f"{more}); {fix}.")
    return changes


def stale_checkpoint(cfg: DictConfig, output_dir: str | os.PathLike) -> list[str]:
    """Differences between ``<output_dir>/checkpoints/last.ckpt``'s stored run settings and
    ``cfg``'s (empty when there is no such checkpoint, or when it matches).

    A sweep uses it to move aside an unfinished job's outputs when the job's config changed
    (e.g. a new default) instead of refusing to resume it.
    """
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if not last.exists():
        return []
    try:
        ckpt = load_checkpoint(last)
    except UserError:
        return ["an unreadable last.ckpt"]
    return [f"{k} {a!r} -> {b!r}" for k, (a, b) in changed_settings(ckpt, run_config(cfg)).items()]


@dataclass
class ResumePoint:
    """Where a run starts: ``path`` (``None``: from scratch), the epoch ``last.ckpt`` ended, and
    the log of forced config changes to keep recording (:class:`RunConfigCheckpoint`)."""

    path: str | None = None
    epoch: int | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)


def resume_point(cfg: DictConfig, output_dir: str | os.PathLike,
                 module: torch.nn.Module) -> ResumePoint:
    """Where this run resumes: ``<output_dir>/checkpoints/last.ckpt`` when ``cfg.resume`` is
    true (the default) or ``force`` and the file exists, after :func:`check_resume`.

    With ``resume=force`` and changed settings the change is logged and appended to the log
    stored in the checkpoint, from the first epoch that runs with the new settings.
    """
    mode = cfg.get("resume", True)
    if mode not in RESUME_MODES:
        raise UserError(f"resume must be true, false or force, got {mode!r}.")
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if not mode or not last.exists():
        return ResumePoint()
    ckpt = load_checkpoint(last, "checkpoint to resume from")
    changes = check_resume(ckpt, last, run_config(cfg), module, force=mode == "force")
    epoch = int(ckpt.get("epoch", -1))
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if changes and max_epochs is not None and 0 <= int(max_epochs) < epoch + 1:
        raise UserError(f"{last} has already trained {epoch + 1} epochs, more than "
                        f"trainer.max_epochs={max_epochs}; raise trainer.max_epochs to continue "
                        f"it, or pass resume=false to train from scratch.")
    log_entries = list(ckpt.get(CHANGES_KEY) or [])
    if changes:
        log.warning("resume=force: continuing %s from epoch %d with changed settings: %s", last,
                    epoch + 1, ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        log_entries.append({"from_epoch": epoch + 1, "changes": changes})
    log.info("Resuming from %s (written at the end of epoch %d)", last, epoch)
    return ResumePoint(str(last), epoch, log_entries)


def check_selected_checkpoint(path: str | os.PathLike | None, epoch: int) -> None:
    """Refuse to test a best checkpoint that is not the epoch validation selected.

    ``path`` is the best checkpoint (``best-epoch=NNN.ckpt``), ``epoch`` the trainer epoch of the
    selected validation round (:func:`histograph.training.module.selected_round`). They differ
    only when the checkpoint callback lost its best score (e.g. a resume that Lightning did not
    restore it for), and then the reported test would be another epoch's.

    :raises UserError: naming both epochs.
    """
    if not path:
        return
    found = re.search(r"epoch=(\d+)", Path(path).name)
    stored = int(found.group(1)) if found else load_checkpoint(path).get("epoch")
    if stored is not None and int(stored) != int(epoch):
        raise UserError(f"The best checkpoint {path} holds epoch {stored}, but validation "
                        f"selected epoch {epoch}, so its test would be another epoch's; re-run "
                        f"in a fresh run folder (hydra.run.dir=...) or with resume=false.")
