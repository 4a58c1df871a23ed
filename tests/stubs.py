"""Small stand-ins shared by tests and the subprocesses they start (imports nothing heavy)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from histograph.training import frozen


class SlowBackbone(torch.nn.Module):
    """A stand-in backbone: history ``[x, x + 1]``, slow enough for a second job to arrive."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay

    def forward(self, x, edge_index, edge_attr, batch):
        time.sleep(self.delay)
        return [x, x + 1]


def source_checkpoint(folder: Path, dataset: str) -> frozen.SourceCheckpoint:
    """What ``cached_history`` needs of a source checkpoint: a file (its hash is the cache key;
    written when missing) and the dataset name."""
    ckpt = Path(folder) / "source.ckpt"
    if not ckpt.exists():
        ckpt.write_bytes(b"stands for a checkpoint file")
    return frozen.SourceCheckpoint(path=ckpt, meta={"dataset": dataset}, backbone_state={})


def concurrent_job(name: str, data_dir: str, folder: str, me: str) -> dict:
    """One of two jobs started on one fresh data folder: mark ``<folder>/ready-<me>``, wait for
    ``<folder>/go``, then load ``name``, its folds and a disk history cache, as a training job
    does. Returns digests of what it got and whether it computed the history itself."""
    import hashlib
    import json

    from histograph.data.splits import load_or_make_folds
    from histograph.data.tu import load_tu

    data_dir, folder = Path(data_dir), Path(folder)
    (folder / f"ready-{me}").touch()
    while not (folder / "go").exists():  # both jobs start within a few milliseconds
        time.sleep(0.002)
    data = load_tu(name, data_dir)
    folds = load_or_make_folds(data_dir / "splits", name, data.labels, 10, 0, 0.1)
    computed, compute = [], frozen.compute_history
    frozen.compute_history = lambda *a, **k: computed.append(1) or compute(*a, **k)
    try:
        history, ptr = frozen.cached_history(
            source_checkpoint(folder, name), SlowBackbone(0.2), data.dataset, "disk",
            data_dir / "frozen_cache", data_fingerprint=data.fingerprint)
    finally:
        frozen.compute_history = compute
    g = data.dataset._data

    def digest(*tensors: torch.Tensor) -> str:
        return hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()

    return {"fingerprint": data.fingerprint, "graphs": digest(g.x, g.edge_index, g.y),
            "folds": hashlib.sha256(json.dumps(folds).encode()).hexdigest(),
            "history": digest(history, ptr), "computed": len(computed)}
