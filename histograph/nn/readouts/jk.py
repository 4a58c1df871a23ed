"""Jumping Knowledge readouts (Xu et al., ICML 2018): combine the layers per node with PyG's
:class:`~torch_geometric.nn.models.JumpingKnowledge`, then pool over the graph's nodes.

``mode="lstm"`` (bi-LSTM scores, softmax over layers, weighted sum per node) is the closest
built-in relative of HISTOGRAPH's layer-wise stage and its natural ablation baseline.
"""

from __future__ import annotations

from torch import Tensor
from torch_geometric.nn import JumpingKnowledge
from torch_geometric.nn.resolver import aggregation_resolver

from histograph.errors import invalid_choice
from histograph.nn.readouts.base import History, Readout, history_entry


class JKReadout(Readout):
    r"""Jumping-knowledge layer aggregation followed by a global pool.

    .. math::
        h_v = \mathrm{JK}(x_v^{(l_0)}, \dots, x_v^{(K)}), \qquad
        g = \mathrm{pool}_{v \in G}\, h_v

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries ``K + 1``.
        mode (str): ``"cat"``, ``"max"`` or ``"lstm"``. (default: :obj:`"cat"`)
        pool (str): ``"sum"``, ``"mean"`` or ``"max"`` over nodes. (default: :obj:`"sum"`)
        include_input (bool): also combine the input embedding ``X^(0)``; the JK paper and
            PyG's ``BasicGNN`` use the message-passing layers only. (default: :obj:`False`)
    """

    MODES = ("cat", "max", "lstm")

    def __init__(self, in_channels: int, history_len: int, mode: str = "cat", pool: str = "sum",
                 include_input: bool = False) -> None:
        if mode not in self.MODES:
            raise invalid_choice("mode", mode, self.MODES)
        if pool not in ("sum", "mean", "max"):
            raise invalid_choice("pool", pool, ("sum", "mean", "max"))
        self.first = 0 if include_input or history_len == 1 else 1
        used = history_len - self.first
        super().__init__(in_channels, history_len,
                         out_channels=in_channels * used if mode == "cat" else in_channels)
        self.mode, self.pool, self.include_input = mode, pool, include_input
        self.jk = JumpingKnowledge(mode, channels=in_channels, num_layers=used)
        self.aggr = aggregation_resolver(pool)

    def reset_parameters(self) -> None:
        self.jk.reset_parameters()

    def forward(self, history: History, batch: Tensor, num_graphs: int) -> Tensor:
        xs = [history_entry(history, i) for i in range(self.first, self.history_len)]
        return self.aggr(self.jk(xs), index=batch, dim_size=num_graphs)

    def extra_repr_args(self) -> str:
        return f"mode={self.mode}, pool={self.pool}, layers={self.history_len - self.first}"
