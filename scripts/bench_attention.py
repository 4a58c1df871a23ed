"""HISTOGRAPH's node attention by precision and attention kernel: why bf16 was slow on a GPU.

The first GPU run of ``scripts/gpu_check.py`` (H200, torch 2.11) trained HISTOGRAPH up to 27x
slower in bf16-mixed than in fp32, with mean pooling equally fast in both. This script times the
readout alone (forward + backward, hidden 64, ``L`` history entries) on batches whose graph sizes
are drawn from a TU dataset's raw files, for fp32 and bf16 autocast under each set of
``scaled_dot_product_attention`` kernels:

* ``default``: what PyTorch picks (on Hopper, for bf16, it may pick cuDNN's attention);
* ``no_cudnn``: flash, memory-efficient and math (what the readout pins on CUDA, see
  ``histograph.nn.readouts.histograph.NODE_SDPA_BACKENDS``);
* ``efficient`` and ``math`` alone; ``cudnn`` alone (where it runs).

Every batch is new to the timed pass (the warm-up pass uses other batches), because block shapes
change with every training batch and a kernel that plans per shape pays that cost every step.
``--profile`` adds ``torch.profiler``'s top operators of one variant.

    python scripts/bench_attention.py --device cuda --profile bf16:default    # on a GPU
    python scripts/bench_attention.py --device cpu --batches 4                # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import _bench  # noqa: F401  (sets sys.path and the offline environment first)
import numpy as np
import torch
from bench_readout import DATASETS, HIDDEN, graph_sizes
from torch.nn.attention import SDPBackend, sdpa_kernel

from histograph.nn.readouts.histograph import NODE_SDPA_BACKENDS, HistographReadout

B = SDPBackend
KERNELS = {
    "default": None,
    "no_cudnn": NODE_SDPA_BACKENDS,  # what the readout pins on CUDA
    "efficient": [B.EFFICIENT_ATTENTION],
    "math": [B.MATH],
    "cudnn": [B.CUDNN_ATTENTION],
}


def batches(sizes: np.ndarray, count: int, batch_size: int, seed: int, L: int, device: str):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        drawn = rng.choice(sizes, size=batch_size, replace=False)
        batch = torch.repeat_interleave(torch.arange(batch_size), torch.as_tensor(drawn))
        xs = [torch.randn(len(batch), HIDDEN, generator=gen).to(device).requires_grad_()
              for _ in range(L)]
        out.append((xs, batch.to(device)))
    return out


def run(module, data, precision: str, kernels, device: str, quiet: bool = False) -> float:
    """Seconds per batch (forward + backward), synchronised; ``nan`` when the kernel refuses."""
    ctx = sdpa_kernel(kernels) if kernels is not None else contextlib.nullcontext()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    try:  # a refused kernel set raises (reported below); its warnings would only repeat it
        with ctx, warnings.catch_warnings(), torch.autocast(
                device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            warnings.simplefilter("ignore")
            for xs, batch in data:
                out = module(xs, batch, int(batch[-1]) + 1)
                out = out[0] if isinstance(out, tuple) else out
                out.float().sum().backward()
        sync()
    except RuntimeError as exc:  # a kernel set that cannot run this input
        if not quiet:
            print(f"    ({precision}, {[k.name for k in kernels]}): cannot run here "
                  f"({str(exc).splitlines()[0][:80]})")
        return float("nan")
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--datasets", nargs="+", default=["PROTEINS", "REDDIT"],
                        choices=sorted(DATASETS))
    parser.add_argument("--batch-size", type=int, default=32, help="configs/data/graph.yaml's")
    parser.add_argument("--layers", type=int, default=6, help="history entries L (GIN-5: 6)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    parser.add_argument("--profile", default=None, metavar="PRECISION:KERNELS",
                        help="print the profiler's top operators of this variant, e.g. "
                             "bf16:default")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    print(f"# node attention: torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu'}, batch "
          f"{args.batch_size}, L={args.layers}, hidden {HIDDEN}, {args.batches} new batches per "
          f"variant; ms per batch (forward + backward)\n")
    print("| sizes | precision | " + " | ".join(args.kernels) + " |")
    print("|---|---|" + "---|" * len(args.kernels))
    for label in args.datasets:
        sizes = graph_sizes(DATASETS[label], args.data_dir)
        torch.manual_seed(0)
        module = HistographReadout(HIDDEN, args.layers).to(args.device)
        module.sdpa_backends = None  # the kernels set here, not the readout's pinned ones
        seed = 1
        for precision in ("fp32", "bf16"):
            cells = []
            for name in args.kernels:
                warm = batches(sizes, 3, args.batch_size, 10_000 + seed, args.layers, args.device)
                run(module, warm, precision, KERNELS[name], args.device, quiet=True)
                data = batches(sizes, args.batches, args.batch_size, seed, args.layers,
                               args.device)
                seed += 1
                cells.append(1e3 * run(module, data, precision, KERNELS[name], args.device))
            print(f"| {label} | {precision} | " + " | ".join(f"{c:.2f}" for c in cells) + " |",
                  flush=True)
    if args.profile:
        precision, name = args.profile.split(":")
        sizes = graph_sizes(DATASETS[args.datasets[0]], args.data_dir)
        module = HistographReadout(HIDDEN, args.layers).to(args.device)
        module.sdpa_backends = None
        data = batches(sizes, 5, args.batch_size, 99, args.layers, args.device)
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            run(module, data, precision, KERNELS[name], args.device)
        key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
        print(f"\n# profile of {args.profile} on {args.datasets[0]} ({len(data)} batches)\n")
        print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
