"""The LightningModule: loss, metrics per split, HISTOGRAPH layer weights, optimizer."""

from __future__ import annotations

from typing import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from histograph.training.metrics import make_metric


class LitGraphClassifier(pl.LightningModule):
    """Trains a :class:`~histograph.nn.model.GraphClassifier` (or anything with the same calls).

    Every epoch it evaluates each split in ``eval_splits`` (``val`` and ``test`` under the
    ``holdout``/``ogb`` protocols, only ``test`` under ``gin``) and logs ``<split>/<metric>`` and
    ``<split>/loss``; selection (checkpointing) reads ``val/<metric>`` only. The per-epoch values
    are also kept in :attr:`history` (saved in checkpoints, so a resumed run keeps them): all of
    an epoch's entries are recorded at the end of its validation, before the checkpoint of that
    epoch is written. When the readout
    exposes ``last_layer_weights`` (HISTOGRAPH's alpha), the mean weight per layer is logged as
    ``<split>/alpha/<l>`` and the test-set mean is kept in :attr:`test_layer_weights`.

    :param model: the network; ``model(batch)`` returns logits.
    :param task: ``"multiclass"`` (cross-entropy) or ``"multilabel"`` (BCE on labelled entries).
    :param num_outputs: classes or tasks.
    :param metric: ``"acc"``, ``"rocauc"`` or ``"ap"``.
    :param dataset_name: name handed to the OGB Evaluator.
    :param optimizer: partial optimizer, called with the trainable parameters.
    :param scheduler: partial LR scheduler (epoch interval), or ``None``.
    :param eval_splits: names of the validation loaders, in order.
    :param meta: run metadata stored in every checkpoint as ``histograph_meta`` (dataset,
        protocol, fold, split settings, backbone config, input sizes); frozen mode reads it.
    """

    def __init__(self, model: torch.nn.Module, task: str, num_outputs: int, metric: str,
                 dataset_name: str, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., object] | None = None,
                 eval_splits: Sequence[str] = ("val", "test"),
                 meta: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "meta"],
                                  logger=False)
        self.meta = meta or {}
        self.model = model
        self.task, self.metric_name = task, metric
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_splits = tuple(eval_splits)
        splits = ("train", *self.eval_splits) + (() if "test" in self.eval_splits else ("test",))
        self.metrics = torch.nn.ModuleDict(
            {f"{s}_": make_metric(metric, task, num_outputs, dataset_name) for s in splits})
        self._alpha: dict[str, list] = {}
        self._train_loss: list[Tensor] = []
        self.test_layer_weights: list[float] | None = None
        self.history: dict[str, list[float]] = {
            "train_loss": [], f"train_{metric}": [], "val_loss": [],
            **{s: [] for s in self.eval_splits}}

    # ------------------------------------------------------------------ steps
    def forward(self, batch) -> Tensor:
        return self.model(batch)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.task == "multiclass":
            return torch.nn.functional.cross_entropy(logits, y.view(-1))
        y = y.view_as(logits).float()
        labelled = ~torch.isnan(y)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[labelled],
                                                                    y[labelled])

    def _target(self, y: Tensor) -> Tensor:
        return y.view(-1) if self.task == "multiclass" else y

    def _shared_step(self, batch, split: str) -> Tensor:
        logits = self(batch)
        loss = self.loss(logits, batch.y)
        self.metrics[f"{split}_"].update(logits, self._target(batch.y))
        self.log(f"{split}/loss", loss, batch_size=batch.num_graphs, on_step=False,
                 on_epoch=True, add_dataloader_idx=False, prog_bar=split != "test")
        weights = getattr(self.model.readout, "last_layer_weights", None)
        if weights is not None:
            acc = self._alpha.setdefault(split, [torch.zeros_like(weights[0]), 0])
            acc[0] = acc[0] + weights.sum(0)
            acc[1] += weights.size(0)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        self._train_loss.append(torch.stack([loss.detach() * batch.num_graphs,
                                             loss.new_tensor(float(batch.num_graphs))]))
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self.eval_splits[dataloader_idx])

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    # ------------------------------------------------------------------ epoch ends
    def _log_epoch(self, splits: Sequence[str]) -> dict[str, float]:
        values = {}
        for split in splits:
            value = self.metrics[f"{split}_"].compute()
            self.metrics[f"{split}_"].reset()
            values[split] = value
            self.log(f"{split}/{self.metric_name}", value, prog_bar=split == "val")
            if split in self._alpha:
                total, count = self._alpha.pop(split)
                mean = total / max(count, 1)
                width = len(str(len(mean) - 1))
                for layer, w in enumerate(mean):
                    self.log(f"{split}/alpha/{layer:0{width}d}", w)
                if split == "test":
                    self.test_layer_weights = [float(w) for w in mean]
        return values

    def on_validation_epoch_end(self) -> None:
        evaluated = self._log_epoch(self.eval_splits)
        if self.trainer.sanity_checking:
            return
        h = self.history
        for split, value in evaluated.items():
            h[split].append(float(value))
        if "val/loss" in self.trainer.callback_metrics:
            h["val_loss"].append(float(self.trainer.callback_metrics["val/loss"]))
        if self._train_loss:  # the training batches of this epoch are all done by now
            total = torch.stack(self._train_loss).sum(0)
            self._train_loss.clear()
            h["train_loss"].append(float(total[0] / total[1]))
            h[f"train_{self.metric_name}"].append(float(self._log_epoch(["train"])["train"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["histograph_history"] = self.history
        checkpoint["histograph_meta"] = self.meta

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "histograph_history" in checkpoint:
            self.history = {k: list(v) for k, v in checkpoint["histograph_history"].items()}

    def on_test_epoch_end(self) -> None:
        self._log_epoch(["test"])

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def selected_epoch(history: dict[str, list[float]]) -> int:
    """The first epoch with the best validation metric (the last epoch without validation).

    Matches :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``mode="max"``, which
    replaces its best checkpoint only on a strict improvement.
    """
    if "val" not in history:
        return len(history["test"]) - 1
    val = history["val"]
    return max(range(len(val)), key=lambda e: (val[e], -e))
