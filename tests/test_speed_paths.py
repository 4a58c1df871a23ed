"""Correctness of the fast paths (issue 6): cached collation, size buckets, rank shards, the
loader choice, per-epoch loss logging without per-step syncs, HISTOGRAPH's size groups, and the
precision/compile/optimizer presets. Timings live in ``scripts/bench_*.py``, not here."""

from __future__ import annotations

import json

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from histograph.data.collate import CachedGraphLoader, CollatedGraphs, unsupported_reason
from histograph.data.graphs import InMemoryGraphs
from histograph.errors import UserError
from histograph.train import run
from tests.conftest import build_datamodule, build_parts


def _graphs(sizes: list[int], seed: int = 0, edge_attr: bool = True) -> InMemoryGraphs:
    """Random graphs of the given sizes with node, edge and graph attributes and an id."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        e = 3 * n
        d = Data(x=torch.randn(n, 3, generator=gen),
                 edge_index=torch.randint(0, n, (2, e), generator=gen),
                 y=torch.tensor([i % 2]), gid=torch.tensor([i]))
        if edge_attr:
            d.edge_attr = torch.randn(e, 2, generator=gen)
        out.append(d)
    return InMemoryGraphs(out)


def _assert_same_batch(a, b) -> None:
    assert set(a.keys()) == set(b.keys()), (a.keys(), b.keys())
    for key in a.keys():
        same = (torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor)
                else a[key] == b[key])
        assert same, key
    assert a.num_graphs == b.num_graphs and a.num_nodes == b.num_nodes
    for key in a._slice_dict:
        assert torch.equal(a._slice_dict[key], b._slice_dict[key]), key
        assert torch.equal(torch.as_tensor(a._inc_dict[key]), b._inc_dict[key]), key
    last_a, last_b = a.get_example(a.num_graphs - 1), b.get_example(b.num_graphs - 1)
    assert last_a.num_nodes == last_b.num_nodes
    for key in last_a.keys():
        if isinstance(last_a[key], torch.Tensor):
            assert torch.equal(last_a[key], last_b[key]), key


@pytest.mark.parametrize("shuffle", [False, True])
def test_cached_batches_equal_pyg_collation(shuffle: bool) -> None:
    graphs = _graphs([5, 1, 9, 3, 7, 2, 8, 4, 6, 3, 11])
    subset = graphs[torch.tensor([10, 2, 4, 0, 7, 1, 9, 3])]  # an index subset, as a fold
    torch.manual_seed(3)
    expected = [list(DataLoader(subset, batch_size=3, shuffle=shuffle)) for _ in range(2)]
    after_pyg = torch.rand(1)
    torch.manual_seed(3)
    got = [list(CachedGraphLoader(subset, batch_size=3, shuffle=shuffle)) for _ in range(2)]
    after_cached = torch.rand(1)
    for exp_epoch, got_epoch in zip(expected, got):
        assert len(exp_epoch) == len(got_epoch) == 3
        for a, b in zip(exp_epoch, got_epoch):
            _assert_same_batch(a, b)
    # the global random stream is left exactly as PyG's loader leaves it
    assert torch.equal(after_pyg, after_cached)


def test_node_attribute_without_x_and_explicit_num_nodes() -> None:
    # the frozen-mode cache: only a node-level [N_g, L, D] history, y and num_nodes
    gen = torch.Generator().manual_seed(0)
    sizes = [4, 1, 6, 2]
    graphs = InMemoryGraphs([Data(history=torch.randn(n, 3, 2, generator=gen),
                                  y=torch.tensor([i]), num_nodes=n)
                             for i, n in enumerate(sizes)])
    (a,) = list(DataLoader(graphs, batch_size=4))
    (b,) = list(CachedGraphLoader(graphs, batch_size=4))
    _assert_same_batch(a, b)
    assert b.num_nodes == sum(sizes) and torch.equal(b.batch, a.batch)


def test_unsupported_datasets_are_named() -> None:
    graphs = _graphs([3, 4])
    assert unsupported_reason(graphs) is None
    graphs.transform = lambda d: d
    assert "transform" in unsupported_reason(graphs)
    assert "InMemoryDataset" in unsupported_reason([Data(x=torch.zeros(2, 1))])
    with pytest.raises(ValueError, match="transform"):
        CollatedGraphs(graphs)


def test_size_buckets_cover_every_graph_once_and_cut_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = (torch.exp(torch.randn(200, generator=gen) * 0.9 + 3)).long().clamp(min=1).tolist()
    graphs = _graphs(sizes, edge_attr=False)
    torch.manual_seed(0)
    plain = list(CachedGraphLoader(graphs, batch_size=16, shuffle=True))
    torch.manual_seed(0)
    loader = CachedGraphLoader(graphs, batch_size=16, bucket_by_size=True, bucket_window=4)
    epochs = [list(loader), list(loader)]
    for batches in epochs:
        assert len(batches) == len(plain) == 13
        ids = torch.cat([b.gid for b in batches])
        assert sorted(ids.tolist()) == list(range(200))  # every graph exactly once
        assert all(b.num_graphs <= 16 for b in batches)
    assert not torch.equal(torch.cat([b.gid for b in epochs[0]]),
                           torch.cat([b.gid for b in epochs[1]]))  # reshuffled per epoch

    def padded(batches):  # nodes after padding every graph to its batch's largest
        return sum(b.num_graphs * int(torch.diff(b.ptr).max()) for b in batches)

    assert padded(epochs[0]) < 0.7 * padded(plain)


@pytest.mark.parametrize("n", [10, 11])
def test_data_parallel_ranks_partition_each_epoch(n: int) -> None:
    graphs = _graphs([2] * n, edge_attr=False)
    shards = []
    for rank in range(2):
        torch.manual_seed(7)  # every rank holds the same global generator state
        shards.append(torch.cat([b.gid for b in CachedGraphLoader(
            graphs, batch_size=4, shuffle=True, rank=rank, world_size=2)]))
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    union = torch.cat(shards).tolist()
    assert set(union) == set(range(n)) and len(union) == n + n % 2  # padded by wrapping


def test_datamodule_picks_the_loader(cfg_factory) -> None:
    dm = build_datamodule(cfg_factory([]))
    assert isinstance(dm.train_dataloader(), CachedGraphLoader)
    assert all(isinstance(x, CachedGraphLoader) for x in dm.val_dataloader())
    for overrides in (["data.loader=pyg"], ["data.num_workers=1"]):
        dm = build_datamodule(cfg_factory(overrides))
        assert isinstance(dm.train_dataloader(), DataLoader), overrides
    with pytest.raises(UserError, match="data.bucket_by_size=true needs the cached loader"):
        build_datamodule(cfg_factory(["data.loader=pyg", "data.bucket_by_size=true"]))
    with pytest.raises(UserError, match="data.loader='fast' is not one of auto, cached, pyg"):
        build_datamodule(cfg_factory(["data.loader=fast"]))
    dm = build_datamodule(cfg_factory(["data.loader=cached"]))
    dm.data.dataset.transform = lambda d: d
    with pytest.raises(UserError, match="data.loader=pyg"):
        dm.train_dataloader()


def test_training_identical_with_cached_and_pyg_loaders(cfg_factory, tmp_path) -> None:
    common = ["model.layers=2", "model.hidden=16", "model.dropout=0.5", "readout=mean"]
    cached = run(cfg_factory(common + ["data.loader=cached"], output_dir=tmp_path / "cached"))
    pyg = run(cfg_factory(common + ["data.loader=pyg"], output_dir=tmp_path / "pyg"))
    assert cached["history"] == pyg["history"]  # same batches, same random stream
    assert cached["test"] == pyg["test"]


def _data_and_model(cfg):
    """The set-up DataModule of ``cfg`` and its untrained network, as ``run`` builds them."""
    _, dm, net = build_parts(cfg)
    return dm, net.model


def test_epoch_losses_are_graph_weighted_means(cfg_factory, tmp_path) -> None:
    cfg = cfg_factory(["model.layers=2", "model.hidden=16", "readout=mean"])
    res = run(cfg)
    dm, model = _data_and_model(cfg)
    ckpt = torch.load(res["checkpoint"], weights_only=True)  # the selected epoch's weights
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()})
    model.eval()
    with torch.no_grad():
        total = count = 0.0
        for batch in DataLoader(dm.subset("val"), batch_size=5):  # any batch size
            loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
            total, count = total + float(loss) * batch.num_graphs, count + batch.num_graphs
    assert res["history"]["val_loss"][res["selected_epoch"]] == pytest.approx(total / count,
                                                                             rel=1e-5)
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"train/loss", "val/loss", "test/loss"} <= set(header)


def test_training_step_has_no_host_sync(cfg_factory, monkeypatch) -> None:
    from hydra.utils import instantiate

    from histograph.training.module import LitGraphClassifier

    cfg = cfg_factory(["model.layers=2", "model.hidden=16", "readout=mean"])
    dm, model = _data_and_model(cfg)
    data = dm.data
    lit = LitGraphClassifier(model, task=data.task, num_outputs=data.num_outputs,
                             metric=data.metric, dataset_name=data.name,
                             optimizer=instantiate(cfg.optimizer))
    batch = next(iter(dm.train_dataloader()))
    calls = []
    monkeypatch.setattr(lit, "log", lambda *a, **k: calls.append(a[0]))

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the training step")

    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    loss = lit.training_step(batch, 0)
    lit.training_step(batch, 1)
    monkeypatch.undo()
    assert calls == []  # nothing logged per step; the epoch sums stay on the device
    assert loss.requires_grad and lit._loss_count["train"] == 2 * batch.num_graphs


@pytest.mark.parametrize("sizes", [[3, 60, 1, 17, 0, 9, 33, 2], [5, 5, 5]])
def test_histograph_size_groups_match_one_padded_block(sizes: list[int]) -> None:
    from histograph.nn.readouts import histograph as hg

    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    dest, blocks, total = hg.size_groups(batch, len(sizes), merge_slots=0)
    assert len(set(dest.tolist())) == len(dest) and int(dest.max()) < total
    assert sum(b * m for _, b, m in blocks) == total
    for offset, graphs, largest in blocks:  # every node row lies inside its block
        assert largest >= 1 and graphs >= 1
    torch.manual_seed(0)
    mod = hg.HistographReadout(8, 3, heads=2).double().eval()
    h = torch.randn(len(batch), 8, dtype=torch.float64)
    grouped = mod._node_attention(h, batch, len(sizes))
    old = hg.MERGE_SLOTS
    try:
        hg.MERGE_SLOTS = 10 ** 12  # one block: every graph padded to the largest
        single = mod._node_attention(h, batch, len(sizes))
    finally:
        hg.MERGE_SLOTS = old
    torch.testing.assert_close(grouped, single, atol=1e-10, rtol=1e-10)


def test_presets_compose(cfg_factory) -> None:
    cfg = cfg_factory(["trainer=bf16", "task.compile=true"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.task.compile is True
    assert cfg_factory([]).trainer.precision == "32-true"
    assert cfg_factory([]).optimizer.fused is True


def test_bf16_preset_trains(cfg_factory, tmp_path) -> None:
    res = run(cfg_factory(["trainer=bf16", "trainer.max_epochs=1", "model.layers=2",
                           "model.hidden=16"]))
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test"] == pytest.approx(res["test"])
    assert all(v == v for v in res["history"]["train_loss"])  # not NaN
