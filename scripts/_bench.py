"""Helpers shared by the ``scripts/bench_*.py`` benchmarks (not part of the package).

Every benchmark measures its variants side by side in one process, interleaves the repeats
(variant A, B, C, A, B, C, ...) so that load changes on a shared machine hit all of them alike,
reports medians, and prints the thread count it ran with.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

os.environ.setdefault("OUTDATED_IGNORE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HISTOGRAPH_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
_SHARED = ROOT.parent / "shared" / "data"
if not os.environ.get("HISTOGRAPH_DATA_MIRROR") and (_SHARED / "TUDataset").is_dir():
    os.environ["HISTOGRAPH_DATA_MIRROR"] = str(_SHARED)

import torch  # noqa: E402


def set_threads(threads: int | str | None) -> int:
    """Apply the framework's thread rule (``auto``: 1 on <= 4 cores) and return the count used."""
    from histograph.utils import resolve_threads

    n = resolve_threads(threads)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def header(title: str, threads: int, extra: str = "") -> str:
    """One block naming the benchmark, the machine, the versions and the thread count."""
    import torch_geometric

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    lines = [f"## {title}",
             f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, "
             f"torch_geometric {torch_geometric.__version__}, python {platform.python_version()}",
             f"torch intra-op threads used: {threads} (OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); "
             f"cuda: {torch.cuda.is_available()}"]
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """``min–max`` of a sample, for the noise column."""
    return f"{min(xs):.3g}–{max(xs):.3g}" if xs else "-"


def table(rows: list[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with the given column order."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def matmul_gflops(n: int = 512, seconds: float = 0.3, trials: int = 5, dtype=torch.float32,
                  device: str = "cpu") -> float:
    """Measured dense ``n x n`` matmul throughput (GFLOP/s) with the current thread setting:
    the best of ``trials`` timings, on this process's CPU time on CPU (so that other jobs on a
    shared machine do not lower it) and on synchronised wall time on CUDA."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        if cuda:
            torch.cuda.synchronize()
        reps, start = 0, clock()
        while clock() - start < seconds:
            a @ b
            reps += 1
            if cuda and reps % 50 == 0:
                torch.cuda.synchronize()
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (clock() - start) / 1e9)
    return best


def compose(overrides: list[str], output_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None):
    """Compose ``configs/train.yaml`` with ``overrides`` exactly as ``python train.py`` would,
    with the Hydra runtime set so that ``histograph.train.run`` can run it in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def interleave(variants: dict[str, Callable[[], list]], repeats: int) -> dict[str, list]:
    """Run every variant ``repeats`` times in turn; each call returns a list of samples."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].extend(fn())
    return samples


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensor storage allocated while ``fn`` runs, above what was live before.

    On CUDA this is ``torch.cuda.max_memory_allocated``; on CPU (no allocator statistics) a
    ``TorchDispatchMode`` records every storage that an operator (forward or backward) creates
    and a weak reference frees it again when its last tensor dies. Slow: use it on a separate
    call, never on a timed one.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    state = {"live": 0, "peak": 0}
    holders: dict[int, list] = {}  # storage data_ptr -> [nbytes, live tensors]

    def release(key: int) -> None:
        entry = holders.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            state["live"] -= entry[0]
            del holders[key]

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                    continue
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0:
                    continue
                if key in holders:
                    holders[key][1] += 1
                else:
                    holders[key] = [nbytes, 1]
                    state["live"] += nbytes
                    state["peak"] = max(state["peak"], state["live"])
                weakref.finalize(t, release, key)
            return out

    with Tracker():
        fn()
    return state["peak"]


class EpochTimer:
    """A Lightning callback (``.callback``) that records (wall, CPU) seconds from one
    training-epoch start to the next (or to the end of training): a whole epoch, validation,
    logging and checkpointing included."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        outer = self

        class _Timer(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                outer.marks.append(clock())

            def on_train_end(self, trainer, pl_module):
                outer.marks.append(clock())

        self.callback = _Timer()
        self.marks: list[tuple[float, float]] = []

    def epochs(self) -> list[tuple[float, float]]:
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])]


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is what the process itself used,
    which other jobs on a shared machine inflate much less than wall time."""
    return time.perf_counter(), time.process_time()


@contextlib.contextmanager
def timed_trainer(timer: EpochTimer):
    """Add ``timer`` to the callbacks of the Trainer that ``histograph.train.run`` builds."""
    import histograph.train as train_mod

    original = train_mod.build_trainer

    def build_trainer(cfg, callbacks, loggers, output_dir):
        return original(cfg, [*callbacks, timer.callback], loggers, output_dir)

    train_mod.build_trainer = build_trainer
    try:
        yield
    finally:
        train_mod.build_trainer = original


def framework_epochs(overrides: list[str], data_dir: str | None = None,
                     output_dir: str | os.PathLike | None = None,
                     keep_first: bool = False) -> list[tuple[float, float]]:
    """Run ``histograph.train.run`` in-process on the composed ``overrides``; return the
    (wall, CPU) seconds of every epoch but the first (warm-up) unless ``keep_first``. The run
    folder is a temporary one (deleted) unless ``output_dir`` is given."""
    from histograph.train import run

    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="bench_"))
    try:
        cfg = compose(overrides, output_dir=out, data_dir=data_dir)
        timer = EpochTimer()
        with timed_trainer(timer), contextlib.redirect_stdout(None):
            run(cfg)
        return timer.epochs() if keep_first else timer.epochs()[1:]
    finally:
        if output_dir is None:
            shutil.rmtree(out, ignore_errors=True)
