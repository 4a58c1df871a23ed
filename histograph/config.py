"""Reading and checking a composed config, before any training library is imported.

:func:`validate_config` holds every check of the values a user types (one key, or several keys
together), each failing with one sentence that names the key and the fix. The constructors of
:mod:`histograph.nn` and :mod:`histograph.data` check their own arguments as library code does
(``ValueError`` naming the argument); the tasks turn those into the same kind of sentence
(:func:`histograph.errors.config_error`). This module imports only Hydra and OmegaConf, so a
config error is reported in about a second, before torch is loaded.
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from histograph.errors import UserError, unknown_choice

#: Seeds are handed to numpy, which takes 32-bit unsigned integers.
MAX_SEED = 2**32 - 1
#: Evaluation protocols (``protocol.name``; ../shared/docs/PROTOCOLS.md): the graph ones, and
#: Planetoid's fixed split of the node task.
GRAPH_PROTOCOLS = ("holdout", "gin", "ogb", "nested")
PROTOCOLS = (*GRAPH_PROTOCOLS, "planetoid")


def choice(cfg: DictConfig, group: str) -> str | None:
    """The option picked for a config group (``readout`` -> ``"histograph"``), when known."""
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # HydraConfig not set (plain compose without the hydra node)
        if isinstance(cfg, DictConfig) and cfg.get("hydra") is not None:
            return OmegaConf.select(cfg, f"hydra.runtime.choices.{group}")
        return None


def _integer(cfg: DictConfig, key: str, minimum: int = 1, maximum: int | None = None,
             optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise UserError(f"{key} must be an integer >= {minimum}{upper}, got {value!r}.")


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks before any data is loaded, each failing with one sentence naming the fix.

    :raises UserError: for the first bad value.
    """
    _integer(cfg, "model.layers")
    _integer(cfg, "model.hidden")
    _integer(cfg, "seed", minimum=0, maximum=MAX_SEED)
    _integer(cfg, "fold", minimum=0)
    _integer(cfg, "trainer.max_epochs")
    _integer(cfg, "data.batch_size", optional=True)
    _integer(cfg, "data.eval_batch_size", optional=True)
    protocol = cfg.protocol.name
    if protocol not in PROTOCOLS:
        raise unknown_choice("protocol", protocol, PROTOCOLS)
    if protocol != "ogb" and not cfg.fold < cfg.protocol.folds:
        raise UserError(f"fold={cfg.fold} is outside 0..{cfg.protocol.folds - 1}; pick a fold "
                        f"in that range (protocol.folds={cfg.protocol.folds}).")
    heads = cfg.readout.get("heads")
    budget = OmegaConf.select(cfg, "task.param_budget", default=None)
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1
                              or (budget is None and cfg.model.hidden % heads)):
        raise UserError(f"readout.heads={heads} must be a positive divisor of model.hidden="
                        f"{cfg.model.hidden}; change one of them.")
    lr = cfg.optimizer.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise UserError(f"optimizer.lr must be a positive number, got {lr!r}.")
    mode, task = cfg.get("mode"), choice(cfg, "task")
    if mode == "frozen" and task == "node":
        raise UserError("mode=frozen is implemented for graph classification only; use "
                        "mode=end_to_end with task=node.")
    if mode == "frozen" and cfg.get("backbone_ckpt") in (None, "", "null"):
        raise UserError("mode=frozen needs backbone_ckpt=<path to a checkpoint of an earlier "
                        "run> (e.g. <run dir>/checkpoints/last.ckpt).")
    if protocol == "ogb" and cfg.fold != 0:
        raise UserError(f"protocol=ogb has one official split, so fold={cfg.fold} would train "
                        f"the same job as fold=0; drop fold (sweep seed=0,1,2,... for "
                        f"replicates).")
    ablation = choice(cfg, "ablation")
    readout = choice(cfg, "readout")
    if ablation and readout and not readout.startswith("histograph"):
        raise UserError(f"ablation={ablation} sets HISTOGRAPH's switches and readout={readout} "
                        f"has none; use readout=histograph (or drop the ablation).")
    if cfg.get("resume", True) not in (True, False, "force"):
        raise UserError(f"resume must be true, false or force, got {cfg.get('resume')!r}.")
    if cfg.get("dataset") is not None and OmegaConf.is_missing(cfg.dataset, "name"):
        raise UserError("dataset=tu needs the dataset's name: add dataset.name=<TU name> "
                        "(e.g. dataset.name=ENZYMES).")


def check_devices(cfg: DictConfig, cuda_available: bool) -> None:
    """Refuse a GPU accelerator on a machine without one (the caller has torch loaded)."""
    accel = cfg.trainer.get("accelerator")
    if accel in ("gpu", "cuda") and not cuda_available:
        raise UserError(f"trainer.accelerator={accel} but no GPU is available here; use "
                        f"trainer.accelerator=cpu (or auto).")


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (the ``hydra:`` resolver may be unavailable)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore
