r"""The node-classification task (``task=node``): Planetoid, full batch, one label per node.

The depth study of the HISTOGRAPH paper (Galron et al., ICLR 2026, Table "node classification"):
a plain GCN of depth 2..64 on Cora / CiteSeer / PubMed (public split), classified from its last
layer versus from each node's whole history through HISTOGRAPH; best-validation epoch; mean ± std
over seeds. ``python train.py task=node dataset=cora model.layers=64 readout=histograph_stage1``.

How HISTOGRAPH reads a node's history here (:class:`~histograph.nn.node_model.NodeClassifier`):
the whole graph is one "graph" for :class:`~histograph.nn.readouts.histograph.HistographReadout`,
whose :meth:`node_states` returns the per-node states before its final mean. So stage 1 is the
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

from hydra.utils import instantiate
from omegaconf import DictConfig

from histograph.errors import UserError, unknown_choice

TASKS = ("graph", "node")
_NODE_LOADERS = ("histograph.data.planetoid.load_planetoid",)


def task_of(cfg: DictConfig) -> str:
    """The task of a config (``graph`` when unset), checked against the dataset and mode.

    :raises UserError: for an unknown task, a dataset of the other kind, or ``mode=frozen`` with
        ``task=node``.
    """
    task = cfg.get("task") or "graph"
    if task not in TASKS:
        raise unknown_choice("task", task, TASKS)
    node_data = cfg.dataset.get("_target_") in _NODE_LOADERS
    if task == "graph" and node_data:
        raise UserError(f"dataset {cfg.dataset.get('name')} is a node-classification dataset; "
                        f"add task=node (or pick a graph dataset).")
    if task == "node" and not node_data:
        raise UserError(f"task=node needs a node-classification dataset, and "
                        f"{cfg.dataset.get('name')} holds graph labels; use dataset=cora, "
                        f"citeseer or pubmed.")
    if task == "node" and cfg.get("mode", "end_to_end") != "end_to_end":
        raise UserError("mode=frozen is implemented for graph classification only; use "
                        "mode=end_to_end with task=node.")
    return task


def build_node_datamodule(cfg: DictConfig):
    """The full-batch :class:`~histograph.data.node_datamodule.NodeDataModule` of ``cfg``."""
    from histograph.data.node_datamodule import NodeDataModule

    return NodeDataModule(dataset=instantiate(cfg.dataset), data_dir=cfg.paths.data_dir,
                          data_mirror=cfg.paths.get("data_mirror"),
                          offline=cfg.data.get("offline", False))


def build_node_network(cfg: DictConfig, dm, readout_name: str | None = None
                       ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The node classifier, the metadata its checkpoints store, and extra results keys."""
    from omegaconf import OmegaConf

    from histograph.nn.node_model import build_node_model

    data = dm.data
    node_cfg = cfg.get("node") or {}
    model = build_node_model(instantiate(cfg.model), instantiate(cfg.readout),
                             instantiate(cfg.head), in_channels=data.num_features,
                             out_channels=data.num_outputs, readout_name=readout_name,
                             input_dropout=node_cfg.get("input_dropout", 0.0),
                             include_input=node_cfg.get("include_input", True))
    meta = {"dataset": data.name, "protocol": cfg.protocol.name, "fold": None,
            "task": "node", "model": OmegaConf.to_container(cfg.model, resolve=True),
            "in_channels": data.num_features}
    extra = {"task": "node", "fold": None,
             # history index of the readout's first entry (1: X^(0) is not read)
             "readout_history_start": 0 if node_cfg.get("include_input", True) else 1,
             "nodes": {s: data.num_nodes(s) for s in ("train", "val", "test")}}
    return model, meta, extra
