"""OGB graph property prediction (Hu et al., 2020) through ``PygGraphPropPredDataset``.

Uses the official scaffold split (``get_idx_split``) and is made safe for batch jobs: OGB 1.3.6
asks an interactive question when a dataset folder lacks ``RELEASE_v1.txt`` (that would hang a
job without stdin), so such a folder is refused with a message instead; and under torch >= 2.6
its ``torch.load`` needs PyG's data classes registered as safe globals.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from histograph.data.fingerprint import load_processed
from histograph.data.graphs import GraphData
from histograph.data.locks import dataset_lock
from histograph.data.mirror import MIRROR_ENV, resolve_mirror, stage
from histograph.errors import UserError
from histograph.utils import quietly

_RAW = ("edge.csv.gz", "node-feat.csv.gz", "edge-feat.csv.gz", "graph-label.csv.gz",
        "num-node-list.csv.gz", "num-edge-list.csv.gz")
_STAGED = ("RELEASE_v1.txt", "raw", "split", "mapping")  # what is copied from the mirror
_FINGERPRINTED = ("RELEASE_v1.txt", "raw", "split")  # what the processed data and split read


def _register_safe_globals() -> None:
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    torch.serialization.add_safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage])


def load_ogb(name: str, data_dir: str | os.PathLike, data_mirror: str | None = None,
             offline: bool = False) -> GraphData:
    """Load ``ogbg-<name>`` with its official split, staging raw files from the mirror first.

    :param name: OGB name, e.g. ``ogbg-molhiv``.
    :param data_dir: writable folder; files land in ``<data_dir>/ogb/<ogbg_molx>/``.
    :param data_mirror: folder laid out like ``shared/data`` (``None``: env var, then download).
    :param offline: never download; fail with a clear message when files are missing.
    """
    os.environ.setdefault("OUTDATED_IGNORE", "1")  # ogb's import-time PyPI version check
    from ogb.graphproppred import PygGraphPropPredDataset

    folder = name.replace("-", "_")
    root = Path(data_dir) / "ogb"
    base = root / folder
    offline = offline or os.environ.get("HISTOGRAPH_OFFLINE", "") not in ("", "0")
    with dataset_lock(data_dir, f"ogb/{folder}", repr(name)):
        stage(f"ogb/{folder}", Path(data_dir), resolve_mirror(data_mirror), parts=_STAGED)
        if base.exists() and not (base / "RELEASE_v1.txt").exists():
            raise UserError(
                f"{base} exists but has no RELEASE_v1.txt, so OGB would stop to ask whether to "
                f"re-download it; delete {base} or copy the complete dataset folder there.")
        missing = [f for f in _RAW if not (base / "raw" / f).exists()]
        if missing and offline:
            raise UserError(
                f"No raw files for {name!r}: expected {base}/raw/{missing[0]} (and the rest of "
                f"the OGB folder); set paths.data_mirror (or {MIRROR_ENV}) to a folder holding "
                f"ogb/{folder}, or allow downloads (offline=false).")
        _register_safe_globals()
        try:
            dataset, fingerprint = load_processed(
                base, "processed", _FINGERPRINTED,
                lambda: quietly(lambda: PygGraphPropPredDataset(name=name, root=str(root))),
                repr(name))
        except Exception as exc:  # noqa: BLE001 - turned into one clear sentence
            if isinstance(exc, (KeyError, ValueError)) and "master" in repr(exc).lower():
                raise UserError(f"{name!r} is not an OGB graph dataset name.") from exc
            raise UserError(
                f"Could not load {name!r} from {base} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); check the name, or copy the "
                f"OGB folder there / set paths.data_mirror, or allow downloads.") from exc
        try:
            split = dataset.get_idx_split()
        except FileNotFoundError as exc:
            raise UserError(
                f"The split files of {name!r} are missing ({exc.filename}); copy "
                f"{folder}/split/ from the mirror or delete {base} to download it again.") from exc
    if dataset.task_type != "binary classification":
        raise UserError(f"{name!r} is a {dataset.task_type} task; only binary-classification OGB "
                        f"sets (ogbg-mol*) are supported.")
    y = dataset.y
    labels = y.view(-1).nan_to_num(0).long().numpy() if dataset.num_tasks == 1 else None
    return GraphData(dataset=dataset, name=name, num_features=dataset.num_node_features,
                     num_outputs=int(dataset.num_tasks), task="multilabel",
                     metric=dataset.eval_metric, edge_dim=dataset.num_edge_features or None,
                     encoder="atom", labels=None if labels is None else np.asarray(labels),
                     official_split={k: torch.as_tensor(v) for k, v in split.items()},
                     fingerprint=fingerprint)
