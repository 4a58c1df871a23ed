"""Frozen-backbone mode (``mode=frozen``, the paper's "FT" mode): train readout + head only.

``python train.py mode=frozen backbone_ckpt=<checkpoint of an earlier run> readout=histograph``:
the backbone of an earlier graph-classification run is rebuilt from the configuration stored in
its checkpoint (``model.*`` overrides do not apply), frozen, and run once over every graph; the
DataModule then serves the cached histories (``[N_g, L, D]`` per graph) instead of the graphs,
with the checkpoint's dataset, protocol and fold (refused otherwise). The cache mechanics are in
:mod:`histograph.training.frozen`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from histograph.data.datamodule import GraphDataModule
from histograph.tasks.base import Network, build_part
from histograph.tasks.graph import GraphTask, split_meta
from histograph.training import frozen


class FrozenGraphTask(GraphTask):
    """Graph classification on a frozen backbone's cached history.

    Args:
        backbone_ckpt (str): a ``.ckpt`` written by ``train.py`` (e.g. ``<run dir>/checkpoints/
            last.ckpt``) of a run with the same dataset, protocol and fold.
        cache (str): ``"memory"``, or ``"disk"``: the history is written once to
            ``<data_dir>/frozen_cache/`` and reused by later jobs (same numbers either way).
            (default: :obj:`"memory"`)
        param_budget: not applicable (the backbone comes from the checkpoint); must be ``None``.
        compile (bool): as :class:`~histograph.tasks.graph.GraphTask`. (default: :obj:`False`)
    """

    def __init__(self, backbone_ckpt: str | None = None, cache: str = "memory",
                 param_budget: int | None = None, compile: bool = False) -> None:
        super().__init__(param_budget=None, compile=compile)
        if param_budget is not None:
            raise ValueError("param_budget does not apply to mode=frozen: the backbone and its "
                             "width come from backbone_ckpt; drop task.param_budget.")
        if cache not in frozen.CACHES:
            raise ValueError(f"cache must be one of {', '.join(frozen.CACHES)}, got {cache!r}.")
        self.backbone_ckpt, self.cache = backbone_ckpt, cache
        self.source: frozen.SourceCheckpoint | None = None
        self.backbone: torch.nn.Module | None = None
        self.cache_time_s: float | None = None

    def datamodule(self, cfg: DictConfig) -> GraphDataModule:
        """The fold's DataModule serving the frozen backbone's cached histories."""
        dm = super().datamodule(cfg)
        self.source = frozen.read_source(self.backbone_ckpt)
        frozen.check_same_split(self.source.meta, split_meta(cfg, dm.data))
        start = time.time()
        device = frozen.cache_device(cfg.trainer.get("accelerator"))
        # Rebuilding the backbone (its throw-away init) and the cache pass (a DataLoader draws a
        # base seed) must not consume the run's random stream: a cache hit and a miss then train
        # the same readout and head from the same initialisation.
        cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda):
            self.backbone = frozen.build_frozen_backbone(self.source)
            history, ptr = frozen.cached_history(
                self.source, self.backbone, dm.data.dataset, cache=self.cache,
                cache_dir=Path(cfg.paths.data_dir) / "frozen_cache", device=device,
                data_fingerprint=dm.data.fingerprint)
        self.backbone.cpu()
        self.cache_time_s = round(time.time() - start, 3)
        return dm.with_dataset(frozen.history_dataset(history, ptr, dm.data.dataset.y))

    def network(self, cfg: DictConfig, dm: GraphDataModule) -> Network:
        assert self.source is not None and self.backbone is not None, "call datamodule() first"
        meta, stored = self.source.meta, self.source.meta["model"]
        readout = build_part("readout", cfg.readout, in_channels=self.backbone.hidden_channels,
                             history_len=self.backbone.num_layers + 1)
        head = build_part("head", cfg.head, in_channels=readout.out_channels,
                          out_channels=dm.data.num_outputs)
        model = frozen.FrozenBackboneClassifier(self.backbone, readout, head)
        if self.compile:
            model.compile(dynamic=True)
        run_meta = {**split_meta(cfg, dm.data),
                    **{k: meta[k] for k in ("model", "in_channels", "edge_dim", "encoder")}}
        record = {"backbone_ckpt": str(self.source.path), "cache_time_s": self.cache_time_s,
                  "layers": int(stored["layers"]), "hidden": int(stored["hidden"]),
                  "model": stored.get("conv"), "param_budget": None}
        return Network(model, run_meta, record)

    def diagnose(self, model: torch.nn.Module, dm: GraphDataModule) -> dict[str, Any]:
        """None: the training data are cached histories, not graphs (no edges to measure)."""
        split = "val" if "val" in dm.eval_splits else "test"
        return {"dirichlet_energy": None, "mad": None, "diagnostics_split": split}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backbone_ckpt={self.backbone_ckpt!r}, cache={self.cache})"
