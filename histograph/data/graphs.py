"""The container every dataset loader returns, and an in-memory dataset built from a list."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset


class InMemoryGraphs(InMemoryDataset):
    """A collated, in-memory dataset made from a list of :class:`Data` objects.

    Used after feature construction (e.g. one-hot degrees) so that nothing is re-computed per
    access: PyG's ``transform`` would run on every ``__getitem__`` of every epoch.
    """

    def __init__(self, data_list: list[Data]) -> None:
        super().__init__(None)
        self.data, self.slices = self.collate(data_list)

    @classmethod
    def from_collated(cls, data: Data, slices: dict) -> "InMemoryGraphs":
        """Wrap tensors that are already collated (one ``data`` + per-attribute ``slices``, as
        :meth:`~torch_geometric.data.InMemoryDataset.collate` returns) without a list."""
        graphs = cls.__new__(cls)
        InMemoryDataset.__init__(graphs, None)
        graphs.data, graphs.slices = data, slices
        return graphs


@dataclass
class GraphData:
    """A loaded graph-level dataset plus what a model and the metrics need to know about it.

    :param dataset: the graphs (indexable, PyG dataset).
    :param name: canonical name (``MUTAG``, ``ogbg-molhiv``, ...).
    :param num_features: input node-feature width (for ``encoder="atom"``: the OGB atom columns).
    :param num_outputs: number of logits: classes (``task="multiclass"``) or tasks (``"multilabel"``).
    :param task: ``"multiclass"`` (cross-entropy, accuracy) or ``"multilabel"`` (masked BCE, OGB).
    :param metric: ``"acc"``, ``"rocauc"`` or ``"ap"``.
    :param edge_dim: edge-feature width, or ``None`` when the graphs have no edge features.
    :param encoder: ``"linear"`` (dense float features) or ``"atom"`` (OGB categorical features).
    :param labels: one label per graph for stratified splits (``None`` for multi-task sets).
    :param official_split: ``{"train", "valid", "test"}`` index tensors when the dataset has one.
    :param fingerprint: SHA-256 of the raw files the graphs were built from
        (:mod:`histograph.data.fingerprint`), ``None`` when unknown (e.g. built in memory).
    """

    dataset: InMemoryDataset
    name: str
    num_features: int
    num_outputs: int
    task: str
    metric: str
    edge_dim: int | None = None
    encoder: str = "linear"
    labels: np.ndarray | None = None
    official_split: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.dataset)
