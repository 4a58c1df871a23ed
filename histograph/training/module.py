"""The LightningModule: loss, metrics per split, HISTOGRAPH layer weights, optimizer."""

from __future__ import annotations

from typing import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from histograph.training import collapse
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

    :param model: the network; ``model(batch, return_layer_weights=True)`` returns ``(logits,
        layer_weights or None)`` (:class:`~histograph.nn.model.GraphClassifier`).
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
        # per split: running sum of loss * graphs (a device tensor, so no per-step host sync)
        # and the number of graphs; logged once per epoch instead of one self.log per step
        self._loss_sum: dict[str, Tensor] = {}
        self._loss_count: dict[str, int] = {}
        self.test_layer_weights: list[float] | None = None
        # one entry per validation round; "epoch" is the trainer's epoch of each round (every
        # epoch by default; every n-th with trainer.check_val_every_n_epoch=n)
        self.history: dict[str, list[float]] = {
            "epoch": [], "train_loss": [], f"train_{metric}": [], "val_loss": [],
            **{s: [] for s in self.eval_splits}}
        # collapse detection (histograph/training/collapse.py): single-label tasks only
        self.classes = collapse.ClassCounter(num_outputs) if task == "multiclass" else None
        if self.classes is not None:
            self.history.update({k: [] for k in collapse.KEYS})

    # ------------------------------------------------------------------ steps
    def forward(self, batch, return_layer_weights: bool = False):
        return self.model(batch, return_layer_weights=return_layer_weights)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.task == "multiclass":
            return torch.nn.functional.cross_entropy(logits, y.view(-1))
        # BCE over the labelled entries (OGB marks the others NaN), as a masked mean rather
        # than boolean indexing, which needs the count on the host (a sync per step on a GPU)
        y = y.view_as(logits).float()
        labelled = ~torch.isnan(y)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y.nan_to_num(0.0), reduction="none")
        return (bce * labelled).sum() / labelled.sum().clamp(min=1)

    def _target(self, y: Tensor) -> Tensor:
        return y.view(-1) if self.task == "multiclass" else y

    def _shared_step(self, batch, split: str) -> Tensor:
        logits, weights = self(batch, return_layer_weights=True)
        loss = self.loss(logits, batch.y)
        self.metrics[f"{split}_"].update(logits, self._target(batch.y))
        self._record_loss(split, loss, batch.num_graphs)
        self._record_layer_weights(split, weights)
        if self.classes is not None:
            self.classes.update(split, logits, batch.y)
        return loss

    def _record_layer_weights(self, split: str, weights: Tensor | None) -> None:
        """Accumulate per-graph layer weights ``[B, L]`` (HISTOGRAPH's alpha), if any."""
        if weights is not None:  # summed in fp32 (a bf16 running sum saturates: precision.py)
            acc = self._alpha.setdefault(split, [torch.zeros_like(weights[0],
                                                              dtype=torch.float32), 0])
            acc[0] = acc[0] + weights.detach().float().sum(0)
            acc[1] += weights.size(0)

    def _record_loss(self, split: str, loss: Tensor, weight: int) -> None:
        """Add a batch's loss (weighted by its number of graphs) to the split's epoch sum."""
        previous = self._loss_sum.get(split)
        weighted = loss.detach() * weight
        self._loss_sum[split] = weighted if previous is None else previous + weighted
        self._loss_count[split] = self._loss_count.get(split, 0) + weight

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self.eval_splits[dataloader_idx])

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    # ------------------------------------------------------------------ epoch ends
    def _all_sum(self, value: Tensor) -> Tensor:
        """``value`` summed over the DDP processes (itself on one device): epoch statistics
        are every rank's, not rank 0's. The epoch-level values built from such sums (and
        torchmetrics' synced ``compute``) are the same on every rank; they are logged with
        ``sync_dist=True`` all the same, which averages equal values and tells Lightning they
        are global (it warns about every epoch-level value logged without it)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return value
        return trainer.strategy.reduce(value, reduce_op="sum")

    def _epoch_loss(self, split: str) -> Tensor | None:
        """Mean loss per graph of ``split`` this epoch (logged as ``<split>/loss``), then reset."""
        total, count = self._loss_sum.pop(split, None), self._loss_count.pop(split, 0)
        if total is None or count == 0:
            return None
        count_all = self._all_sum(torch.tensor(float(count), device=total.device))
        mean = self._all_sum(total) / count_all
        self.log(f"{split}/loss", mean, prog_bar=split != "test", sync_dist=True)
        return mean

    def _log_epoch(self, splits: Sequence[str]) -> dict[str, float]:
        values = {}
        for split in splits:
            value = self.metrics[f"{split}_"].compute()
            self.metrics[f"{split}_"].reset()
            values[split] = value
            self.log(f"{split}/{self.metric_name}", value, prog_bar=split == "val",
                     sync_dist=True)
            if split in self._alpha:
                total, count = self._alpha.pop(split)
                count_all = self._all_sum(torch.tensor(float(count), device=total.device))
                mean = self._all_sum(total) / count_all.clamp(min=1)
                width = len(str(len(mean) - 1))
                for layer, w in enumerate(mean):
                    self.log(f"{split}/alpha/{layer:0{width}d}", w, sync_dist=True)
                if split == "test":
                    self.test_layer_weights = [float(w) for w in mean]
        return values

    def on_validation_epoch_end(self) -> None:
        evaluated = self._log_epoch(self.eval_splits)
        losses = {split: self._epoch_loss(split) for split in self.eval_splits}
        if self.trainer.sanity_checking:
            if self.classes is not None:
                self.classes.reset()
            return
        h = self.history
        h["epoch"].append(self.current_epoch)
        for split, value in evaluated.items():
            h[split].append(float(value))
        if losses.get("val") is not None:
            h["val_loss"].append(float(losses["val"]))
        train_loss = self._epoch_loss("train")
        if train_loss is not None:  # the training batches of this epoch are all done by now
            h["train_loss"].append(float(train_loss))
            h[f"train_{self.metric_name}"].append(float(self._log_epoch(["train"])["train"]))
        self._record_collapse(None if train_loss is None else float(train_loss))

    def _record_collapse(self, train_loss: float | None) -> None:
        """This round's class-count values (:mod:`histograph.training.collapse`)."""
        if self.classes is None:
            return
        train = self.classes.pop("train")
        self.classes.reset()  # the evaluation splits' counts are not needed
        if train is None:
            return
        train = self._all_sum(train)  # every rank's predictions, not this rank's shard
        for key, value in collapse.round_values(train, train_loss).items():
            self.history[key].append(value)
            self.log(f"train/{key}", value, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["histograph_history"] = self.history
        checkpoint["histograph_meta"] = self.meta

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "histograph_history" in checkpoint:
            self.history = {k: list(v) for k, v in checkpoint["histograph_history"].items()}
            rounds = len(self.history["test"])
            if "epoch" not in self.history:  # written before rounds were numbered: every epoch
                self.history["epoch"] = list(range(rounds))
            if self.classes is not None:  # written before collapse detection: unknown rounds
                for key in collapse.KEYS:
                    self.history.setdefault(key, [float("nan")] * rounds)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(["test"])
        self._epoch_loss("test")
        if self.classes is not None:
            self.classes.reset()

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def selected_round(history: dict[str, list[float]]) -> int:
    """Index (validation round) of the first best validation metric (the last round without
    validation); ``history["epoch"][index]`` is its trainer epoch.

    Matches :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``mode="max"``, which
    replaces its best checkpoint only on a strict improvement.
    """
    if "val" not in history:
        return len(history["test"]) - 1
    val = history["val"]
    return max(range(len(val)), key=lambda e: (val[e], -e))
