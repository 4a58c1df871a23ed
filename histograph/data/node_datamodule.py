"""Node classification on one graph: the loaded-data container and a full-batch DataModule.

Every loader serves the same single graph (full batch, as GCN is trained on Planetoid); the split
is a boolean node mask (``train_mask``, ``val_mask``, ``test_mask``) that the LightningModule
(:class:`~histograph.training.node_module.LitNodeClassifier`) applies to the logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
from torch.utils.data import DataLoader
from torch_geometric.data import Data

from histograph.data.mirror import load_into
from histograph.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class NodeData:
    """A loaded node-level dataset: one graph with split masks, and what the model needs.

    :param data: the graph (``x``, ``edge_index``, ``y`` and ``<split>_mask`` for each split).
    :param name: canonical name (``Cora``, ...).
    :param num_features: input node-feature width.
    :param num_outputs: number of classes.
    :param task: always ``"multiclass"`` (cross-entropy, accuracy).
    :param metric: always ``"acc"``.
    :param fingerprint: SHA-256 of the raw files the graph was built from
        (:mod:`histograph.data.fingerprint`), ``None`` when unknown.
    """

    data: Data
    name: str
    num_features: int
    num_outputs: int
    task: str = "multiclass"
    metric: str = "acc"
    edge_dim: int | None = None
    encoder: str = "linear"
    fingerprint: str | None = None

    def num_nodes(self, split: str) -> int:
        return int(self.data[f"{split}_mask"].sum())


def _single(items: list[Data]) -> Data:
    """Collate of a one-graph loader: the graph itself (no copy into a ``Batch``)."""
    return items[0]


class NodeDataModule(pl.LightningDataModule):
    """Serves one graph to every split; ``eval_splits`` = ``("val", "test")``.

    :param dataset: a loader, called as ``dataset(data_dir=..., data_mirror=..., offline=...)``
        and returning :class:`NodeData` (Hydra builds it as a partial).
    :param data_dir: writable folder for raw and processed data.
    :param data_mirror: read-only folder laid out like ``shared/data`` (or ``None``).
    :param offline: never download; fail clearly when files are missing.
    """

    eval_splits = ("val", "test")

    def __init__(self, dataset: Callable[..., NodeData], data_dir: str | os.PathLike,
                 data_mirror: str | None = None, offline: bool = False) -> None:
        super().__init__()
        self.loader = dataset
        self.data_dir = Path(data_dir)
        self.data_mirror = data_mirror
        self.offline = offline
        self.data: NodeData | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the graph (once) and check that every split has nodes."""
        if self.data is not None:
            return
        data = load_into(self.loader, self.data_dir, self.data_mirror, self.offline)
        if not isinstance(data, NodeData):
            raise UserError("task=node needs a node-classification dataset (dataset=cora, "
                            "citeseer or pubmed); this dataset holds graph labels.")
        for split in SPLITS:
            if f"{split}_mask" not in data.data or data.num_nodes(split) == 0:
                raise UserError(f"{data.name} has no {split} nodes; use a dataset with a "
                                f"{split}_mask (the Planetoid public split has all three).")
        self.data = data

    def data_record(self) -> dict:
        """What data a result came from: ``{"data_fingerprint": <raw files' SHA-256>,
        "split_sizes": {"train": n, "val": n, "test": n}}`` (nodes in each mask)."""
        assert self.data is not None, "call setup() first"
        return {"data_fingerprint": self.data.fingerprint,
                "split_sizes": {split: self.data.num_nodes(split) for split in SPLITS}}

    def _loader(self) -> DataLoader:
        assert self.data is not None, "call setup() first"
        return DataLoader([self.data.data], batch_size=1, collate_fn=_single)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader() for _ in self.eval_splits]

    def test_dataloader(self) -> DataLoader:
        return self._loader()
