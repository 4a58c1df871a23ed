"""A fold- and protocol-aware LightningDataModule for graph classification.

Lightning has no built-in k-fold support; its maintainers point to a DataModule that takes a fold
index and a fixed split seed, which is this class: the fold is a config value (and so a multirun
axis), the splits are cached by :mod:`histograph.data.splits`, and the protocol decides whether a
validation set exists (``holdout``), is absent (``gin``) or is the dataset's own (``ogb``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
from torch_geometric.loader import DataLoader

from histograph.data.collate import CachedGraphLoader, unsupported_reason
from histograph.data.graphs import GraphData
from histograph.data.mirror import load_into
from histograph.data.splits import load_or_make_folds
from histograph.config import GRAPH_PROTOCOLS as PROTOCOLS
from histograph.errors import UserError, invalid_choice

LOADERS = ("auto", "cached", "pyg")


class GraphDataModule(pl.LightningDataModule):
    """Loads a dataset once and serves the train / validation / test graphs of one fold.

    :param dataset: a loader, called as ``dataset(data_dir=..., data_mirror=..., offline=...)``
        and returning :class:`~histograph.data.graphs.GraphData` (Hydra builds it as a partial).
    :param data_dir: writable folder for raw/processed data and split caches.
    :param data_mirror: read-only folder laid out like ``shared/data`` (or ``None``).
    :param protocol: ``holdout`` (default), ``gin``, ``ogb``; ``nested`` trains like ``holdout``.
    :param fold: outer fold index in ``0..folds-1`` (ignored by ``ogb``).
    :param folds: number of outer folds.
    :param val_fraction: stratified share of the training folds held out for validation.
    :param split_seed: seed of the fold assignment (kept fixed across model seeds).
    :param batch_size: graphs per training batch.
    :param eval_batch_size: graphs per evaluation batch (default: ``batch_size``).
    :param num_workers: DataLoader worker processes (0 is fastest for small in-memory sets).
    :param offline: never download; fail clearly when files are missing.
    :param loader: ``cached`` (:class:`~histograph.data.collate.CachedGraphLoader`: batches cut
        from the collated in-memory tensors, no per-graph Python work), ``pyg`` (PyG's
        ``DataLoader``, with ``num_workers``), or ``auto`` (``cached`` when the dataset allows
        it and ``num_workers == 0``).
    :param bucket_by_size: training batches of graphs of similar size (less padding for dense
        per-graph stages; needs the cached loader).
    :param bucket_window: training batches per size-sorting window when ``bucket_by_size``.
    :param device_resident: where the cached loader keeps a split's graphs: ``auto`` (on the
        trainer's device when it is a GPU: one copy per epoch, or once for the evaluation
        splits, instead of one per step), ``true`` (always there) or ``false`` (on the CPU,
        copied per batch; PyG's loader then pins its batches on a GPU run so that the copy does
        not block).
    """

    def __init__(self, dataset: Callable[..., GraphData], data_dir: str | os.PathLike,
                 data_mirror: str | None = None, protocol: str = "holdout", fold: int = 0,
                 folds: int = 10, val_fraction: float = 0.1, split_seed: int = 0,
                 batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, offline: bool = False, loader: str = "auto",
                 bucket_by_size: bool = False, bucket_window: int = 64,
                 device_resident: bool | str = "auto") -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise invalid_choice("protocol", protocol, PROTOCOLS)
        if loader not in LOADERS:
            raise invalid_choice("loader", loader, LOADERS)
        if bucket_by_size and loader == "pyg":
            raise ValueError("bucket_by_size=true needs the cached loader; set loader=auto (or "
                             "cached).")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("folds", folds), ("bucket_window", bucket_window)):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if protocol != "ogb" and not 0 <= int(fold) < int(folds):
            raise ValueError(f"fold={fold} is outside 0..{int(folds) - 1} (folds={folds}).")
        self.loader = dataset
        self.data_dir = Path(data_dir)
        self.data_mirror = data_mirror
        self.protocol = protocol
        self.fold = int(fold)
        self.folds = int(folds)
        self.val_fraction = float(val_fraction) if protocol != "gin" else 0.0
        self.split_seed = int(split_seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size if eval_batch_size is not None
                                   else batch_size)
        self.num_workers = int(num_workers)
        self.offline = offline
        self.loader_kind = loader
        self.bucket_by_size, self.bucket_window = bool(bucket_by_size), int(bucket_window)
        if device_resident not in (True, False, "auto"):
            raise ValueError(f"device_resident must be auto, true or false, got "
                             f"{device_resident!r}.")
        self.device_resident = device_resident
        self.data: GraphData | None = None
        self.split: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    def setup(self, stage: str | None = None) -> None:
        """Load the dataset (once) and select this fold's indices."""
        if self.data is not None:
            return
        data = load_into(self.loader, self.data_dir, self.data_mirror, self.offline)
        if not isinstance(data, GraphData):
            raise UserError(f"dataset {getattr(data, 'name', '?')} is a node-classification "
                            f"dataset; add task=node (or pick a graph dataset).")
        self.split = self._make_split(data)
        for key, idx in self.split.items():
            if key != "val" or self.protocol != "gin":
                if len(idx) == 0:
                    raise UserError(f"The {key} split of {data.name} (fold {self.fold}) is empty; "
                                    f"check the dataset and the protocol settings.")
        self.data = data

    def _make_split(self, data: GraphData) -> dict[str, torch.Tensor]:
        if self.protocol == "ogb":
            if data.official_split is None:
                raise UserError(f"protocol=ogb needs a dataset with an official split, and "
                                f"{data.name} has none; use protocol=holdout.")
            s = data.official_split
            return {"train": s["train"], "val": s["valid"], "test": s["test"]}
        if data.labels is None:
            raise UserError(f"{data.name} has several tasks and cannot be split into stratified "
                            f"folds; use protocol=ogb.")
        folds = load_or_make_folds(self.data_dir / "splits", data.name, data.labels, self.folds,
                                   self.split_seed, self.val_fraction)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in folds[self.fold].items()}

    def with_dataset(self, dataset) -> "GraphDataModule":
        """A set-up copy of this DataModule that serves ``dataset`` (same graphs, same order,
        e.g. their cached histories in frozen mode) with the same split and loaders; this one is
        left as it is."""
        assert self.data is not None, "call setup() first"
        other = copy.copy(self)
        other.data = dataclasses.replace(self.data, dataset=dataset)
        return other

    # ------------------------------------------------------------------ properties
    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Names of the evaluation loaders served every epoch, in order."""
        return ("test",) if self.protocol == "gin" else ("val", "test")

    def data_record(self) -> dict:
        """What data a result came from: ``{"data_fingerprint": <raw files' SHA-256>,
        "split_sizes": {"train": n, "val": n, "test": n}}`` (graphs in this fold's splits;
        ``val`` is 0 under ``gin``, which has no validation set)."""
        assert self.data is not None, "call setup() first"
        return {"data_fingerprint": self.data.fingerprint,
                "split_sizes": {key: len(self.split.get(key, ())) for key in
                                ("train", "val", "test")}}

    def subset(self, key: str):
        """The graphs of split ``key`` (``train``, ``val`` or ``test``)."""
        assert self.data is not None, "call setup() first"
        return self.data.dataset[self.split[key]]

    # ------------------------------------------------------------------ loaders
    def use_cached_loader(self, dataset) -> bool:
        """Whether ``dataset`` is served by the cached loader (see ``loader``)."""
        reason = unsupported_reason(dataset)
        if self.loader_kind == "pyg":
            return False
        if self.loader_kind == "cached" or self.bucket_by_size:
            if reason is not None:
                raise UserError(f"The cached loader cannot serve {self.data.name}: {reason}; set "
                                f"data.loader=pyg (and data.bucket_by_size=false).")
            return True
        return reason is None and self.num_workers == 0

    def _device(self) -> torch.device | None:
        """The trainer's device, when batches should live there (``device_resident``)."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or self.device_resident is False:
            return None
        return device if self.device_resident is True or device.type == "cuda" else None

    def _loader(self, key: str, shuffle: bool) -> DataLoader | CachedGraphLoader:
        dataset = self.subset(key)
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        trainer = getattr(self, "trainer", None)
        if self.use_cached_loader(dataset):
            world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
            rank = int(getattr(trainer, "global_rank", 0) or 0) if trainer is not None else 0
            return CachedGraphLoader(dataset, batch_size, shuffle=shuffle,
                                     bucket_by_size=self.bucket_by_size and shuffle,
                                     bucket_window=self.bucket_window, rank=rank,
                                     world_size=world, device=self._device())
        cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=cuda)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """A batch is copied without blocking the host (``non_blocking=True``: from the pinned
        memory of PyG's loader the copy overlaps the previous step); a batch that is already
        there (``device_resident``) is not copied."""
        return batch.to(device, non_blocking=True)

    def train_dataloader(self) -> DataLoader | CachedGraphLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> list[DataLoader | CachedGraphLoader]:
        return [self._loader(key, shuffle=False) for key in self.eval_splits]

    def test_dataloader(self) -> DataLoader | CachedGraphLoader:
        return self._loader("test", shuffle=False)
