"""Backbone + per-node readout + head for node classification on one graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv

from histograph.nn.readouts.base import Readout


class NodeClassifier(torch.nn.Module):
    r"""``logits = head(readout.nodes(backbone(graph)))``, one row per node.

    The readout sees the whole graph as a single "graph" (``batch`` all zeros). For HISTOGRAPH
    (:class:`~histograph.nn.readouts.histograph.HistographReadout`) stage 1 thus keeps its
    formula: per-node scores :math:`s_{v,l}` averaged over the graph's nodes give one signed
    layer weighting :math:`\alpha_l` shared by every node, and each node's representation is its
    own weighted history :math:`\mathbf{H}_v = \sum_l \alpha_l \tilde{\mathcal{X}}_{v,l}`; stage
    2 (if on) is self-attention across all nodes. The last-layer readout
    (:class:`~histograph.nn.readouts.last.LastLayerReadout`) gives the plain GNN.

    Args:
        backbone: a history-returning GNN (:class:`~histograph.nn.backbones.HistoryGNN`).
        readout: a readout that classifies nodes (``readout.classifies_nodes``).
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

    def __init__(self, backbone: torch.nn.Module, readout: Readout, head: torch.nn.Module,
                 input_dropout: float = 0.0, include_input: bool = True) -> None:
        super().__init__()
        if not 0.0 <= float(input_dropout) < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout!r}.")
        if not readout.classifies_nodes:
            raise TypeError(f"{type(readout).__name__} pools whole graphs and cannot classify "
                            f"nodes.")
        self.backbone, self.readout, self.head = backbone, readout, head
        self.input_dropout = float(input_dropout)
        self.include_input = bool(include_input)
        # One fixed graph (transductive): every GCN layer may cache its normalised adjacency.
        for conv in getattr(backbone, "convs", []):
            if isinstance(conv, GCNConv):
                conv.cached = True

    def _apply(self, fn, recurse: bool = True):
        """Move GCN's cached normalised adjacency with the module (``.to``, ``.cuda``, ``.cpu``):
        PyG keeps it in a plain attribute that ``Module._apply`` does not reach, so after
        Lightning's teardown moved the model to the CPU the cache stayed on the GPU and the next
        forward (the diagnostics) mixed devices."""
        super()._apply(fn, recurse)
        for conv in getattr(self.backbone, "convs", []):
            cached = getattr(conv, "_cached_edge_index", None)
            if cached is not None:
                conv._cached_edge_index = tuple(None if t is None else fn(t) for t in cached)
        return self

    def history(self, data: Data) -> list[Tensor]:
        """The backbone's history on the whole graph (raw features dropped out in training)."""
        x = F.dropout(data.x, p=self.input_dropout, training=self.training)
        return self.backbone(x, data.edge_index, None, None)

    def forward(self, data: Data, *, return_layer_weights: bool = False):
        """Logits ``[N, classes]`` (and the layer weights ``[1, L]`` when asked)."""
        history = self.history(data)
        if not self.include_input:
            history = history[1:]
        z, weights = self.readout.nodes(history, return_layer_weights=True)
        logits = self.head(z)
        return (logits, weights) if return_layer_weights else logits
