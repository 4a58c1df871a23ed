"""The last layer as is: the plain GNN's readout, for node and graph classification.

A GNN classifies with its final node states ``X^(K)``; this readout makes that the baseline of the
node-classification depth study (:mod:`histograph.node`), against HISTOGRAPH's per-node history.
"""

from __future__ import annotations

from torch import Tensor
from torch_geometric.utils import scatter

from histograph.nn.readouts.base import History, Readout, history_entry


class LastLayerReadout(Readout):
    r"""Reads only the last history entry :math:`\mathbf{X}^{(K)}`.

    :meth:`node_states` returns :math:`\mathbf{X}^{(K)}` per node (node classification);
    :meth:`forward` returns its mean over each graph's nodes
    :math:`g = \frac{1}{|g|}\sum_{v \in g} \mathbf{X}^{(K)}_v` (graph classification, the same
    as ``readout=mean``).

    Args:
        in_channels (int): node-state width.
        history_len (int): number of history entries (only the last is read).
    """

    reads_history = False

    def node_states(self, history: History, batch: Tensor, num_graphs: int) -> Tensor:
        """The last entry ``[N, in_channels]``; ``batch``/``num_graphs`` are not needed."""
        return history_entry(history, -1)

    def forward(self, history: History, batch: Tensor, num_graphs: int) -> Tensor:
        return scatter(history_entry(history, -1), batch, dim=0, dim_size=num_graphs,
                       reduce="mean")
