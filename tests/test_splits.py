"""Split invariants of the CV protocols: stratified, disjoint, covering, cached with checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histograph.data.splits import load_or_make_folds, make_folds
from histograph.errors import UserError

# PROTEINS' class sizes (663 / 450, stored sorted by label as in the TU files), and an imbalanced
# 3-class vector in a shuffled order
PROTEINS_LIKE = np.array([0] * 663 + [1] * 450)
THREE_CLASS = np.random.default_rng(0).permutation([0] * 90 + [1] * 47 + [2] * 23)


@pytest.mark.parametrize("labels", [PROTEINS_LIKE, THREE_CLASS], ids=["proteins", "3class"])
@pytest.mark.parametrize("val_fraction", [0.1, 0.0], ids=["holdout", "gin"])
def test_folds_partition_the_data_and_are_stratified(labels, val_fraction):
    k = 10
    folds = make_folds(labels, k=k, seed=0, val_fraction=val_fraction)
    assert len(folds) == k
    n = len(labels)
    # the k test folds cover every graph exactly once
    tests = np.concatenate([f["test"] for f in folds])
    assert len(tests) == n and np.array_equal(np.sort(tests), np.arange(n))
    classes, totals = np.unique(labels, return_counts=True)
    for fold in folds:
        train, val, test = (np.asarray(fold[s], dtype=int) for s in ("train", "val", "test"))
        # disjoint, and together the whole dataset; validation never touches the test fold
        assert not set(train) & set(test) and not set(val) & set(test)
        assert not set(train) & set(val)
        assert len(train) + len(val) + len(test) == n
        assert len(set(train) | set(val) | set(test)) == n
        # stratified: every class's test count is within one graph of its share
        for c, total in zip(classes, totals):
            assert abs((labels[test] == c).sum() - total / k) < 1
        if val_fraction == 0:
            assert len(val) == 0
        else:
            rest = np.concatenate([train, val])
            assert len(val) == pytest.approx(val_fraction * len(rest), abs=1)
            for c in classes:  # the inner holdout is stratified too
                share = (labels[rest] == c).sum() * val_fraction
                assert abs((labels[val] == c).sum() - share) <= 1


def test_folds_depend_on_the_split_seed_only():
    a = make_folds(THREE_CLASS, k=5, seed=0, val_fraction=0.1)
    assert a == make_folds(THREE_CLASS, k=5, seed=0, val_fraction=0.1)
    assert a != make_folds(THREE_CLASS, k=5, seed=1, val_fraction=0.1)
    # the outer folds are the same with and without an inner holdout (gin vs holdout)
    b = make_folds(THREE_CLASS, k=5, seed=0, val_fraction=0.0)
    assert [f["test"] for f in a] == [f["test"] for f in b]


def test_too_few_graphs_per_class_is_a_user_error():
    with pytest.raises(UserError, match="fewer than the 10 folds"):
        make_folds(np.array([0] * 30 + [1] * 5), k=10, seed=0, val_fraction=0.1)


def test_cache_is_reused_and_rejects_a_mismatched_dataset(tmp_path):
    folds = load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE, 10, 0, 0.1)
    path = tmp_path / "PROTEINS_k10_seed0_val0.1.json"
    assert path.exists()
    assert load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE, 10, 0, 0.1) == folds
    # same name, other graphs (another version or size of the dataset): refused
    with pytest.raises(UserError, match="does not match this dataset.*num_graphs"):
        load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE[:-10], 10, 0, 0.1)
    with pytest.raises(UserError, match="labels"):
        load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE[::-1].copy(), 10, 0, 0.1)
    # a cache file that names another dataset: refused
    cached = json.loads(path.read_text())
    path.write_text(json.dumps({**cached, "dataset": "DD"}))
    with pytest.raises(UserError, match="delete it to recompute"):
        load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE, 10, 0, 0.1)
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load_or_make_folds(tmp_path, "PROTEINS", PROTEINS_LIKE, 10, 0, 0.1)


@pytest.mark.parametrize("protocol", ["holdout", "gin", "nested"])
def test_datamodule_serves_disjoint_splits_of_the_real_data(protocol, cfg_factory):
    from tests.conftest import build_datamodule

    cfg = cfg_factory([f"protocol={protocol}", "fold=3"])
    dm = build_datamodule(cfg)
    split = {k: set(v.tolist()) for k, v in dm.split.items()}
    n = len(dm.data.dataset)
    assert not split["train"] & split["test"]
    assert not split.get("val", set()) & split["test"]
    assert not split["train"] & split.get("val", set())
    assert len(split["train"]) + len(split.get("val", ())) + len(split["test"]) == n
    if protocol == "gin":
        assert dm.eval_splits == ("test",) and not split.get("val")
    else:
        assert dm.eval_splits == ("val", "test") and split["val"]
    # the same outer test fold under every protocol
    folds = make_folds(dm.data.labels, k=10, seed=0, val_fraction=0.0)
    assert split["test"] == set(folds[3]["test"])
