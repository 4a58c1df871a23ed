"""The classifier head: an MLP from the graph embedding to the logits."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MLP


class MLPHead(torch.nn.Module):
    """``num_layers``-layer MLP (PyG's :class:`~torch_geometric.nn.models.MLP`) with dropout.

    Args:
        in_channels (int): graph-embedding width (the readout's ``out_channels``).
        out_channels (int): number of logits (classes or tasks).
        hidden_channels (int): hidden width. (default: :obj:`64`)
        num_layers (int): number of linear layers. (default: :obj:`2`)
        dropout (float): dropout before every linear layer but the first. (default: :obj:`0.5`)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        channels = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.mlp = MLP(channels, dropout=dropout, norm=None)

    def reset_parameters(self) -> None:
        self.mlp.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"
