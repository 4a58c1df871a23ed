"""Backbone + readout + head, and the builder that wires them from Hydra configs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch

from histograph.errors import UserError
from histograph.nn.readouts.base import History


class GraphClassifier(torch.nn.Module):
    """``logits = head(readout(backbone(graph), batch))``.

    The split into :meth:`history` and :meth:`classify` lets the frozen-backbone mode cache the
    history once and train only ``readout`` and ``head``.
    """

    def __init__(self, backbone: torch.nn.Module, readout: torch.nn.Module,
                 head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.readout, self.head = backbone, readout, head

    def history(self, data: Batch) -> list[Tensor]:
        return self.backbone(data.x, data.edge_index, getattr(data, "edge_attr", None),
                             data.batch)

    def classify(self, history: History, batch: Tensor, num_graphs: int) -> Tensor:
        return self.head(self.readout(history, batch, num_graphs))

    def forward(self, data: Batch) -> Tensor:
        return self.classify(self.history(data), data.batch, data.num_graphs)


def build_model(backbone: Callable[..., torch.nn.Module], readout: Callable[..., torch.nn.Module],
                head: Callable[..., torch.nn.Module], in_channels: int, out_channels: int,
                edge_dim: int | None, encoder: str) -> GraphClassifier:
    """Finish the three partially-configured parts with what only the data knows.

    A ``ValueError`` from a constructor (a bad option value) becomes a :class:`UserError`.
    """
    try:
        net = backbone(in_channels=in_channels, edge_dim=edge_dim, encoder=encoder)
        read = readout(in_channels=net.hidden_channels, history_len=net.num_layers + 1)
        out = head(in_channels=read.out_channels, out_channels=out_channels)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).rstrip(".") + ".") from exc
    return GraphClassifier(net, read, out)
