"""Backbone + readout + head: the graph classifier."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch

from histograph.nn.readouts.base import History, Readout


class GraphClassifier(torch.nn.Module):
    """``logits = head(readout(backbone(graph), batch))``.

    The split into :meth:`history` and :meth:`classify` lets the frozen-backbone mode cache the
    history once and train only ``readout`` and ``head``.

    Args:
        backbone: a history-returning GNN (:class:`~histograph.nn.backbones.HistoryGNN`).
        readout: a :class:`~histograph.nn.readouts.base.Readout` built for its history.
        head: the classifier on the graph embedding (:class:`~histograph.nn.head.MLPHead`).
    """

    def __init__(self, backbone: torch.nn.Module, readout: Readout,
                 head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.readout, self.head = backbone, readout, head

    def history(self, data: Batch) -> list[Tensor]:
        return self.backbone(data.x, data.edge_index, getattr(data, "edge_attr", None),
                             data.batch)

    def classify(self, history: History, batch: Tensor, num_graphs: int, *,
                 return_layer_weights: bool = False):
        """Logits ``[num_graphs, out]`` (and the readout's layer weights when asked)."""
        x, weights = self.readout(history, batch, num_graphs, return_layer_weights=True)
        logits = self.head(x)
        return (logits, weights) if return_layer_weights else logits

    def forward(self, data: Batch, *, return_layer_weights: bool = False):
        """Logits of a PyG batch; with ``return_layer_weights=True`` the pair ``(logits,
        layer_weights)`` (``[num_graphs, L]``, or ``None`` for readouts without them)."""
        return self.classify(self.history(data), data.batch, data.num_graphs,
                             return_layer_weights=return_layer_weights)
