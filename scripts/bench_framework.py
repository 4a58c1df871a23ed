"""Framework overhead: an epoch of ``train.py`` against a bare PyG training loop.

For each dataset and depth, three variants run side by side in this process, interleaved:

* ``bare``: the textbook PyG loop (as in PyG's ``examples/``):
  ``torch_geometric.loader.DataLoader`` with ``shuffle=True``,
  ``torch.optim.Adam(model.parameters(), lr)`` with its defaults,
  ``zero_grad / forward / cross_entropy / backward / step`` and ``float(loss)`` per batch, the
  StepLR step, then accuracy on the validation and test graphs. Same model (built by
  ``histograph.tasks.graph.build_graph_model`` from the same config and seed), same data (the fold-0
  holdout split of ``GraphDataModule``), same batch sizes (``data.batch_size``,
  ``data.eval_batch_size``).
* ``train.py``: ``histograph.train.run`` on the config ``python train.py`` composes (Hydra +
  Lightning + CSV logging + torchmetrics + checkpoints + history), in-process; an epoch is timed
  from one ``on_train_epoch_start`` to the next, so it includes validation, test evaluation,
  logging and checkpoint writing.
* ``bare+fast``: the bare loop with the framework's fast paths (its data loader and its
  configured optimizer), to separate "framework overhead" from "fast paths".

The first epoch of every run is dropped (warm-up). The arithmetic floor is the matmul FLOPs of
an epoch (training forward + backward, evaluation forward; counted by
``torch.utils.flop_counter.FlopCounterMode``, which counts matmul-like ops only) divided by the
machine's measured fp32 matmul throughput with the same thread count.

    python scripts/bench_framework.py                 # PROTEINS and NCI1, depth 5 and 32
    python scripts/bench_framework.py --quick         # PROTEINS, depth 5
"""

from __future__ import annotations

import argparse
import tempfile

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
import torch
import torch.nn.functional as F
from _bench import (clock, compose, framework_epochs, header, interleave, matmul_gflops,
                    median, set_threads, spread, table)


class BareLoop:
    """A plain PyG training loop over the framework's model and split (see the module doc)."""

    def __init__(self, cfg, dm, fast: bool) -> None:
        from hydra.utils import instantiate
        from torch_geometric.loader import DataLoader

        from histograph.tasks.graph import build_graph_model

        self.cfg, self.dm, self.fast = cfg, dm, fast
        self.build = lambda: build_graph_model(cfg, dm.data)
        if fast:  # the framework's loaders and optimizer
            self.train_loader = dm.train_dataloader()
            self.eval_loaders = dm.val_dataloader()
            self.make_opt = lambda params: instantiate(cfg.optimizer)(params=params)
        else:
            self.train_loader = DataLoader(dm.subset("train"), batch_size=cfg.data.batch_size,
                                           shuffle=True)
            self.eval_loaders = [DataLoader(dm.subset(k), batch_size=cfg.data.eval_batch_size)
                                 for k in dm.eval_splits]
            self.make_opt = lambda params: torch.optim.Adam(params, lr=cfg.optimizer.lr)

    def epochs(self, n: int) -> list[tuple[float, float]]:
        torch.manual_seed(self.cfg.seed)
        model = self.build()
        optimizer = self.make_opt(list(model.parameters()))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
        times = []
        for _ in range(n):
            start = clock()
            self.one_epoch(model, optimizer)
            scheduler.step()
            end = clock()
            times.append((end[0] - start[0], end[1] - start[1]))
        return times[1:]

    def one_epoch(self, model, optimizer) -> tuple[float, list[float]]:
        model.train()
        total_loss, seen = 0.0, 0
        for batch in self.train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(batch), batch.y)
            loss.backward()
            optimizer.step()
            total_loss += float(loss) * batch.num_graphs
            seen += batch.num_graphs
        model.eval()
        accs = []
        with torch.no_grad():
            for loader in self.eval_loaders:
                correct = total = 0
                for batch in loader:
                    correct += int((model(batch).argmax(dim=-1) == batch.y).sum())
                    total += batch.num_graphs
                accs.append(correct / max(total, 1))
        return total_loss / max(seen, 1), accs

    def flops(self) -> int:
        """Matmul FLOPs of one epoch (train forward + backward, evaluation forward)."""
        from torch.utils.flop_counter import FlopCounterMode

        torch.manual_seed(self.cfg.seed)
        model = self.build()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        counter = FlopCounterMode(display=False)
        with counter:
            self.one_epoch(model, optimizer)
        return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["proteins", "nci1"],
                        help="dataset config names (configs/dataset/)")
    parser.add_argument("--depths", nargs="+", type=int, default=[5, 32])
    parser.add_argument("--readout", default="mean", help="readout config name")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (first dropped)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--threads", default="auto", help="'auto' (the framework's rule) or N")
    parser.add_argument("--data-dir", default=None, help="writable data folder (default: "
                                                        "the config's paths.data_dir)")
    parser.add_argument("--quick", action="store_true", help="PROTEINS, depth 5, 2 repeats")
    parser.add_argument("--override", nargs="*", default=[],
                        help="extra Hydra overrides for every run (e.g. data.loader=pyg)")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.depths, args.repeats = ["proteins"], [5], 2
    threads = set_threads(args.threads if args.threads == "auto" else int(args.threads))
    gflops = matmul_gflops()
    print(header("Framework overhead: train.py epoch vs a bare PyG loop", threads,
                 f"readout={args.readout}, hidden 64, batch 32 (eval 128), GIN, holdout fold 0; "
                 f"{args.epochs} epochs per run (first dropped) x {args.repeats} interleaved "
                 f"runs; fp32 matmul throughput {gflops:.1f} GFLOP/s"), flush=True)
    rows = []
    for name in args.datasets:
        for depth in args.depths:
            overrides = [f"dataset={name}", f"model.layers={depth}", f"readout={args.readout}",
                         f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
                         "trainer.accelerator=cpu", "logger=csv", f"threads={threads}",
                         *args.override]
            from histograph.tasks import build_task

            cfg = compose(overrides, output_dir=tempfile.gettempdir(), data_dir=args.data_dir)
            dm = build_task(cfg).datamodule(cfg)
            bare, fast = BareLoop(cfg, dm, fast=False), BareLoop(cfg, dm, fast=True)
            samples = interleave({
                "bare": lambda: bare.epochs(args.epochs),
                "train.py": lambda: framework_epochs(overrides, args.data_dir),
                "bare+fast": lambda: fast.epochs(args.epochs),
            }, args.repeats)
            flops = bare.flops()
            floor = flops / (gflops * 1e9)
            cpu = {k: [c for _, c in v] for k, v in samples.items()}
            wall = {k: [w for w, _ in v] for k, v in samples.items()}
            b, f, t = (median(cpu[k]) for k in ("bare", "train.py", "bare+fast"))
            wb, wf = median(wall["bare"]), median(wall["train.py"])
            rows.append({
                "dataset": dm.data.name, "depth": depth,
                "steps/epoch": len(bare.train_loader),
                "bare s/epoch": b, "train.py s/epoch": f, "train.py / bare": f / b,
                "wall ratio": wf / wb,
                "bare+fast s/epoch": t, "train.py / bare+fast": f / t,
                "GFLOP/epoch": flops / 1e9, "floor s/epoch": floor,
                "train.py / floor": f / floor,
                "epochs timed": len(cpu["train.py"]),
                "spread bare": spread(cpu["bare"]), "spread train.py": spread(cpu["train.py"]),
            })
            print(f"  {dm.data.name} depth {depth}: bare {b:.3f} s, train.py {f:.3f} s "
                  f"({f / b:.2f}x; wall {wb:.3f} vs {wf:.3f} s), bare+fast {t:.3f} s; "
                  f"floor {floor:.3f} s", flush=True)
    print()
    print(table(rows, ["dataset", "depth", "steps/epoch", "bare s/epoch", "train.py s/epoch",
                       "train.py / bare", "wall ratio", "bare+fast s/epoch",
                       "train.py / bare+fast", "GFLOP/epoch", "floor s/epoch",
                       "train.py / floor", "epochs timed", "spread bare", "spread train.py"]))
    print("\ns/epoch: median CPU seconds of this process per epoch (robust to other jobs on a "
          "shared machine; with one thread it equals the wall time of an idle machine); "
          "'wall ratio': the same ratio on wall-clock medians; ratios < 1: train.py is faster; "
          "spread: min–max CPU s over all timed epochs.")


if __name__ == "__main__":
    main()
