"""Last-layer readouts: PyG's graph-level aggregations applied to the final history entry.

Each class is a thin adapter from the project's readout contract (``history, batch``) to one PyG
aggregation (:mod:`torch_geometric.nn.aggr`); the aggregations themselves are PyG's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import aggr
from torch_geometric.nn.resolver import aggregation_resolver

from histograph.errors import invalid_choice
from histograph.nn.readouts.base import History, Readout, history_entry


class _LastLayer(Readout):
    aggr: aggr.Aggregation
    reads_history = False

    def forward(self, history: History, batch: Tensor, num_graphs: int) -> Tensor:
        return self.aggr(history_entry(history, -1), index=batch, dim_size=num_graphs)

    def reset_parameters(self) -> None:
        self.aggr.reset_parameters()


class PoolReadout(_LastLayer):
    """Parameter-free global pooling of the last layer: ``mean``, ``sum`` or ``max``.

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries (only the last is read).
        reduce (str): ``"mean"``, ``"sum"`` or ``"max"``. (default: :obj:`"mean"`)
    """

    REDUCES = ("mean", "sum", "max")

    def __init__(self, in_channels: int, history_len: int, reduce: str = "mean") -> None:
        super().__init__(in_channels, history_len)
        if reduce not in self.REDUCES:
            raise invalid_choice("reduce", reduce, self.REDUCES)
        self.reduce = reduce
        self.aggr = aggregation_resolver(reduce)

    def extra_repr_args(self) -> str:
        return f"reduce={self.reduce}"


class AttentionReadout(_LastLayer):
    r"""Gated attention pooling (Li et al., 2016) via PyG's ``AttentionalAggregation``:
    :math:`\sum_i \mathrm{softmax}_i(h_{gate}(x_i)) \cdot x_i`, with a 2-layer MLP gate.

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries (only the last is read).
    """

    def __init__(self, in_channels: int, history_len: int) -> None:
        super().__init__(in_channels, history_len)
        gate = torch.nn.Sequential(torch.nn.Linear(in_channels, in_channels), torch.nn.ReLU(),
                                   torch.nn.Linear(in_channels, 1))
        self.aggr = aggr.AttentionalAggregation(gate)


class Set2SetReadout(_LastLayer):
    """Set2Set (Vinyals et al., 2016) via PyG's ``Set2Set``; output width ``2 * in_channels``.

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries (only the last is read).
        processing_steps (int): LSTM processing steps. (default: :obj:`3`)
    """

    def __init__(self, in_channels: int, history_len: int, processing_steps: int = 3) -> None:
        super().__init__(in_channels, history_len, out_channels=2 * in_channels)
        self.processing_steps = processing_steps
        self.aggr = aggr.Set2Set(in_channels, processing_steps)

    def extra_repr_args(self) -> str:
        return f"processing_steps={self.processing_steps}"


class GMTReadout(_LastLayer):
    """Graph Multiset Transformer (Baek et al., ICLR 2021) via PyG's
    ``GraphMultisetTransformer`` (pads to a dense batch; needs PyG's sorted ``batch``).

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries (only the last is read).
        k (int): number of seed points of the pooling-by-attention block. (default: :obj:`16`)
        heads (int): attention heads. (default: :obj:`4`)
        num_encoder_blocks (int): self-attention blocks before pooling. (default: :obj:`1`)
        layer_norm (bool): layer normalisation in the blocks. (default: :obj:`False`)
        dropout (float): attention dropout. (default: :obj:`0.0`)
    """

    def __init__(self, in_channels: int, history_len: int, k: int = 16, heads: int = 4,
                 num_encoder_blocks: int = 1, layer_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, history_len)
        if heads < 1 or in_channels % heads:
            raise ValueError(f"heads={heads} must be a positive divisor of in_channels="
                             f"{in_channels}; choose heads that divides it.")
        self.k, self.heads = k, heads
        self.aggr = aggr.GraphMultisetTransformer(in_channels, k=k, heads=heads,
                                                  num_encoder_blocks=num_encoder_blocks,
                                                  layer_norm=layer_norm, dropout=dropout)

    def extra_repr_args(self) -> str:
        return f"k={self.k}, heads={self.heads}"
