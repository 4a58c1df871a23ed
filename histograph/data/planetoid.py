"""Planetoid citation graphs (Cora, CiteSeer, PubMed) through PyG's
:class:`~torch_geometric.datasets.Planetoid`, for node classification.

Yang, Cohen, Salakhutdinov, "Revisiting Semi-Supervised Learning with Graph Embeddings", ICML 2016.
The ``public`` split is the fixed one of that paper (20 labelled nodes per class, 500 validation,
1000 test nodes); ``full`` trains on every node outside validation and test (PyG's option).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch_geometric.datasets import Planetoid

from histograph.data.fingerprint import load_processed
from histograph.data.locks import dataset_lock
from histograph.data.mirror import MIRROR_ENV, resolve_mirror, stage
from histograph.data.node_datamodule import NodeData
from histograph.errors import UserError, unknown_choice
from histograph.utils import quietly

NAMES = ("Cora", "CiteSeer", "PubMed")
SPLITS = ("public", "full")
_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def load_planetoid(name: str, data_dir: str | os.PathLike, data_mirror: str | None = None,
                   split: str = "public", offline: bool = False) -> NodeData:
    """Load Planetoid ``name`` (stage its raw files from the mirror first).

    :param name: ``Cora``, ``CiteSeer`` or ``PubMed`` (case-insensitive).
    :param data_dir: writable folder; files land in ``<data_dir>/Planetoid/<name>/``.
    :param data_mirror: folder laid out like ``shared/data`` (``None``: env var, then download).
    :param split: ``public`` or ``full``.
    :param offline: never try to download; fail with a clear message when files are missing.
    """
    canonical = {n.lower(): n for n in NAMES}.get(str(name).lower())
    if canonical is None:
        raise unknown_choice("Planetoid dataset", name, NAMES)
    if split not in SPLITS:
        raise unknown_choice("Planetoid split", split, SPLITS)
    root = Path(data_dir) / "Planetoid"
    raw = root / canonical / "raw"
    offline = offline or os.environ.get("HISTOGRAPH_OFFLINE", "") not in ("", "0")
    with dataset_lock(data_dir, f"Planetoid/{canonical}", f"Planetoid {canonical!r}"):
        stage(f"Planetoid/{canonical}", Path(data_dir), resolve_mirror(data_mirror))
        missing = [s for s in _RAW if not (raw / f"ind.{canonical.lower()}.{s}").exists()]
        if missing and offline:
            raise UserError(
                f"No raw files for Planetoid {canonical!r}: expected "
                f"{raw}/ind.{canonical.lower()}.* ; copy them there or set paths.data_mirror (or "
                f"{MIRROR_ENV}) to a folder with Planetoid/{canonical}/raw, or allow downloads "
                f"(offline=false).")
        try:
            dataset, fingerprint = load_processed(
                root / canonical, "processed", ("raw",),
                lambda: quietly(lambda: Planetoid(str(root), canonical, split=split)),
                f"Planetoid {canonical!r}")
        except Exception as exc:  # noqa: BLE001 - turned into one clear sentence below
            first = str(exc).splitlines()[0] if str(exc) else ""
            if missing:
                raise UserError(f"Planetoid {canonical!r} is not in {raw} and downloading it "
                                f"failed ({type(exc).__name__}: {first}); copy the raw files "
                                f"there or set paths.data_mirror (or {MIRROR_ENV}).") from exc
            raise UserError(f"The raw files of Planetoid {canonical!r} in {raw} could not be "
                            f"read ({type(exc).__name__}: {first}); delete {root / canonical} "
                            f"and copy them again.") from exc
    data = dataset[0]
    return NodeData(data=data, name=canonical, num_features=dataset.num_features,
                    num_outputs=dataset.num_classes, fingerprint=fingerprint)
