"""Graph classification (``task=graph``, the default): one label per graph, TU and OGB sets.

The network is backbone + readout + head (:class:`~histograph.nn.model.GraphClassifier`), built
from ``cfg.model``, ``cfg.readout`` and ``cfg.head``; the data is one fold of the dataset
(:class:`~histograph.data.datamodule.GraphDataModule`, ``cfg.data`` + ``cfg.dataset``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch_geometric.loader import DataLoader

from histograph.data.datamodule import GraphDataModule
from histograph.data.graphs import GraphData
from histograph.diagnostics import smoothing_diagnostics
from histograph.nn.budget import fit_width, meta_count, width_step
from histograph.nn.model import GraphClassifier
from histograph.errors import config_error
from histograph.tasks.base import Network, Task, build_part
from histograph.training.module import LitGraphClassifier

log = logging.getLogger("histograph")

#: A width whose attention heads have multiples of 8 channels is preferred when its parameter
#: count is within this fraction of the budget.
BUDGET_SLACK = 0.1


def split_meta(cfg: DictConfig, data: GraphData) -> dict[str, Any]:
    """The dataset/protocol/fold settings a checkpoint records (frozen mode checks them)."""
    ogb = cfg.protocol.name == "ogb"
    return {"dataset": data.name, "protocol": cfg.protocol.name,
            "fold": None if ogb else int(cfg.fold), "folds": int(cfg.protocol.folds),
            "split_seed": int(cfg.protocol.split_seed),
            "val_fraction": 0.0 if cfg.protocol.name == "gin"
            else float(cfg.protocol.val_fraction)}


def with_width(cfg: DictConfig, hidden: int) -> DictConfig:
    """A copy of ``cfg`` with ``model.hidden = hidden`` (what interpolates it follows)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.model.hidden = int(hidden)
    return out


def build_graph_model(cfg: DictConfig, data: GraphData) -> GraphClassifier:
    """Backbone, readout and head of ``cfg`` for ``data``'s input and output sizes."""
    backbone = build_part("model", cfg.model, in_channels=data.num_features,
                          edge_dim=data.edge_dim, encoder=data.encoder)
    readout = build_part("readout", cfg.readout, in_channels=backbone.hidden_channels,
                         history_len=backbone.num_layers + 1)
    head = build_part("head", cfg.head, in_channels=readout.out_channels,
                      out_channels=data.num_outputs)
    return GraphClassifier(backbone, readout, head)


class GraphTask(Task):
    r"""Graph classification: ``logits = head(readout(backbone(graph)))``.

    Args:
        param_budget (int, optional): set ``model.hidden`` so that the whole network has about
            this many weights (:func:`histograph.nn.budget.fit_width`, on the ``meta`` device, as
            a multiple of the attention heads), so that every depth of a sweep has the same
            count (Dwivedi et al., "Benchmarking Graph Neural Networks"). The fitted width is
            ``hidden`` in ``results.json``; the config itself is not changed.
            (default: :obj:`None`, ``model.hidden`` as given)
        compile (bool): ``torch.compile(dynamic=True)`` the network in place (checkpoint keys
            unchanged); pays off for long runs only: the first epoch compiles for about a
            minute on a CPU. (default: :obj:`False`)
    """

    kind = "graph"
    lightning_class = LitGraphClassifier

    def __init__(self, param_budget: int | None = None, compile: bool = False) -> None:
        if param_budget is not None and (isinstance(param_budget, bool)
                                         or not isinstance(param_budget, int)
                                         or param_budget < 1):
            raise ValueError(f"param_budget must be a positive integer, got {param_budget!r}.")
        self.param_budget = param_budget
        self.compile = bool(compile)

    def datamodule(self, cfg: DictConfig) -> GraphDataModule:
        dm = build_part("data", cfg.data, dataset=instantiate(cfg.dataset))
        dm.setup("fit")
        return dm

    def width(self, cfg: DictConfig, data: GraphData) -> int:
        """``model.hidden``, or the width that meets :attr:`param_budget`."""
        if self.param_budget is None:
            return int(cfg.model.hidden)
        heads = [cfg.readout.get("heads"),
                 cfg.model.get("gat_heads") if cfg.model.get("conv") == "gat" else None]
        count = lambda w: meta_count(  # noqa: E731
            lambda: build_graph_model(with_width(cfg, w), data))
        try:
            hidden = fit_width(count, self.param_budget, step=width_step(heads))
        except ValueError as exc:
            raise config_error("task", ["param_budget"], exc) from exc
        # prefer attention head sizes that are multiples of 8 (the fused attention kernels' fast
        # path on GPUs) when that width meets the budget within BUDGET_SLACK too
        step8 = width_step([8 * h for h in heads if h])
        if step8 > 1 and hidden % step8:
            try:
                wide = fit_width(count, self.param_budget, step=step8)
            except ValueError:
                wide = None
            if wide is not None and abs(count(wide) - self.param_budget) \
                    <= BUDGET_SLACK * self.param_budget:
                hidden = wide
        log.info("task.param_budget=%d -> model.hidden=%d", self.param_budget, hidden)
        return hidden

    def network(self, cfg: DictConfig, dm: GraphDataModule) -> Network:
        data = dm.data
        hidden = self.width(cfg, data)
        built = with_width(cfg, hidden)
        model = build_graph_model(built, data)
        if self.compile:  # in place: state_dict keys stay those of the module
            model.compile(dynamic=True)
        meta = {**split_meta(cfg, data),
                "model": OmegaConf.to_container(built.model, resolve=True),
                "in_channels": data.num_features, "edge_dim": data.edge_dim,
                "encoder": data.encoder}
        return Network(model, meta, {"hidden": hidden, "param_budget": self.param_budget})

    def diagnose(self, model: torch.nn.Module, dm: GraphDataModule) -> dict[str, Any]:
        split = "val" if "val" in dm.eval_splits else "test"
        loader = DataLoader(dm.subset(split), batch_size=dm.eval_batch_size, shuffle=False)
        device = next(model.parameters()).device
        return {**smoothing_diagnostics(model, loader, device), "diagnostics_split": split}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(param_budget={self.param_budget}, "
                f"compile={self.compile})")
