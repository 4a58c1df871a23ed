"""TU datasets (Morris et al., 2020) through PyG's :class:`~torch_geometric.datasets.TUDataset`.

Features follow the GIN code base (Xu et al., ICLR 2019): one-hot node labels (plus the
continuous node attributes when ``use_node_attr``), and for sets without any node features
(IMDB-BINARY, IMDB-MULTI, REDDIT-BINARY, COLLAB) the one-hot node degree, capped at
``degree_cap`` (higher degrees share the last bucket).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch_geometric.datasets import TUDataset
from torch_geometric.utils import degree

from histograph.data.fingerprint import load_processed
from histograph.data.graphs import GraphData, InMemoryGraphs
from histograph.data.locks import dataset_lock
from histograph.data.mirror import MIRROR_ENV, resolve_mirror, stage
from histograph.errors import UserError
from histograph.utils import quietly

_REQUIRED = ("A", "graph_indicator", "graph_labels")
# Sets published with node labels: without ``<name>_node_labels.txt`` PyG would give them no
# node features and this loader one-hot degrees (another model), so the file is required.
# IMDB-*, REDDIT-* and COLLAB have none: degree features are right for them.
NODE_LABELLED = frozenset({
    "AIDS", "BZR", "COX2", "DD", "DHFR", "ENZYMES", "MUTAG", "Mutagenicity", "NCI1", "NCI109",
    "PROTEINS", "PROTEINS_full", "PTC_FM", "PTC_FR", "PTC_MM", "PTC_MR"})


def load_tu(name: str, data_dir: str | os.PathLike, data_mirror: str | None = None,
            use_node_attr: bool = False, degree_cap: int = 64, offline: bool = False,
            cleaned: bool = False) -> GraphData:
    """Load the TU dataset ``name`` (stage it from the mirror first), with GIN-style features.

    :param name: TU name exactly as published (``MUTAG``, ``IMDB-BINARY``, ...).
    :param data_dir: writable folder; files land in ``<data_dir>/TUDataset/<name>/``.
    :param data_mirror: folder laid out like ``shared/data`` (``None``: env var, then download).
    :param use_node_attr: append the continuous node attributes to the one-hot labels.
    :param degree_cap: largest degree with its own one-hot bucket for feature-less sets.
    :param offline: never try to download; fail with a clear message when files are missing.
    :param cleaned: use the cleaned (duplicate-free) version (``TUDataset(cleaned=True)``).
    """
    if degree_cap < 1:
        raise UserError(f"dataset.degree_cap must be a positive integer, got {degree_cap!r}.")
    root = Path(data_dir) / "TUDataset"
    mirror = resolve_mirror(data_mirror)
    raw_name = "raw_cleaned" if cleaned else "raw"
    raw = root / name / raw_name
    offline = offline or os.environ.get("HISTOGRAPH_OFFLINE", "") not in ("", "0")
    with dataset_lock(data_dir, f"TUDataset/{name}", f"TU dataset {name!r}"):
        stage(f"TUDataset/{name}", Path(data_dir), mirror)
        missing = _check_raw_files(name, raw, offline)
        try:
            dataset, fingerprint = load_processed(
                root / name, raw_name.replace("raw", "processed"), (raw_name,),
                lambda: quietly(lambda: TUDataset(str(root), name, use_node_attr=use_node_attr,
                                                  cleaned=cleaned)),
                f"TU dataset {name!r}")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one clear sentence below
            if missing:
                raise UserError(
                    f"TU dataset {name!r} is not in {raw} and downloading it failed "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"check the name, or copy the raw files there, or set paths.data_mirror "
                    f"(or {MIRROR_ENV}).") from exc
            raise UserError(
                f"The raw files of TU dataset {name!r} in {raw} could not be read "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); they "
                f"look truncated or corrupt: delete {root / name} and copy them again.") from exc
    if len(dataset) == 0:
        raise UserError(f"TU dataset {name!r} in {raw} holds no graphs; re-copy its raw files.")
    # PyG does not check the line counts: a short file would fail only when a graph is sliced
    problem = _inconsistency(dataset)
    if problem:
        raise UserError(
            f"The raw files of TU dataset {name!r} in {raw} disagree in length ({problem}); one "
            f"is truncated: delete {root / name} and copy them again.")
    # The collated tensors are used as they are (no per-graph copies, nothing re-done per job
    # or per access); feature-less sets get their one-hot degrees computed for all graphs at once.
    graphs = dataset if dataset.num_node_features else _with_degree_features(dataset, degree_cap)
    labels = dataset._data.y.view(-1).numpy()
    num_classes = int(labels.max()) + 1
    edge_dim = graphs.num_edge_features or None
    return GraphData(dataset=graphs, name=name, num_features=graphs.num_node_features,
                     num_outputs=num_classes, task="multiclass", metric="acc",
                     edge_dim=edge_dim, encoder="linear", labels=np.asarray(labels),
                     fingerprint=fingerprint)


def _check_raw_files(name: str, raw: Path, offline: bool) -> list[str]:
    """The required raw files missing from ``raw`` (all of them: a download is allowed unless
    ``offline``); a partial folder, or node labels missing from a set that has them, is refused.

    :raises UserError: naming the missing file and where to get it.
    """
    missing = [s for s in _REQUIRED if not (raw / f"{name}_{s}.txt").exists()]
    source = (f"copy it there, or set paths.data_mirror (or {MIRROR_ENV}) to a folder holding "
              f"TUDataset/{name}/raw")
    if missing and (offline or len(missing) < len(_REQUIRED)):
        if len(missing) == len(_REQUIRED):
            raise UserError(
                f"No raw files for TU dataset {name!r}: expected {raw}/{name}_A.txt (and the "
                f"other {name}_*.txt files); copy them there or set paths.data_mirror (or "
                f"{MIRROR_ENV}) to a folder with TUDataset/{name}/raw, or allow downloads "
                f"(offline=false).")
        raise UserError(f"TU dataset {name!r} has no {raw / f'{name}_{missing[0]}.txt'} (its "
                        f"other raw files are there); {source}.")
    labels = raw / f"{name}_node_labels.txt"
    if not missing and name in NODE_LABELLED and not labels.exists():
        raise UserError(f"TU dataset {name!r} has node labels, but {labels} is missing (without "
                        f"it the model would silently get degree features); {source}.")
    return missing


def _inconsistency(dataset: TUDataset) -> str | None:
    """What does not add up between the collated tensors and their per-graph offsets."""
    data, slices, n = dataset._data, dataset.slices, len(dataset)
    if data.y is None or data.y.size(0) != n:
        return f"{n} graphs but {0 if data.y is None else data.y.size(0)} graph labels"
    for key, offsets in slices.items():
        value = data[key]
        if len(offsets) != n + 1:
            return f"{len(offsets) - 1} slices of {key} for {n} graphs"
        dim = data.__cat_dim__(key, value)
        if isinstance(value, torch.Tensor) and value.size(dim) != int(offsets[-1]):
            return f"{key} has {value.size(dim)} entries, the graphs need {int(offsets[-1])}"
    return None


def _with_degree_features(dataset: TUDataset, cap: int) -> InMemoryGraphs:
    """The dataset with ``x`` = one-hot degree in ``cap + 1`` buckets (0..cap, degrees above
    ``cap`` share the last one), computed for every graph at once on the collated tensors."""
    data, slices = dataset._data, dataset.slices
    counts = torch.as_tensor(data._num_nodes, dtype=torch.long)  # TU stores it without x
    node_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    edge_slices = slices["edge_index"]
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.diff(edge_slices))
    source = data.edge_index[0] + node_ptr[owner]  # edge_index is stored per graph
    deg = degree(source, num_nodes=int(node_ptr[-1]), dtype=torch.long).clamp_(max=cap)
    out = copy.copy(data)  # shares the other tensors
    out.x = torch.nn.functional.one_hot(deg, cap + 1).float()
    return InMemoryGraphs.from_collated(out, {**slices, "x": node_ptr})
