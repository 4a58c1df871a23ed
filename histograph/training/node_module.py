"""The LightningModule of node classification: full batch, split masks on the logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data

from histograph.training.module import LitGraphClassifier


class LitNodeClassifier(LitGraphClassifier):
    """:class:`~histograph.training.module.LitGraphClassifier` for one graph, masked by split.

    Each step runs the model on the whole graph and scores the nodes of the step's split
    (``train_mask`` for training, ``val_mask``/``test_mask`` for the evaluation loaders, which
    all serve the same graph). History, logging, selection, layer weights and checkpointing are
    the graph classifier's: ``<split>/acc`` and ``<split>/loss`` per epoch, the best-validation
    epoch selected, HISTOGRAPH's layer weights logged as ``<split>/alpha/<l>``. The model is
    evaluated once per validation epoch; the ``val`` and ``test`` loaders read the same logits.
    """

    _eval_out: tuple[Tensor, Tensor | None] | None = None

    def _logits(self, batch: Data, split: str) -> tuple[Tensor, Tensor | None]:
        """All nodes' logits and the layer weights; the evaluation loaders of one validation
        epoch share one pass."""
        if split == "train" or self._trainer is None or not self.trainer.validating:
            return self(batch, return_layer_weights=True)
        if self._eval_out is None:
            self._eval_out = self(batch, return_layer_weights=True)
        return self._eval_out

    def on_validation_epoch_start(self) -> None:
        self._eval_out = None

    def on_validation_epoch_end(self) -> None:
        self._eval_out = None
        super().on_validation_epoch_end()

    def _shared_step(self, batch: Data, split: str) -> Tensor:
        mask = batch[f"{split}_mask"]
        logits, weights = self._logits(batch, split)
        logits, y = logits[mask], batch.y[mask]
        loss = F.cross_entropy(logits, y)
        self.metrics[f"{split}_"].update(logits, y)
        self._record_loss(split, loss, 1)
        self._record_layer_weights(split, weights)
        if self.classes is not None:
            self.classes.update(split, logits, y)
        return loss
