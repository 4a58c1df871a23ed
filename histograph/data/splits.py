"""Stratified k-fold cross-validation splits with an inner validation holdout, cached as JSON.

Splits are computed once per (dataset, k, seed, validation fraction) with scikit-learn's
:class:`~sklearn.model_selection.StratifiedKFold` and stored beside the processed data, with the
dataset name, its size, k and a checksum of the labels, so that a cache made for another dataset
(or another version of it) is refused instead of silently reused. A missing cache is computed
and written under a file lock (:mod:`histograph.data.locks`), so that concurrent jobs of a sweep
write it once and read the same folds.

Protocols (``../shared/docs/PROTOCOLS.md``):

* ``holdout``: train on the 9 other folds minus a stratified ``val_fraction`` held out for
  validation (model selection), test on the fold.
* ``gin``: train on all 9 other folds, no validation set; evaluation on the test fold every epoch
  (the paper-compatible, optimistic protocol).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from histograph.data.locks import exclusive, lock_file
from histograph.errors import UserError
from histograph.utils import atomic_write_json

SPLIT_VERSION = 1


def label_checksum(labels: np.ndarray) -> str:
    """Short, order-sensitive checksum of the label vector."""
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def make_folds(labels: np.ndarray, k: int, seed: int, val_fraction: float) -> list[dict]:
    """Compute ``k`` stratified folds; each has sorted ``train``, ``val`` and ``test`` indices.

    ``val`` is a stratified ``val_fraction`` of the training part (empty when 0); the ``k`` test
    folds partition the dataset.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if k < 2:
        raise UserError(f"protocol.folds must be at least 2, got {k}.")
    if counts[counts > 0].min() < k:
        raise UserError(
            f"The smallest class has {counts[counts > 0].min()} graphs, fewer than the "
            f"{k} folds; use fewer folds (protocol.folds).")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for train_idx, test_idx in skf.split(np.zeros(len(labels)), labels):
        if val_fraction > 0:
            try:
                train_idx, val_idx = train_test_split(
                    train_idx, test_size=val_fraction, stratify=labels[train_idx],
                    random_state=seed)
            except ValueError as exc:  # a stratified part would be empty or miss a class
                raise UserError(
                    f"protocol.val_fraction={val_fraction} cannot hold out a stratified "
                    f"validation set from {len(train_idx)} training graphs ({exc}); use a value "
                    f"such as 0.1, or protocol=gin (no validation set).") from exc
        else:
            val_idx = np.array([], dtype=np.int64)
        folds.append({"train": sorted(int(i) for i in train_idx),
                      "val": sorted(int(i) for i in val_idx),
                      "test": sorted(int(i) for i in test_idx)})
    return folds


def load_or_make_folds(cache_dir: str | os.PathLike, dataset: str, labels: np.ndarray, k: int,
                       seed: int, val_fraction: float) -> list[dict]:
    """Return the cached folds for this setting, computing and caching them on first use.

    :raises UserError: when the cache file was made for another dataset, size, k or labels.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"protocol.val_fraction must be in [0, 1), got {val_fraction}.")
    path = Path(cache_dir) / f"{dataset}_k{k}_seed{seed}_val{val_fraction:g}.json"
    expected = {"dataset": dataset, "num_graphs": int(len(labels)), "k": int(k),
                "seed": int(seed), "val_fraction": float(val_fraction),
                "labels": label_checksum(labels), "version": SPLIT_VERSION}
    # one job computes and writes a missing cache; jobs started with it wait and read it
    with exclusive(lock_file(cache_dir, path.stem), f"the split cache {path}"):
        if path.exists():
            try:
                cached = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"The split cache {path} is unreadable ({exc}); delete it to "
                                f"recompute the splits.") from exc
            meta = {key: cached.get(key) for key in expected}
            if meta != expected:
                diff = ", ".join(f"{key}={meta[key]!r} (expected {expected[key]!r})"
                                 for key in expected if meta[key] != expected[key])
                raise UserError(f"The split cache {path} does not match this dataset ({diff}); "
                                f"delete it to recompute the splits.")
            return cached["folds"]
        folds = make_folds(labels, k, seed, val_fraction)
        atomic_write_json(path, {**expected, "folds": folds})
    return folds
