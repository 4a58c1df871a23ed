"""The ``results.json`` record of a run and the one-line summary the command line prints.

``results.json`` (written atomically by :func:`write_results`) is the contract every analysis tool
reads; its keys are documented in docs/architecture.md. A task adds or overrides keys through
:attr:`histograph.tasks.Network.record` (``hidden`` after a parameter budget, ``task``, a
frozen run's ``backbone_ckpt``), the over-smoothing diagnostics add ``dirichlet_energy``,
``mad`` and ``diagnostics_split``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from histograph.config import choice
from histograph.training.collapse import collapse_advice, collapse_cause, collapse_verdict
from histograph.utils import atomic_write_json, versions

log = logging.getLogger("histograph")

RESULTS_FILE = "results.json"
INTERRUPTED_FILE = "interrupted.json"  # histograph.training.interrupt writes it


def run_name(cfg: DictConfig) -> str:
    """A readable job name: ``MUTAG-gin5-histograph-s0-f0`` (``-frozen`` in frozen mode)."""
    dataset = cfg.dataset.get("name", "data")
    model = choice(cfg, "model") or cfg.model.get("conv", "gnn")
    readout = choice(cfg, "readout") or cfg.readout._target_.rsplit(".", 1)[-1]
    mode = "-frozen" if cfg.get("mode") == "frozen" else ""
    return f"{dataset}-{model}{cfg.model.layers}-{readout}{mode}-s{cfg.seed}-f{cfg.fold}"


def results_record(cfg: DictConfig, *, dm: Any, network: Any, lit: Any, trainer: Any,
                   history: dict[str, list[float]], tested: dict[str, float], selected: int,
                   checkpoint: str, diagnostics: dict[str, Any],
                   config_changes: list[dict[str, Any]], start: float) -> dict[str, Any]:
    """The ``results.json`` record of a finished run (keys in their documented order).

    ``selected`` is the index of the selected validation round in ``history``; the record's
    ``selected_epoch`` is its trainer epoch and ``epochs`` the epochs trained (they differ from
    the number of rounds with ``trainer.check_val_every_n_epoch`` > 1).
    """
    has_val, data = "val" in history, dm.data
    model = network.model
    record: dict[str, Any] = {
        "dataset": data.name,
        "model": choice(cfg, "model") or cfg.model.conv,
        "readout": choice(cfg, "readout") or cfg.readout._target_.rsplit(".", 1)[-1],
        "layers": int(cfg.model.layers),
        "hidden": int(cfg.model.hidden),
        "param_budget": None,
        "seed": int(cfg.seed),
        "fold": int(cfg.fold) if cfg.protocol.name != "ogb" else None,
        "protocol": cfg.protocol.name,
        "selection": cfg.protocol.get("selection"),
        "metric": data.metric,
        "mode": cfg.mode,
        "selected_epoch": int(history["epoch"][selected]),
        "epochs": int(trainer.current_epoch),
        "val": history["val"][selected] if has_val else None,
        "test": float(tested[f"test/{data.metric}"]),
        **collapse_verdict(history, selected),  # collapsed, collapsed_from, ..., collapse_signal
        "history": history,
        "layer_weights": lit.test_layer_weights,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone_ckpt": None,
        "checkpoint": checkpoint,
        "threads": torch.get_num_threads(),
        "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size,
        "wall_time_s": round(time.time() - start, 3),
        "run_name": run_name(cfg),
        **dm.data_record(),  # data_fingerprint (raw files' SHA-256) and split_sizes
        "versions": versions(),
        "config_changes": config_changes,  # resume=force: settings changed, from which epoch
    }
    record.update(network.record)
    record.update(diagnostics)
    mad = record.get("mad")
    record["collapse_cause"] = collapse_cause(
        record["collapsed"], mad, getattr(getattr(model, "readout", None), "reads_history", True))
    if record["collapsed"] and getattr(trainer, "is_global_zero", True):  # DDP: warn once
        advice = collapse_advice(cfg.optimizer.get("lr"), record["readout"], record["layers"],
                                 record["collapse_cause"], mad[-1] if mad else None,
                                 cfg.readout.get("pool"), cfg.model.get("residual", False))
        what = ("its predictions are (nearly) all one class; the reported test figure is a "
                "constant predictor's" if record["collapse_signal"] == "one_class" else
                "its training loss stays at the class prior's entropy: it learnt almost "
                "nothing, though its predictions still vary")
        log.warning("%s collapsed: from epoch %d %s. %s (docs/training.md)",
                    record["run_name"], record["collapsed_from"], what, advice)
    return record


def write_results(output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``<output_dir>/results.json`` atomically (and drop the ``interrupted.json`` of an
    earlier, resumed attempt); return its path."""
    path = Path(output_dir) / RESULTS_FILE
    atomic_write_json(path, record)
    (Path(output_dir) / INTERRUPTED_FILE).unlink(missing_ok=True)
    return path


def summary_line(record: dict[str, Any], path: str | os.PathLike) -> str:
    """``[histograph] MUTAG-gin5-histograph-s0-f0: selected epoch 7 (holdout): val acc 0.94,
    test acc 0.89  -> <path>``."""
    metric = record["metric"]
    val = f"val {metric} {record['val']:.4f}, " if record.get("val") is not None else ""
    signal = {"one_class": "one class", "loss_at_prior": "loss at the class prior"}.get(
        record.get("collapse_signal") or "one_class")
    flag = (f"  COLLAPSED from epoch {record['collapsed_from']} ({signal})"
            if record.get("collapsed") else "")
    relative = os.path.relpath(path)  # the run folder as seen from where the user stands
    path = path if relative.startswith("..") else relative
    return (f"[histograph] {record['run_name']}: selected epoch {record['selected_epoch']} "
            f"({record['protocol']}): {val}test {metric} {record['test']:.4f}{flag}  -> {path}")
