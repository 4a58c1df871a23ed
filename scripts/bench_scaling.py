"""Scaling: training-step time and peak memory against depth and against graph size.

* **Depth**: GIN with ``L`` message-passing layers (history of ``L + 1`` entries) + mean or
  HISTOGRAPH readout + head, one full training step (forward, loss, backward, optimizer) on real
  PROTEINS batches (batch 32, the framework's cached loader), for ``L`` = 1 ... 128. Both the
  backbone and HISTOGRAPH's stage 1 are linear in ``L``, so the step time should be too: the
  script fits ``time = a + b * L`` by least squares and reports the slope ``b`` (ms per layer),
  R^2, and the largest relative deviation of a measured point from the line.
* **Graph size**: GIN-5 + mean / HISTOGRAPH on random graphs of a fixed size per batch (18, 39,
  100, 284, 430 nodes, the MUTAG ... REDDIT-BINARY range; average degree 4, 32 graphs per batch).
  The backbone and stage 1 grow with ``N``, HISTOGRAPH's node attention with ``N^2`` per graph.

Times are CPU seconds of this process per step (medians of interleaved repeats); peak memory is
the peak of tensor storage allocated during one step (``_bench.peak_tensor_bytes``).

    python scripts/bench_scaling.py
    python scripts/bench_scaling.py --quick      # L up to 32, sizes 18/39/100
"""

from __future__ import annotations

import argparse
import tempfile

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
import numpy as np
import torch
import torch.nn.functional as F
from _bench import clock, compose, header, median, peak_tensor_bytes, set_threads, table


def build(readout: str, layers: int, in_channels: int, out_channels: int, data_dir=None):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from histograph.tasks.graph import build_graph_model

    cfg = compose([f"readout={readout}", f"model.layers={layers}"],
                  output_dir=tempfile.gettempdir(), data_dir=data_dir)
    torch.manual_seed(0)
    data = SimpleNamespace(num_features=in_channels, num_outputs=out_channels, edge_dim=None,
                           encoder="linear")
    model = build_graph_model(cfg, data).train()
    return model, instantiate(cfg.optimizer)(params=model.parameters())


def step_fn(model, opt, batch):
    def step():
        opt.zero_grad()
        F.cross_entropy(model(batch), batch.y).backward()
        opt.step()
    return step


def measure(variants: dict, batches: list, repeats: int) -> tuple[dict, dict]:
    """Median CPU ms per step and peak MB of each (model, opt) variant, interleaved."""
    times = {k: [] for k in variants}
    for model, opt in variants.values():  # warm-up
        step_fn(model, opt, batches[0])()
    for _ in range(repeats):
        for key, (model, opt) in variants.items():
            start = clock()
            for b in batches:
                step_fn(model, opt, b)()
            times[key].append((clock()[1] - start[1]) / len(batches) * 1e3)
    mem = {k: peak_tensor_bytes(step_fn(m, o, batches[0])) / 2 ** 20
           for k, (m, o) in variants.items()}
    return {k: median(v) for k, v in times.items()}, mem


def fit_line(xs: list[float], ys: list[float], from_x: float = 8
             ) -> tuple[float, float, float, float]:
    """Least-squares ``y = a + b x``: (a, b, R^2, max |relative residual| over ``x >= from_x``,
    where the linear part dominates the fixed per-step cost)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    tail = x >= from_x
    dev = float(np.max(np.abs(y - pred)[tail] / y[tail])) if tail.any() else float("nan")
    return a, b, r2, dev


def depth_table(args) -> None:
    from histograph.tasks import build_task

    cfg = compose(["dataset=proteins"], output_dir=tempfile.gettempdir(), data_dir=args.data_dir)
    dm = build_task(cfg).datamodule(cfg)
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(args.batches), loader)]
    rows, series = [], {r: [] for r in args.readouts}
    for L in args.depths:
        variants = {r: build(r, L, dm.data.num_features, dm.data.num_outputs, args.data_dir)
                    for r in args.readouts}
        t, m = measure(variants, batches, args.repeats)
        row = {"L": L}
        for r in args.readouts:
            row[f"{r} ms/step"], row[f"{r} MB"] = t[r], m[r]
            series[r].append(t[r])
        if "mean" in t and "histograph" in t:
            row["histograph / mean"] = t["histograph"] / t["mean"]
        rows.append(row)
        print("  " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()), flush=True)
    cols = ["L"] + [f"{r} {u}" for r in args.readouts for u in ("ms/step", "MB")]
    print(table(rows, cols + (["histograph / mean"] if "histograph / mean" in rows[0] else [])))
    for r in args.readouts:
        a, b, r2, dev = fit_line(args.depths, series[r])
        _, bm, r2m, _ = fit_line(args.depths, [row[f"{r} MB"] for row in rows])
        print(f"{r}: step time = {a:.2f} ms + {b:.3f} ms x L (R^2 {r2:.4f}, largest deviation "
              f"from the line at L >= 8: {100 * dev:.0f}%); peak memory slope {bm:.2f} MB per "
              f"L (R^2 {r2m:.4f})")


def size_table(args) -> None:
    from torch_geometric.data import Batch
    from torch_geometric.datasets import FakeDataset

    rows = []
    for n in args.sizes:
        gen_state = torch.get_rng_state()
        torch.manual_seed(n)
        graphs = FakeDataset(num_graphs=32 * args.batches, avg_num_nodes=n, avg_degree=4,
                             num_channels=8, num_classes=2, task="graph")
        torch.set_rng_state(gen_state)
        # FakeDataset draws sizes around the average: pin every graph to exactly n nodes
        batches = [Batch.from_data_list([_resize(graphs[i], n) for i in range(k, k + 32)])
                   for k in range(0, 32 * args.batches, 32)]
        variants = {r: build(r, 5, 8, 2, args.data_dir) for r in args.readouts}
        t, m = measure(variants, batches, args.repeats)
        row = {"nodes/graph": n, "nodes/batch": 32 * n}
        for r in args.readouts:
            row[f"{r} ms/step"], row[f"{r} MB"] = t[r], m[r]
        if "mean" in t and "histograph" in t:
            row["histograph / mean"] = t["histograph"] / t["mean"]
        rows.append(row)
        print("  " + ", ".join(f"{k}={v:.3g}" for k, v in row.items()), flush=True)
    cols = ["nodes/graph", "nodes/batch"] + [f"{r} {u}" for r in args.readouts
                                             for u in ("ms/step", "MB")]
    print(table(rows, cols + (["histograph / mean"] if "histograph / mean" in rows[0] else [])))


def _resize(data, n: int):
    """The graph restricted to (or grown to) exactly ``n`` nodes (edges among them kept)."""
    from torch_geometric.utils import subgraph

    if data.num_nodes >= n:
        edge_index, _ = subgraph(torch.arange(n), data.edge_index, num_nodes=data.num_nodes)
        x = data.x[:n]
    else:
        edge_index, pad = data.edge_index, n - data.num_nodes
        x = torch.cat([data.x, torch.randn(pad, data.x.size(1))])
    out = data.clone()
    out.x, out.edge_index, out.num_nodes = x, edge_index, n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", nargs="+", type=int,
                        default=[1, 2, 4, 8, 16, 32, 48, 64, 96, 128],
                        help="message-passing layers L (history of L + 1 entries)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[18, 39, 100, 284, 430])
    parser.add_argument("--readouts", nargs="+", default=["mean", "histograph"])
    parser.add_argument("--batches", type=int, default=3, help="batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tables", nargs="+", default=["depth", "size"],
                        choices=["depth", "size"])
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.depths, args.sizes, args.repeats = [1, 2, 4, 8, 16, 32], [18, 39, 100], 2
    threads = set_threads(args.threads if args.threads == "auto" else int(args.threads))
    print(header("Scaling: step time and peak memory", threads,
                 "GIN (hidden 64) + readout + MLP head, batch 32, one optimizer step per batch; "
                 "CPU ms per step (medians of interleaved repeats), peak tensor MB of one step"),
          flush=True)
    if "depth" in args.tables:
        print("\n### Against depth (PROTEINS batches)", flush=True)
        depth_table(args)
    if "size" in args.tables:
        print("\n### Against graph size (random graphs, GIN-5)", flush=True)
        size_table(args)


if __name__ == "__main__":
    main()
