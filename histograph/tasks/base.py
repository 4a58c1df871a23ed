"""The task contract: build the DataModule, the network, the LightningModule, the diagnostics.

:func:`histograph.train.run` does the same five steps for every task::

    task = build_task(cfg)                       # instantiate(cfg.task)
    dm = task.datamodule(cfg)                    # loaded and split
    net = task.network(cfg, dm)                  # Network: model + checkpoint meta + results keys
    lit = task.lightning_module(cfg, net, dm)    # loss, metrics, optimizer
    ...fit, test...
    stats = task.diagnose(lit.model, dm)         # over-smoothing measures for results.json

A task reads the composed config (read-only: it never writes into it) and builds each part from
its group with :func:`build_part`, which turns a constructor's ``ValueError``/``TypeError`` into a
one-line :class:`~histograph.errors.UserError` that names the config key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from histograph.errors import UserError, config_error


@dataclass
class Network:
    """What :meth:`Task.network` builds.

    :param model: the network (``model(batch)`` -> logits).
    :param meta: run metadata stored in every checkpoint (``histograph_meta``; frozen mode and
        the resume check read it).
    :param record: ``results.json`` keys this task sets (``hidden`` after a parameter budget,
        ``task``, a frozen run's source checkpoint, ...).
    """

    model: torch.nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def build_part(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node)(**kwargs)`` for a partial config group (``_partial_: true``), with a
    constructor's ``ValueError``/``TypeError`` as a one-line :class:`UserError` naming
    ``<group>.<key>``."""
    factory: Callable[..., Any] = instantiate(node)
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as exc:
        raise config_error(group, [str(k) for k in node.keys()], exc) from exc


class Task(ABC):
    """Base class of the tasks (one subclass per file in :mod:`histograph.tasks`).

    Subclasses set :attr:`kind` and :attr:`lightning_class` and implement :meth:`datamodule`,
    :meth:`network` and :meth:`diagnose`.
    """

    #: ``"graph"`` or ``"node"``: what one label belongs to.
    kind: ClassVar[str]
    #: The LightningModule class that trains this task's networks.
    lightning_class: ClassVar[type[pl.LightningModule]]

    @abstractmethod
    def datamodule(self, cfg: DictConfig) -> pl.LightningDataModule:
        """The DataModule of ``cfg.data`` + ``cfg.dataset``, already set up (data loaded)."""

    @abstractmethod
    def network(self, cfg: DictConfig, dm: pl.LightningDataModule) -> Network:
        """The network for the loaded data, with its checkpoint metadata and results keys."""

    def lightning_module(self, cfg: DictConfig, network: Network,
                         dm: pl.LightningDataModule) -> pl.LightningModule:
        """The LightningModule: loss and metrics of the data, ``cfg.optimizer`` and
        ``cfg.scheduler`` (none when the group is ``scheduler=none``)."""
        data = dm.data
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
        return self.lightning_class(network.model, task=data.task,
                                    num_outputs=data.num_outputs, metric=data.metric,
                                    dataset_name=data.name, optimizer=instantiate(cfg.optimizer),
                                    scheduler=scheduler, eval_splits=dm.eval_splits,
                                    meta=network.meta)

    @abstractmethod
    def diagnose(self, model: torch.nn.Module, dm: pl.LightningDataModule) -> dict[str, Any]:
        """Over-smoothing measures of the trained model's history on the evaluation data:
        ``{"dirichlet_energy": [...], "mad": [...], "diagnostics_split": "val"}``."""

    def measure(self, model: torch.nn.Module, dm: pl.LightningDataModule,
                trainer: pl.Trainer) -> dict[str, Any]:
        """:meth:`diagnose` on the trainer's device (Lightning's teardown has moved the model
        back to the CPU by now) and on rank 0 only (only rank 0 writes ``results.json``)."""
        if not trainer.is_global_zero:
            return {"dirichlet_energy": None, "mad": None, "diagnostics_split": None}
        return self.diagnose(model.to(trainer.strategy.root_device), dm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_task(cfg: DictConfig) -> Task:
    """The task object of ``cfg.task`` (its ``_target_``, with its options)."""
    try:
        task = instantiate(cfg.task)
    except Exception as exc:  # Hydra wraps the constructor's error in InstantiationException
        cause = exc.__cause__ or exc
        if isinstance(cause, (ValueError, TypeError)):
            raise config_error("task", [str(k) for k in cfg.task.keys()], cause) from exc
        raise
    if not isinstance(task, Task):
        raise UserError(f"task._target_={cfg.task.get('_target_')} is not a histograph Task; "
                        f"pick task=graph or task=node.")
    return task
