"""Backbone + per-node readout + head for node classification on one graph."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv

from histograph.errors import UserError


class NodeClassifier(torch.nn.Module):
    r"""``logits = head(readout.node_states(backbone(graph)))``, one row per node.

    The readout sees the whole graph as a single "graph" (``batch`` all zeros). For HISTOGRAPH
    (:class:`~histograph.nn.readouts.histograph.HistographReadout`) stage 1 thus keeps its
    formula: per-node scores :math:`s_{v,l}` averaged over the graph's nodes give one signed
    layer weighting :math:`\alpha_l` shared by every node, and each node's representation is its
    own weighted history :math:`\mathbf{H}_v = \sum_l \alpha_l \tilde{\mathcal{X}}_{v,l}`; stage
    2 (if on) is self-attention across all nodes. The last-layer readout
    (:class:`~histograph.nn.readouts.last.LastLayerReadout`) gives the plain GNN.

    Args:
        backbone: a history-returning GNN (:class:`~histograph.nn.backbones.HistoryGNN`).
        readout: a readout with ``node_states(history, batch, num_graphs)``.
        head: the classifier on each node's representation.
        input_dropout (float): dropout on the raw node features, as in Kipf & Welling's GCN
            (the backbone's dropout acts after each layer only). (default: :obj:`0.0`)
        include_input (bool): hand the readout the input embedding :math:`\mathbf{X}^{(0)}`
            too. With 140 labelled nodes (Cora) HISTOGRAPH's layer attention then puts most
            weight on :math:`\mathbf{X}^{(0)}` (a linear map of the raw features, an MLP) and
            overfits: measured on Cora, GCN-2, seed 0, test accuracy 68.2 with it vs 76.8
            without; ``False`` reads layers 1..K only, as jumping knowledge does.
            (default: :obj:`True`)
    """

    def __init__(self, backbone: torch.nn.Module, readout: torch.nn.Module,
                 head: torch.nn.Module, input_dropout: float = 0.0,
                 include_input: bool = True) -> None:
        super().__init__()
        if not 0.0 <= float(input_dropout) < 1.0:
            raise UserError(f"node.input_dropout must be in [0, 1), got {input_dropout!r}.")
        self.backbone, self.readout, self.head = backbone, readout, head
        self.input_dropout = float(input_dropout)
        self.include_input = bool(include_input)
        # One fixed graph (transductive): every GCN layer may cache its normalised adjacency.
        for conv in getattr(backbone, "convs", []):
            if isinstance(conv, GCNConv):
                conv.cached = True

    def history(self, data: Data) -> list[Tensor]:
        """The backbone's history on the whole graph (raw features dropped out in training)."""
        x = F.dropout(data.x, p=self.input_dropout, training=self.training)
        return self.backbone(x, data.edge_index, None, None)

    def forward(self, data: Data) -> Tensor:
        history = self.history(data)
        if not self.include_input:
            history = history[1:]
        batch = history[0].new_zeros(history[0].size(0), dtype=torch.long)
        return self.head(self.readout.node_states(history, batch, 1))


def build_node_model(backbone: Callable[..., torch.nn.Module],
                     readout: Callable[..., torch.nn.Module],
                     head: Callable[..., torch.nn.Module], in_channels: int,
                     out_channels: int, readout_name: str | None = None,
                     input_dropout: float = 0.0, include_input: bool = True) -> NodeClassifier:
    """Finish the three partially-configured parts; the readout must classify nodes.

    A ``ValueError``/``TypeError`` from a constructor (a bad option value) becomes a
    :class:`UserError`, as for graph models.
    """
    try:
        net = backbone(in_channels=in_channels, edge_dim=None, encoder="linear")
        read = readout(in_channels=net.hidden_channels,
                       history_len=net.num_layers + (1 if include_input else 0))
        out = head(in_channels=read.out_channels, out_channels=out_channels)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).rstrip(".") + ".") from exc
    if not callable(getattr(read, "node_states", None)):
        name = readout_name or type(read).__name__
        raise UserError(f"readout={name} pools whole graphs and cannot classify nodes; with "
                        f"task=node use readout=last, histograph_stage1 or histograph.")
    return NodeClassifier(net, read, out, input_dropout=input_dropout,
                          include_input=include_input)
