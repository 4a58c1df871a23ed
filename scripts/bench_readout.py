"""Readout benchmark: HISTOGRAPH against the other readouts, measured side by side.

Three tables, every variant of a table measured in the same process with interleaved repeats:

1. **Readout alone**: forward + backward time (CPU seconds of this process, median over
   repeats) and peak tensor memory of ``mean``, ``attention``, ``set2set``, ``gmt``,
   ``jk_lstm`` and ``histograph`` (each built from its ``configs/readout/*.yaml``, hidden 64) on
   random histories of ``L`` entries, for batches whose graph sizes are drawn from MUTAG (18
   nodes on average), PROTEINS (39), DD (284) and REDDIT-BINARY (430), batch 32 and 128;
   printed as ratios to mean pooling. Cells above ``--max-node-layers`` (nodes x L of a batch)
   are skipped and listed.
2. **Training step on PROTEINS at depth 5**: GIN-5 + readout + MLP head, loss, backward and the
   configured optimizer step on real PROTEINS batches (the framework's cached loader), per
   readout, as ratios to mean pooling. Goals: histograph <= 1.25x mean, histograph <= gmt.
3. **Frozen mode at depth 32** (PROTEINS): a head-only epoch of ``mode=frozen`` (HISTOGRAPH on
   the cached histories of a trained GIN-32) against an end-to-end HISTOGRAPH epoch, both through
   ``histograph.train.run``. Goal: frozen >= 10x faster.

    python scripts/bench_readout.py                  # everything (about 10-20 minutes on 2 cores)
    python scripts/bench_readout.py --quick          # PROTEINS sizes, L in {2, 8}, batch 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
import numpy as np
import torch
import torch.nn.functional as F
from _bench import (clock, compose, framework_epochs, header, matmul_gflops, median,
                    peak_tensor_bytes, set_threads, table)

READOUTS = ["mean", "attention", "set2set", "gmt", "jk_lstm", "histograph"]
DATASETS = {"MUTAG": "MUTAG", "PROTEINS": "PROTEINS", "DD": "DD", "REDDIT": "REDDIT-BINARY"}
HIDDEN = 64


def graph_sizes(name: str, data_dir: str | None) -> np.ndarray:
    """Nodes per graph of TU dataset ``name``, read from its raw ``graph_indicator`` file."""
    roots = [os.environ.get("HISTOGRAPH_DATA_MIRROR"), data_dir, str(_bench.ROOT / "data")]
    for root in roots:
        if not root:
            continue
        path = Path(root) / "TUDataset" / name / "raw" / f"{name}_graph_indicator.txt"
        if path.exists():
            ids = np.loadtxt(path, dtype=np.int64)
            return np.bincount(ids - ids.min())
    raise SystemExit(f"error: no raw files of {name} found; set HISTOGRAPH_DATA_MIRROR to a "
                     f"folder with TUDataset/{name}/raw.")


def as_readout(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` as the readout contract wants it: a readout of an older revision (a plain
    module returning the embeddings) is wrapped so ``return_layer_weights`` is accepted."""
    from histograph.nn.readouts.base import Readout

    if isinstance(module, Readout):
        return module

    class Legacy(Readout):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__(inner.in_channels, inner.history_len, inner.out_channels)
            self.inner = inner

        def forward(self, history, batch, num_graphs):
            return self.inner(history, batch, num_graphs)

    return Legacy(module)


def readout_factory(name: str):
    """``(in_channels, history_len) -> module`` for a readout config name, or for
    ``histograph@<git revision>``: the HISTOGRAPH readout as that commit wrote it (read with
    ``git show``, default options), to measure a change side by side with the working tree."""
    from hydra.utils import instantiate

    if "@" not in name:
        return instantiate(compose([f"readout={name}"]).readout)
    import subprocess
    import types

    base, rev = name.split("@", 1)
    if base != "histograph":
        raise SystemExit(f"error: only histograph@<revision> is supported, got {name!r}")
    try:
        source = subprocess.run(["git", "show", f"{rev}:histograph/nn/readouts/histograph.py"],
                                cwd=_bench.ROOT, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"error: cannot read the readout at revision {rev!r} ({exc})")
    module = types.ModuleType(f"histograph_at_{rev}")
    exec(compile(source, f"histograph@{rev}", "exec"), module.__dict__)  # noqa: S102
    return lambda in_channels, history_len: module.HistographReadout(in_channels, history_len)


def build_readout(name: str, history_len: int) -> torch.nn.Module:
    return readout_factory(name)(in_channels=HIDDEN, history_len=history_len)


def too_costly(readout: str, drawn: list[np.ndarray], L: int, skipped: list[str], label: str,
               batch_size: int, max_gflop: float) -> bool:
    """Skip cells that would take minutes or tens of GB on a small machine, and say why.

    PyG's JK-LSTM runs a bi-LSTM with ``L * D / 2`` hidden units over the ``L`` entries of every
    node (its cost grows with ``L^3``); GMT pads every graph of the batch to the largest one
    (``B x M x D``; its first pooling attends from ``k`` seeds to the ``M`` nodes, linear in
    ``M``), which only matters for batches with one huge graph.
    """
    nodes = float(np.mean([s.sum() for s in drawn]))
    if readout == "jk_lstm":
        hidden = (L - 1) * HIDDEN // 2
        gflop = 6 * 2 * nodes * (L - 1) * 4 * hidden * (HIDDEN + hidden) * 2 / 1e9
        if gflop > max_gflop:
            skipped.append(f"jk_lstm, {label} batch {batch_size} L={L}: ~{gflop:.0f} GFLOP per "
                           f"step (bi-LSTM with {hidden} hidden units) > --max-gflop {max_gflop}")
            return True
    if readout == "gmt":
        padded = max(len(s) * float(s.max()) for s in drawn) * max(HIDDEN, 16 * 4) * 4
        if padded * 12 > 8e9:  # the padded block and the temporaries of its attention
            skipped.append(f"gmt, {label} batch {batch_size}: padded block of "
                           f"{padded / 2 ** 30:.1f} GiB (every graph padded to the largest, "
                           f"{int(max(s.max() for s in drawn))} nodes)")
            return True
    return False


def readout_table(args, rows: list[dict], skipped: list[str]) -> None:
    for label in args.datasets:
        sizes = graph_sizes(DATASETS[label], args.data_dir)
        for batch_size in args.batch_sizes:
            rng = np.random.default_rng(0)
            drawn = [rng.choice(sizes, size=batch_size, replace=False)
                     for _ in range(args.batches)]
            batches = [torch.repeat_interleave(torch.arange(batch_size), torch.as_tensor(s))
                       for s in drawn]
            nodes = int(np.mean([len(b) for b in batches]))
            for L in args.layers:
                if nodes * L > args.max_node_layers:
                    skipped.append(f"{label} batch {batch_size} L={L} ({nodes} nodes x {L} "
                                   f"entries > --max-node-layers {args.max_node_layers})")
                    continue
                readouts = [r for r in args.readouts if not too_costly(r, drawn, L, skipped,
                                                                         label, batch_size,
                                                                         args.max_gflop)]
                gen = torch.Generator().manual_seed(1)
                histories = [[torch.randn(len(b), HIDDEN, generator=gen).requires_grad_()
                              for _ in range(L)] for b in batches]
                torch.manual_seed(0)
                modules = {r: build_readout(r, L) for r in readouts}

                def step(mod, k):
                    out = mod(histories[k], batches[k], batch_size)
                    out.float().sum().backward()

                times: dict[str, list[float]] = {r: [] for r in readouts}
                for r in readouts:  # warm-up
                    step(modules[r], 0)
                for _ in range(args.repeats):
                    for r in readouts:
                        start = clock()
                        for k in range(len(batches)):
                            step(modules[r], k)
                        times[r].append((clock()[1] - start[1]) / len(batches))
                row = {"sizes": label, "batch": batch_size, "nodes": nodes, "L": L}
                base_t = median(times["mean"]) if "mean" in times else None
                base_m = None
                for r in readouts:
                    t = median(times[r])
                    mem = peak_tensor_bytes(lambda: step(modules[r], 0)) / 2 ** 20
                    if r == "mean":
                        base_m = mem
                    row[f"{r} ms"] = 1e3 * t
                    row[f"{r} MB"] = mem
                    if base_t:
                        row[f"{r} x"] = t / base_t
                    if base_m:
                        row[f"{r} mem x"] = mem / base_m
                rows.append(row)
                print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items()), flush=True)


def training_step_table(args) -> list[dict]:
    """Full training steps (fwd, loss, bwd, optimizer) of GIN-5 + each readout on PROTEINS."""
    from hydra.utils import instantiate

    from histograph.nn.model import GraphClassifier
    from histograph.tasks import build_task
    from histograph.tasks.graph import build_graph_model

    cfg = compose(["dataset=proteins", "model.layers=5"], output_dir=tempfile.gettempdir(),
                  data_dir=args.data_dir)
    dm = build_task(cfg).datamodule(cfg)
    data = dm.data
    batches = list(dm.train_dataloader())
    models, opts = {}, {}
    for r in args.readouts:
        rc = compose(["dataset=proteins", "model.layers=5", f"readout={r.split('@')[0]}"],
                     output_dir=tempfile.gettempdir(), data_dir=args.data_dir)
        torch.manual_seed(0)
        net = build_graph_model(rc, data)  # backbone and head; the readout as the name says
        readout = as_readout(readout_factory(r)(in_channels=net.backbone.hidden_channels,
                                                history_len=net.backbone.num_layers + 1))
        models[r] = GraphClassifier(net.backbone, readout, net.head).train()
        opts[r] = instantiate(rc.optimizer)(params=models[r].parameters())

    def epoch(r: str) -> float:
        model, opt = models[r], opts[r]
        start = clock()
        for b in batches:
            opt.zero_grad()
            F.cross_entropy(model(b), b.y).backward()
            opt.step()
        return (clock()[1] - start[1]) / len(batches)

    times: dict[str, list[float]] = {r: [] for r in args.readouts}
    for r in args.readouts:
        epoch(r)  # warm-up
    for _ in range(args.repeats):
        for r in args.readouts:
            times[r].append(epoch(r))
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for r in args.readouts:  # matmul FLOPs (forward + backward) of the first batch's step
        counter = FlopCounterMode(display=False)
        with counter:
            models[r].zero_grad()
            F.cross_entropy(models[r](batches[0]), batches[0].y).backward()
        flops[r] = counter.get_total_flops()
    gflops = matmul_gflops()
    base, base_flops = median(times["mean"]), flops["mean"]
    rows = [{"readout": r, "ms/step": 1e3 * median(times[r]),
             "x mean": median(times[r]) / base, "MFLOP/step": flops[r] / 1e6,
             "FLOP x mean": flops[r] / base_flops,
             "floor ms": 1e3 * flops[r] / (gflops * 1e9)} for r in args.readouts]
    print(f"(matmul FLOPs of one step counted by FlopCounterMode on the first batch, "
          f"{batches[0].num_nodes} nodes; floor = FLOPs / {gflops:.0f} GFLOP/s measured fp32 "
          f"matmul throughput)")
    return rows


def frozen_table(args) -> list[dict]:
    """Head-only (frozen) epoch vs end-to-end epoch of HISTOGRAPH at depth 32 on PROTEINS."""
    base = ["dataset=proteins", "model.layers=32", "readout=histograph",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=csv",
            f"threads={torch.get_num_threads()}"]
    folder = Path(tempfile.mkdtemp(prefix="bench_frozen_"))
    try:
        e2e = framework_epochs(base + [f"trainer.max_epochs={args.frozen_epochs}"],
                               args.data_dir, output_dir=folder / "e2e")
        ckpt = folder / "e2e" / "checkpoints" / "last.ckpt"
        frozen = framework_epochs(base + [f"trainer.max_epochs={args.frozen_epochs + 1}",
                                          "mode=frozen", f"backbone_ckpt={ckpt}"],
                                  args.data_dir, output_dir=folder / "frozen")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    e, f = median(c for _, c in e2e), median(c for _, c in frozen)
    return [{"mode": "end-to-end (GIN-32 + histograph)", "s/epoch": e, "speed-up": 1.0,
             "epochs timed": len(e2e)},
            {"mode": "frozen (histograph head on cached history)", "s/epoch": f,
             "speed-up": e / f, "epochs timed": len(frozen)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 8, 32, 64],
                        help="history lengths L")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--readouts", nargs="+", default=READOUTS,
                        help="readout config names; histograph@<git rev> adds that commit's "
                             "HISTOGRAPH readout (e.g. histograph@288ba89, before the speed work)")
    parser.add_argument("--batches", type=int, default=3, help="batches drawn per cell")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--max-node-layers", type=int, default=1_000_000,
                        help="skip readout cells whose batch has more nodes x L than this")
    parser.add_argument("--max-gflop", type=float, default=100.0,
                        help="skip readout cells estimated above this many GFLOP per step")
    parser.add_argument("--frozen-epochs", type=int, default=3)
    parser.add_argument("--tables", nargs="+", default=["readout", "step", "frozen"],
                        choices=["readout", "step", "frozen"])
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true",
                        help="PROTEINS sizes, L in {2, 8}, batch 32, 2 repeats; no frozen table")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.layers, args.batch_sizes, args.repeats = ["PROTEINS"], [2, 8], [32], 2
        args.tables = [t for t in args.tables if t != "frozen"]
    if "mean" not in args.readouts:
        args.readouts = ["mean", *args.readouts]
    threads = set_threads(args.threads if args.threads == "auto" else int(args.threads))
    print(header("Readout benchmark", threads,
                 "hidden 64; times are CPU seconds of this process (medians of interleaved "
                 "repeats); 'x' = ratio to mean pooling in the same cell"), flush=True)
    if "readout" in args.tables:
        rows: list[dict] = []
        skipped: list[str] = []
        print("\n### Readout alone: forward + backward on random histories", flush=True)
        readout_table(args, rows, skipped)
        cols = ["sizes", "batch", "nodes", "L"] + [f"{r} x" for r in args.readouts[1:]] + [
            "mean ms", "histograph ms"]
        print(table(rows, cols))
        print("\nms and peak tensor memory (MB) per readout:")
        print(table(rows, ["sizes", "batch", "L"] + [f"{r} {u}" for r in args.readouts
                                                      for u in ("ms", "MB")]))
        for s in dict.fromkeys(skipped):  # once each, in order
            print(f"skipped: {s}")
    if "step" in args.tables:
        print("\n### Training step, GIN-5 + readout + head on PROTEINS (batch 32, fwd + bwd + "
              "optimizer)", flush=True)
        rows = training_step_table(args)
        print(table(rows, ["readout", "ms/step", "x mean", "MFLOP/step", "FLOP x mean",
                           "floor ms"]))
        hist = next((r for r in rows if r["readout"] == "histograph"), None)
        gmt = next((r for r in rows if r["readout"] == "gmt"), None)
        if hist:
            print(f"goal histograph <= 1.25x mean: {hist['x mean']:.2f}x -> "
                  f"{'met' if hist['x mean'] <= 1.25 else 'missed'}")
            if gmt:
                print(f"goal histograph <= gmt: {hist['ms/step']:.1f} vs {gmt['ms/step']:.1f} "
                      f"ms -> {'met' if hist['ms/step'] <= gmt['ms/step'] else 'missed'}")
    if "frozen" in args.tables:
        print("\n### Frozen mode vs end-to-end, HISTOGRAPH on GIN-32, PROTEINS "
              "(train.py epochs incl. validation)", flush=True)
        rows = frozen_table(args)
        print(table(rows, ["mode", "s/epoch", "speed-up", "epochs timed"]))
        print(f"goal frozen >= 10x faster: {rows[1]['speed-up']:.1f}x -> "
              f"{'met' if rows[1]['speed-up'] >= 10 else 'missed'}")


if __name__ == "__main__":
    main()
