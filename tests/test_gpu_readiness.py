"""CUDA defects caught on a CPU (no GPU here or in CI): the meta device stands in for a second
device, ``torch.autocast("cpu", bfloat16)`` for bf16-mixed training (with checks that the
reductions themselves run in fp32, since the CPU kernels accumulate in fp32 and would hide the
CUDA bug), and a TorchFunctionMode that counts host reads for the syncs of a training step."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from histograph.data.collate import CachedGraphLoader
from histograph.nn.backbones import HistoryGNN
from histograph.nn.head import MLPHead
from histograph.nn.model import GraphClassifier
from histograph.nn.node_model import NodeClassifier
from histograph.nn.readouts.histograph import HistographReadout
from histograph.nn.readouts.last import LastLayerReadout
from histograph.nn.readouts.pooling import PoolReadout
from histograph.training.guards import FiniteLossGuard
from histograph.training.module import LitGraphClassifier
from tests.conftest import build_datamodule

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _star(leaves: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A hub joined to ``leaves`` nodes (both directions): the hub's degree is ``leaves``."""
    leaf = torch.arange(1, leaves + 1)
    edge_index = torch.cat([torch.stack([leaf, torch.zeros_like(leaf)]),
                            torch.stack([torch.zeros_like(leaf), leaf])], dim=1)
    return torch.randn(leaves + 1, 3), edge_index


# ---------------------------------------------------------------------- 1. devices
def test_node_gcn_cache_moves_with_the_model():
    """GCN's cached normalised adjacency is a plain attribute: it must follow .to() (after
    Lightning's teardown the diagnostics ran on a model whose cache stayed on the GPU)."""
    from torch_geometric.data import Data

    x, edge_index = _star(5)
    backbone = HistoryGNN(3, 8, 2, conv="gcn", norm=None)
    model = NodeClassifier(backbone, LastLayerReadout(8, 2), MLPHead(8, 2, num_layers=1),
                           include_input=False)
    model(Data(x=x, edge_index=edge_index))  # fills the caches
    model.to("meta")
    for conv in backbone.convs:
        assert all(t.device.type == "meta" for t in conv._cached_edge_index if t is not None)


def test_diagnostics_run_on_the_trainers_device_on_rank_0(cfg_factory, monkeypatch):
    from tests.conftest import build_parts

    task, dm, net = build_parts(cfg_factory(["model.layers=1", "model.hidden=8"]))

    class Trainer:  # what Task.measure reads of a trainer
        is_global_zero = True

        class strategy:  # noqa: N801
            root_device = torch.device("meta")  # stands in for the GPU

    seen = []
    monkeypatch.setattr(task, "diagnose", lambda model, dm: seen.append(
        next(model.parameters()).device.type) or {"diagnostics_split": "val"})
    task.measure(net.model, dm, Trainer)  # the model comes back from teardown on the CPU
    assert seen == ["meta"]
    Trainer.is_global_zero = False  # other DDP ranks measure nothing
    assert task.measure(net.model, dm, Trainer)["dirichlet_energy"] is None and len(seen) == 1


# ---------------------------------------------------------------------- 2-4. bf16
def test_pooled_sums_and_means_stay_exact_under_bf16_autocast():
    ones = torch.ones(431, 4, dtype=torch.bfloat16)  # what a linear layer returns under autocast
    batch = torch.zeros(431, dtype=torch.long)
    with torch.autocast(**BF16):
        total = PoolReadout(4, 1, reduce="sum")([ones], batch)
        mean = PoolReadout(4, 1, reduce="mean")([ones * 3], batch)
    assert total.dtype == torch.float32 and torch.equal(total, torch.full((1, 4), 431.0))
    assert torch.equal(mean, torch.full((1, 4), 3.0))
    # in bf16 the same sum cannot be 431 (odd numbers above 256 are not representable)
    assert torch.zeros(1, 4, dtype=torch.bfloat16).index_add_(0, batch, ones)[0, 0].float() \
        != 431


def test_message_passing_aggregates_in_fp32_under_bf16_autocast():
    x, edge_index = _star(300)  # a degree of 300: bf16 degrees would stop at 256 on CUDA
    seen = {}
    for conv_name in ("gcn", "sage", "gat", "gin"):
        net = HistoryGNN(3, 8, 1, conv=conv_name, norm=None)
        conv = net.convs[0]
        inner = conv.nn if conv_name == "gin" else conv
        inner.register_forward_pre_hook(  # records, returns None (the arguments unchanged)
            lambda m, args, name=conv_name: seen.setdefault(
                name, (args[0].dtype, torch.is_autocast_enabled("cpu"))) and None)
        with torch.autocast(**BF16):
            net(x, edge_index)
    # GCN/SAGE/GAT aggregate after their linear layer: the whole conv in fp32
    assert seen["gcn"] == seen["sage"] == seen["gat"] == (torch.float32, False)
    # GIN sums first (fp32 input), then its MLP runs under autocast
    assert seen["gin"] == (torch.float32, True)


def test_histograph_layer_weights_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    readout = HistographReadout(8, 4, heads=2)
    history = [torch.randn(50, 8).to(torch.bfloat16) for _ in range(4)]
    batch = torch.repeat_interleave(torch.arange(5), 10)
    with torch.autocast(**BF16):
        out, weights = readout(history, batch, return_layer_weights=True)
    assert weights.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(5), atol=1e-6, rtol=0)


def test_logged_layer_weights_accumulate_in_fp32():
    lit = LitGraphClassifier(torch.nn.Linear(1, 1), "multiclass", 2, "acc", "x",
                             optimizer=torch.optim.Adam)
    step = torch.full((32, 33), 0.0245, dtype=torch.bfloat16)
    for _ in range(1028):  # a bf16 running sum stops growing long before this
        lit._record_layer_weights("train", step)
    total, count = lit._alpha["train"]
    assert total.dtype == torch.float32
    torch.testing.assert_close(total / count, step[0].float(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- 5. host syncs
class HostReads(TorchFunctionMode):
    """Counts the calls that read a device value on the host (each one a sync on a GPU)."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu",
             "nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.reads.append(name)
        elif name == "__getitem__" and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and args[1].dtype == torch.bool:
            self.reads.append("boolean mask")
        return func(*args, **(kwargs or {}))


def _one_step(readout, cfg_factory) -> list[str]:
    dm = build_datamodule(cfg_factory([]))
    batch = next(iter(dm.train_dataloader()))
    d = dm.data
    model = GraphClassifier(HistoryGNN(d.num_features, 16, 2), readout, MLPHead(16, 2))
    lit = LitGraphClassifier(model, "multiclass", 2, "acc", "MUTAG", optimizer=torch.optim.Adam)
    opt = torch.optim.Adam(model.parameters(), fused=True)  # as configs/optimizer/adam.yaml
    guard = FiniteLossGuard(check_every=25)  # the GPU setting: no read per step

    class Trainer:
        global_step = 3

        class precision_plugin:  # noqa: N801
            scaler = None

    with HostReads() as counter:
        loss = lit.training_step(batch, 0)
        guard._check(Trainer, loss, "the training loss")
        loss.backward()
        guard.on_before_optimizer_step(Trainer, lit, opt)
        opt.step()
    return counter.reads


def test_a_training_step_reads_nothing_back_with_mean_pooling(cfg_factory):
    assert _one_step(PoolReadout(16, 3, reduce="mean"), cfg_factory) == []


def test_histograph_reads_back_once_per_step(cfg_factory):
    """The node attention's block shapes (graph sizes) must be known on the host: one read."""
    assert _one_step(HistographReadout(16, 3, heads=2), cfg_factory) == ["cpu"]


# ---------------------------------------------------------------------- 6. batches on the device
def test_the_cached_loader_keeps_batches_on_the_device(cfg_factory):
    dm = build_datamodule(cfg_factory([]))
    for shuffle in (True, False):
        loader = CachedGraphLoader(dm.subset("train"), 16, shuffle=shuffle, device="meta")
        batch = next(iter(loader))
        assert {t.device.type for t in (batch.x, batch.edge_index, batch.batch, batch.ptr,
                                         batch.y)} == {"meta"}


def test_evaluation_shards_are_not_padded_with_duplicates(cfg_factory):
    dm = build_datamodule(cfg_factory([]))
    graphs = dm.subset("val")  # 17 graphs over 2 ranks: 9 + 8, not 9 + 9
    seen = [torch.cat([b.y for b in CachedGraphLoader(graphs, 4, rank=r, world_size=2)])
            for r in (0, 1)]
    assert [len(s) for s in seen] == [9, 8]


# ---------------------------------------------------------------------- 8. parameter budgets
def test_budget_widths_prefer_head_sizes_of_eight(cfg_factory):
    """4 HISTOGRAPH heads of 8k channels (width a multiple of 32) when that width is within 10%
    of the budget; else the closest multiple of the heads (the budget comes first)."""
    from histograph.nn.budget import count_parameters
    from tests.conftest import build_parts

    widths = {}
    for budget in (125_000, 100_000):
        _, _, net = build_parts(cfg_factory(["model.layers=2", f"task.param_budget={budget}"]))
        widths[budget] = net.record["hidden"]
        assert abs(count_parameters(net.model) - budget) <= 0.1 * budget
    assert widths[125_000] % 32 == 0 and widths[100_000] % 4 == 0, widths


# ---------------------------------------------------------------------- 9, 11, 12. ranks, TF32
def test_the_frozen_cache_is_built_on_this_ranks_gpu(monkeypatch):
    """Under DDP each rank computes its history cache on cuda:<LOCAL_RANK>, not all on cuda:0."""
    from histograph.training.frozen import cache_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert cache_device("gpu") == "cuda:1" and cache_device("auto") == "cuda:1"
    assert cache_device("cpu") == "cpu"


def test_each_process_probes_the_output_folder_with_its_own_file(tmp_path, monkeypatch):
    """Two ranks (or runs) probing one folder never remove each other's probe file."""
    import os

    from histograph import utils

    seen = []
    real_write = type(tmp_path).write_text

    def record(self, *args, **kwargs):
        seen.append(self.name)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "write_text", record)
    utils.prepare_output_dir(tmp_path)
    assert seen == [f".write_test.{os.getpid()}"]


def test_matmul_precision_is_set_on_gpu_runs_only(cfg_factory, tmp_path, monkeypatch):
    """trainer.matmul_precision reaches torch on a CUDA run (TF32 with `high`) and is left alone
    on the CPU."""
    from histograph.train import build_trainer

    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    cfg = cfg_factory(["trainer.accelerator=cpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    build_trainer(cfg, [], [], tmp_path)
    assert calls == []
    cfg = cfg_factory(["trainer.accelerator=gpu"])
    monkeypatch.setattr("histograph.train.instantiate", lambda *a, **k: None)
    build_trainer(cfg, [], [], tmp_path)
    assert calls == ["high"]


def test_node_attention_never_uses_cudnn_attention_on_cuda():
    """cuDNN's attention plans per input shape and the node attention's block shapes change with
    every batch: on an H200 it made HISTOGRAPH 60x slower per readout step in bf16
    (results/gpu/README.md). The readout pins the other kernels on CUDA, and only there."""
    import contextlib

    from torch.nn.attention import SDPBackend

    from histograph.nn.readouts.histograph import NODE_SDPA_BACKENDS, HistographReadout

    readout = HistographReadout(8, 3, heads=2)
    assert SDPBackend.CUDNN_ATTENTION not in NODE_SDPA_BACKENDS
    assert {SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH} <= set(readout.sdpa_backends)
    assert not isinstance(readout._attention_kernels(torch.device("cuda")),
                          contextlib.nullcontext)
    assert isinstance(readout._attention_kernels(torch.device("cpu")), contextlib.nullcontext)
    readout.sdpa_backends = None  # PyTorch's own choice (scripts/bench_attention.py)
    assert isinstance(readout._attention_kernels(torch.device("cuda")), contextlib.nullcontext)
