"""GPU check: training steps per second and peak memory on CUDA, bf16 autocast off and on.

The matrix of the CPU benchmarks, on a GPU: GIN + readout (mean, histograph, gmt) + MLP head,
one full training step (forward, loss, backward, optimizer) per batch, at depths 2, 8, 32, 64 on
batches whose graph sizes follow MUTAG / PROTEINS / DD / REDDIT-BINARY (18, 39, 284, 430 nodes on
average; heavy-tailed log-normal sizes, average degree 4, 32 and 128 graphs per batch), with
``torch.autocast("cuda", dtype=torch.bfloat16)`` off and on (as ``trainer.precision=bf16-mixed``
does). The graphs are synthetic so that the script needs no dataset on the GPU machine; batches
are built once and live on the device (as the cached loader's would after the first transfer).

Without CUDA it says so and exits 0; ``--device cpu`` runs the same code on the CPU (a smoke
test of the script, not a GPU figure).

    python scripts/gpu_check.py                 # full matrix on cuda
    python scripts/gpu_check.py --quick         # PROTEINS and DD sizes, depth 2 and 32, batch 32
"""

from __future__ import annotations

import argparse
import json
import math
import time

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
import torch
import torch.nn.functional as F
from _bench import compose, matmul_gflops, median, table

SIZES = {"MUTAG": 17.9, "PROTEINS": 39.1, "DD": 284.3, "REDDIT": 429.6}


def synthetic_batch(mean_nodes: float, graphs: int, seed: int, device: str,
                    features: int = 8):
    """A PyG ``Batch`` of ``graphs`` random graphs, sizes log-normal around ``mean_nodes``."""
    from torch_geometric.data import Batch, Data

    gen = torch.Generator().manual_seed(seed)
    sigma = 0.6  # heavy tail like the TU sets (max/mean ~ 10-20)
    mu = math.log(mean_nodes) - sigma ** 2 / 2
    sizes = torch.exp(mu + sigma * torch.randn(graphs, generator=gen)).round().clamp(min=2).long()
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    edges = 2 * sizes  # average degree 4 (both directions)
    owner = torch.repeat_interleave(torch.arange(graphs), edges)
    src = ptr[owner] + (torch.rand(len(owner), generator=gen) * sizes[owner]).long()
    dst = ptr[owner] + (torch.rand(len(owner), generator=gen) * sizes[owner]).long()
    n = int(ptr[-1])
    batch = Batch(_base_cls=Data)
    batch.x = torch.randn(n, features, generator=gen)
    batch.edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    batch.y = torch.randint(0, 2, (graphs,), generator=gen)
    batch.batch = torch.repeat_interleave(torch.arange(graphs), sizes)
    batch.ptr = ptr
    batch._num_graphs = graphs
    return batch.to(device)


def build(readout: str, layers: int, device: str):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from histograph.tasks.graph import build_graph_model

    cfg = compose([f"readout={readout}", f"model.layers={layers}"])
    torch.manual_seed(0)
    model = build_graph_model(cfg, SimpleNamespace(num_features=8, num_outputs=2, edge_dim=None,
                                                   encoder="linear"))
    model = model.to(device).train()
    return model, instantiate(cfg.optimizer)(params=model.parameters())


def measure(model, opt, batches, device: str, bf16: bool, steps: int) -> tuple[float, float]:
    """(steps per second, peak MB of one step)."""
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(b):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(b), b.y)
        loss.backward()
        opt.step()

    for b in batches:  # warm-up (kernel selection, allocator)
        step(b)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start, done = time.perf_counter(), 0
    while done < steps:
        step(batches[done % len(batches)])
        done += 1
    sync()
    rate = done / (time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20 if cuda else float("nan")
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--readouts", nargs="+", default=["mean", "histograph", "gmt"])
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 8, 32, 64])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per cell")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per cell")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.depths, args.batch_sizes = ["PROTEINS", "DD"], [2, 32], [32]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (use --device cpu for a smoke "
              "test of the script).")
        return
    name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
            else "cpu")
    print(f"## GPU check on {name}; torch {torch.__version__}; fp32 matmul "
          f"{matmul_gflops(4096 if args.device != 'cpu' else 512, device=args.device):.0f} "
          f"GFLOP/s; bf16 supported: "
          f"{torch.cuda.is_bf16_supported() if args.device != 'cpu' else 'cpu'}", flush=True)
    rows = []
    for size in args.sizes:
        for graphs in args.batch_sizes:
            batches = [synthetic_batch(SIZES[size], graphs, seed, args.device)
                       for seed in range(4)]
            for depth in args.depths:
                row = {"sizes": size, "batch": graphs, "layers": depth,
                       "nodes/batch": int(median([b.num_nodes for b in batches]))}
                for readout in args.readouts:
                    try:
                        model, opt = build(readout, depth, args.device)
                        samples = {bf: [] for bf in (False, True)}
                        for _ in range(args.repeats):
                            for bf in (False, True):
                                samples[bf].append(measure(model, opt, batches, args.device,
                                                           bf, args.steps))
                        for bf, tag in ((False, "fp32"), (True, "bf16")):
                            row[f"{readout} {tag} steps/s"] = median(r for r, _ in samples[bf])
                            row[f"{readout} {tag} MB"] = max(m for _, m in samples[bf])
                    except torch.OutOfMemoryError:
                        row[f"{readout} fp32 steps/s"] = "OOM"
                    finally:
                        if args.device.startswith("cuda"):
                            torch.cuda.empty_cache()
                rows.append(row)
                print("  " + json.dumps(row), flush=True)
    cols = ["sizes", "batch", "layers", "nodes/batch"] + [
        f"{r} {t} {u}" for r in args.readouts for t in ("fp32", "bf16") for u in ("steps/s", "MB")]
    print(table(rows, cols))
    if args.json:
        from histograph.utils import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
