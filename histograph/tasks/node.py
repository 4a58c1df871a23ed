r"""Node classification (``task=node``): Planetoid, full batch, one label per node.

The depth study of the HISTOGRAPH paper (Galron et al., ICLR 2026, Table "node classification"):
a plain GCN of depth 2..64 on Cora / CiteSeer / PubMed (public split), classified from its last
layer versus from each node's whole history through HISTOGRAPH; best-validation epoch; mean ± std
over seeds. ``python train.py task=node dataset=cora model.layers=64 readout=histograph_stage1``.

How HISTOGRAPH reads a node's history here (:class:`~histograph.nn.node_model.NodeClassifier`):
the whole graph is one "graph" for :class:`~histograph.nn.readouts.histograph.HistographReadout`,
whose ``node_states`` returns the per-node states before its final mean. So stage 1 is the
paper's formula unchanged: scores :math:`s_{v,l}` from each node's last entry (query) and every
entry (keys), averaged over the graph's nodes into one signed weighting :math:`\alpha_l` over the
layers, and every node keeps its own mixture :math:`\mathbf{H}_v = \sum_l \alpha_l
\tilde{\mathcal{X}}_{v,l}` (a per-node weighting would let each node pick its depth, but the
paper's unified weight is the one a graph readout learns too, and it is the same module).
Stage 2, self-attention across all :math:`N` nodes, costs :math:`O(N^2)` memory per head
(PubMed: 19,717 nodes); the study therefore uses **stage 1 only** (``readout=histograph_stage1``,
the scalable variant, :math:`O(N \cdot L \cdot D)`). ``readout=histograph`` runs both stages over
all nodes and is feasible on Cora and CiteSeer.
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from histograph.data.node_datamodule import NodeDataModule
from histograph.diagnostics import smoothing_diagnostics
from histograph.errors import UserError
from histograph.nn.node_model import NodeClassifier
from histograph.tasks.base import Network, Task, build_part
from histograph.training.node_module import LitNodeClassifier


class NodeTask(Task):
    """Node classification on one graph: ``logits = head(readout.nodes(backbone(graph)))``.

    Args:
        input_dropout (float): dropout on the raw node features (Kipf & Welling's GCN).
            (default: :obj:`0.0`)
        include_input (bool): hand the readout the input embedding :math:`X^{(0)}` too
            (:class:`~histograph.nn.node_model.NodeClassifier`). (default: :obj:`True`)
    """

    kind = "node"
    lightning_class = LitNodeClassifier

    def __init__(self, input_dropout: float = 0.0, include_input: bool = True) -> None:
        if not 0.0 <= float(input_dropout) < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout!r}.")
        self.input_dropout, self.include_input = float(input_dropout), bool(include_input)

    def datamodule(self, cfg: DictConfig) -> NodeDataModule:
        dm = build_part("data", cfg.data, dataset=instantiate(cfg.dataset))
        dm.setup("fit")
        return dm

    def network(self, cfg: DictConfig, dm: NodeDataModule) -> Network:
        data = dm.data
        backbone = build_part("model", cfg.model, in_channels=data.num_features, edge_dim=None,
                              encoder="linear")
        readout = build_part("readout", cfg.readout, in_channels=backbone.hidden_channels,
                             history_len=backbone.num_layers + int(self.include_input))
        if not readout.classifies_nodes:
            raise UserError(f"readout {type(readout).__name__} pools whole graphs and cannot "
                            f"classify nodes; with task=node use readout=last, "
                            f"histograph_stage1 or histograph.")
        head = build_part("head", cfg.head, in_channels=readout.out_channels,
                          out_channels=data.num_outputs)
        model = NodeClassifier(backbone, readout, head, input_dropout=self.input_dropout,
                               include_input=self.include_input)
        meta = {"dataset": data.name, "protocol": cfg.protocol.name, "fold": None,
                "task": "node", "model": OmegaConf.to_container(cfg.model, resolve=True),
                "in_channels": data.num_features}
        record = {"task": "node", "fold": None,
                  # history index of the readout's first entry (1: X^(0) is not read)
                  "readout_history_start": 0 if self.include_input else 1,
                  "nodes": {s: data.num_nodes(s) for s in ("train", "val", "test")}}
        return Network(model, meta, record)

    def diagnose(self, model: torch.nn.Module, dm: NodeDataModule) -> dict[str, Any]:
        """Energy over the whole graph, MAD among the validation nodes."""
        split = "val" if "val" in dm.eval_splits else "test"
        device = next(model.parameters()).device
        stats = smoothing_diagnostics(model, [dm.data.data], device,
                                      mad_mask_key=f"{split}_mask")
        return {**stats, "diagnostics_split": split}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_dropout={self.input_dropout}, "
                f"include_input={self.include_input})")
