"""Frozen-backbone mechanics: read a source checkpoint, rebuild and freeze its backbone, cache
every graph's history, and the classifier that reads the cache.

The task that uses them is :class:`histograph.tasks.frozen.FrozenGraphTask` (``mode=frozen``).
The source checkpoint must be one written by this project: :class:`LitGraphClassifier` stores a
``histograph_meta`` entry (dataset, protocol, fold, split settings, the backbone config and the
input sizes) beside the weights, and it is loaded with ``torch.load(weights_only=True)``. Nothing
in Lightning or PyG does this: it needs the project's history contract and split metadata.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.loader import DataLoader

from histograph.data.fingerprint import hash_stream
from histograph.data.graphs import InMemoryGraphs
from histograph.data.locks import exclusive, lock_file
from histograph.errors import UserError

log = logging.getLogger("histograph")

# Split settings that must agree between the source run and the frozen run.
SPLIT_KEYS = ("dataset", "protocol", "fold", "folds", "split_seed", "val_fraction")
CACHES = ("memory", "disk")
# Backbone config keys of older checkpoints that the backbone no longer takes (they moved to the
# task: task.param_budget, task.compile).
_RETIRED_MODEL_KEYS = ("param_budget", "compile")


@dataclass
class SourceCheckpoint:
    """What a frozen run needs from its source checkpoint."""

    path: Path
    meta: dict[str, Any]
    backbone_state: dict[str, Tensor]


def read_source(path: str | os.PathLike | None) -> SourceCheckpoint:
    """Load the backbone weights and run metadata of an earlier histograph run (weights only).

    :raises UserError: when the path is unset or missing, or the file is not a histograph
        checkpoint.
    """
    if path in (None, "", "null"):
        raise UserError("mode=frozen needs backbone_ckpt=<path to a checkpoint of an earlier "
                        "run> (e.g. <run dir>/checkpoints/last.ckpt).")
    from histograph.checkpoints import load_checkpoint

    path = Path(str(path)).expanduser()
    ckpt = load_checkpoint(path, what="backbone_ckpt")  # weights_only=True, one-line errors
    meta = ckpt.get("histograph_meta")
    state = ckpt.get("state_dict", {})
    prefix = "model.backbone."
    backbone_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if meta is None or not backbone_state:
        raise UserError(f"backbone_ckpt {str(path)!r} is not a histograph checkpoint (no run "
                        f"metadata or backbone weights); pass one written by train.py.")
    return SourceCheckpoint(path=path, meta=meta, backbone_state=backbone_state)


def check_same_split(meta: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another dataset, protocol or fold than this run's."""
    diff = [f"{k}={meta.get(k)!r} (this run: {current.get(k)!r})" for k in SPLIT_KEYS
            if k != "fold" or current.get("protocol") != "ogb"
            if meta.get(k) != current.get(k)]
    if diff:
        raise UserError(
            "backbone_ckpt was trained with " + ", ".join(diff) + "; run the frozen head with "
            "the same dataset, protocol and fold as the checkpoint (or pick a matching one).")


def build_frozen_backbone(source: SourceCheckpoint) -> torch.nn.Module:
    """Rebuild the source run's backbone from its stored config, load and freeze it."""
    from hydra.utils import instantiate

    meta = source.meta
    model_cfg = {k: v for k, v in meta["model"].items() if k not in _RETIRED_MODEL_KEYS}
    try:
        backbone = instantiate(model_cfg)(in_channels=meta["in_channels"],
                                              edge_dim=meta["edge_dim"], encoder=meta["encoder"])
        backbone.load_state_dict(source.backbone_state, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"The backbone in {source.path} does not match its stored model config "
                        f"({type(exc).__name__}); use a checkpoint written by train.py.") from exc
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


@torch.no_grad()
def compute_history(backbone: torch.nn.Module, dataset, batch_size: int = 256,
                    device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Run the frozen backbone once over ``dataset``.

    :return: ``(history, ptr)``: every node's stacked history ``[total_nodes, L, D]`` in dataset
        order, and the node offsets ``ptr`` ``[num_graphs + 1]``.
    """
    backbone = backbone.to(device).eval()
    chunks, sizes = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        hist = backbone(batch.x, batch.edge_index, getattr(batch, "edge_attr", None), batch.batch)
        chunks.append(torch.stack(hist, dim=1).cpu())
        sizes.append(torch.diff(batch.ptr).cpu())
    history = torch.cat(chunks)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(sizes).cumsum(0)])
    return history, ptr


def history_dataset(history: Tensor, ptr: Tensor, y: Tensor) -> InMemoryDataset:
    """Graphs whose only node attribute is the cached ``history`` (``[N_g, L, D]``).

    Built directly in PyG's collated layout (the history as it is, offsets ``ptr``), with no
    per-graph objects; batches are then cut by the cached loader.
    """
    counts = torch.diff(ptr)
    data = Data(history=history, y=y)
    data._num_nodes = counts.tolist()  # what PyG's collate keeps for explicit num_nodes
    data.num_nodes = int(ptr[-1])
    slices = {"history": ptr.long(), "y": torch.arange(len(counts) + 1)}
    return InMemoryGraphs.from_collated(data, slices)


def cache_key(source: SourceCheckpoint, data_fingerprint: str | None = None) -> str:
    """Identifies a checkpoint's history cache: the dataset name, the checkpoint file's content
    hash and, when known, the fingerprint of the dataset's raw files (edited data: a new cache)."""
    with open(source.path, "rb") as fh:
        digest = hash_stream(fh.read)
    key = f"{source.meta['dataset']}-{digest[:16]}"
    return f"{key}-{data_fingerprint[:16]}" if data_fingerprint else key


def cached_history(source: SourceCheckpoint, backbone: torch.nn.Module, dataset,
                   cache: str, cache_dir: Path, device: torch.device | str = "cpu",
                   data_fingerprint: str | None = None) -> tuple[Tensor, Tensor]:
    """The history of every graph, computed once; ``cache="disk"`` reuses a file across jobs.

    The disk cache ``<cache_dir>/<cache_key>.pt`` is read, or computed and written (atomically),
    under a file lock (:mod:`histograph.data.locks`): concurrent jobs compute it once and read
    the same file. A file that cannot be read or does not fit ``dataset`` (a killed write,
    another dataset version) counts as a miss: it is computed again, with a warning.
    """
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}.")
    if cache == "memory":
        return compute_history(backbone, dataset, device=device)
    path = cache_dir / f"{cache_key(source, data_fingerprint)}.pt"
    with exclusive(lock_file(cache_dir, path.stem), f"the frozen history cache {path}"):
        saved = _read_cache(path, dataset) if path.exists() else None
        if saved is not None:
            return saved
        history, ptr = compute_history(backbone, dataset, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"history": history, "ptr": ptr}, tmp)
        os.replace(tmp, path)
    return history, ptr


def _read_cache(path: Path, dataset) -> tuple[Tensor, Tensor] | None:
    """The cached ``(history, ptr)`` in ``path``, or ``None`` (with a warning) when the file
    cannot be read or its node offsets are not those of ``dataset``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        history, ptr = saved["history"], saved["ptr"]
        nodes = (getattr(dataset, "slices", None) or {}).get("x")
        fits = (ptr.dim() == 1 and len(ptr) == len(dataset) + 1
                and history.size(0) == int(ptr[-1])
                and (nodes is None or torch.equal(ptr, nodes.to(ptr.dtype))))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a cache miss
        log.warning("The frozen history cache %s could not be read (%s); it is computed again.",
                    path, type(exc).__name__)
        return None
    if not fits:
        log.warning("The frozen history cache %s does not fit this dataset's graphs; it is "
                    "computed again.", path)
        return None
    return history, ptr


def cache_device(accelerator: str | None) -> str:
    """Where the history is computed: this process's GPU (``cuda:<LOCAL_RANK>``: under DDP each
    rank its own, not every rank on ``cuda:0``) when the trainer may use a GPU and one exists."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0) or 0) % torch.cuda.device_count()}"
    return "cpu"


class FrozenBackboneClassifier(torch.nn.Module):
    """A frozen backbone plus trainable readout and head.

    Batches from the cache carry ``history`` and skip the backbone; raw graphs (no ``history``)
    go through the frozen backbone, so a checkpoint of this model still classifies raw graphs.
    """

    def __init__(self, backbone: torch.nn.Module, readout: torch.nn.Module,
                 head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone, self.readout, self.head = backbone, readout, head

    def train(self, mode: bool = True) -> "FrozenBackboneClassifier":
        super().train(mode)
        self.backbone.eval()  # frozen: normalisation statistics and dropout stay fixed
        return self

    def forward(self, data, *, return_layer_weights: bool = False):
        """Logits (and the readout's layer weights when asked), as
        :class:`~histograph.nn.model.GraphClassifier`."""
        history = getattr(data, "history", None)
        if history is None:
            history = self.backbone(data.x, data.edge_index, getattr(data, "edge_attr", None),
                                    data.batch)
        x, weights = self.readout(history, data.batch, data.num_graphs,
                                  return_layer_weights=True)
        logits = self.head(x)
        return (logits, weights) if return_layer_weights else logits
