"""The training entry point: compose -> instantiate -> fit -> test -> ``results.json``.

``python train.py [group=option ...] [key=value ...]`` (or the ``histograph-train`` console
script). :func:`run` does one job given a composed config and is what tests call; :func:`main`
is the Hydra-decorated command that turns user errors into one-line messages.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from histograph.errors import UserError, unknown_choice
from histograph.sweeps import jobs  # registers the ${hg.job_dir:...} resolver of sweep folders
from histograph.utils import atomic_write_json, resolve_threads, versions

log = logging.getLogger("histograph")

MODES = ("end_to_end", "frozen")
# The configs live beside the package (repository root); an absolute path works from any cwd.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


# ---------------------------------------------------------------------- config helpers
def choice(cfg: DictConfig, group: str) -> str | None:
    """The option picked for a config group (``readout`` -> ``"histograph"``), when known."""
    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # HydraConfig not set (plain compose without the hydra node)
        hydra_node = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
        if hydra_node is not None:
            return OmegaConf.select(cfg, f"hydra.runtime.choices.{group}")
        return None


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def validate_config(cfg: DictConfig) -> None:
    """Cheap checks before any data is loaded, each failing with one sentence naming the fix."""
    _positive_int(cfg.model.layers, "model.layers")
    _positive_int(cfg.model.hidden, "model.hidden")
    _positive_int(cfg.seed, "seed", minimum=0)
    _positive_int(cfg.fold, "fold", minimum=0)
    _positive_int(cfg.trainer.max_epochs, "trainer.max_epochs")
    _positive_int(cfg.data.batch_size, "data.batch_size")
    if cfg.mode not in MODES:
        raise unknown_choice("mode", cfg.mode, MODES)
    protocol = cfg.protocol.name
    if protocol != "ogb" and not cfg.fold < cfg.protocol.folds:
        raise UserError(f"fold={cfg.fold} is outside 0..{cfg.protocol.folds - 1}; pick a fold "
                        f"in that range (protocol.folds={cfg.protocol.folds}).")
    heads = cfg.readout.get("heads")
    if heads is not None and (not isinstance(heads, int) or heads < 1
                              or cfg.model.hidden % heads):
        raise UserError(f"readout.heads={heads} must be a positive divisor of model.hidden="
                        f"{cfg.model.hidden}; change one of them.")
    lr = cfg.optimizer.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise UserError(f"optimizer.lr must be a positive number, got {lr!r}.")
    accel = cfg.trainer.get("accelerator")
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accel} but no GPU is available here; use "
                        f"trainer.accelerator=cpu (or auto).")


def run_name(cfg: DictConfig) -> str:
    """A readable job name: ``MUTAG-gin5-histograph-s0-f0``."""
    dataset = cfg.dataset.get("name", "data")
    model = choice(cfg, "model") or cfg.model.get("conv", "gnn")
    readout = choice(cfg, "readout") or cfg.readout._target_.rsplit(".", 1)[-1]
    mode = "-frozen" if cfg.get("mode") == "frozen" else ""
    return f"{dataset}-{model}{cfg.model.layers}-{readout}{mode}-s{cfg.seed}-f{cfg.fold}"


# ---------------------------------------------------------------------- the job
def build_datamodule(cfg: DictConfig):
    from histograph.data.datamodule import GraphDataModule
    from histograph.node import build_node_datamodule, task_of

    if task_of(cfg) == "node":
        return build_node_datamodule(cfg)
    return GraphDataModule(
        dataset=instantiate(cfg.dataset), data_dir=cfg.paths.data_dir,
        data_mirror=cfg.paths.get("data_mirror"), protocol=cfg.protocol.name, fold=cfg.fold,
        folds=cfg.protocol.folds, val_fraction=cfg.protocol.val_fraction,
        split_seed=cfg.protocol.split_seed, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.get("eval_batch_size"), num_workers=cfg.data.num_workers,
        offline=cfg.data.get("offline", False), loader=cfg.data.get("loader", "auto"),
        bucket_by_size=cfg.data.get("bucket_by_size", False),
        bucket_window=cfg.data.get("bucket_window", 64))


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, output_dir: Path):
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                           default_root_dir=str(output_dir))
    except InstantiationException as exc:  # Hydra wraps the Trainer's own error
        cause = exc.__cause__ or exc
        raise UserError(f"The trainer settings were rejected ({type(cause).__name__}: "
                        f"{cause}); check the trainer.* overrides.") from exc
    except (MisconfigurationException, RuntimeError, ValueError) as exc:
        accel = cfg.trainer.get("accelerator")
        if accel in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accel} but no GPU is available here; use "
                            f"trainer.accelerator=cpu (or auto).") from exc
        raise UserError(f"The trainer settings were rejected: {exc}") from exc


def apply_param_budget(cfg: DictConfig, data) -> int | None:
    """Set ``model.hidden`` so the whole network has about ``model.param_budget`` weights.

    The width is fitted by :func:`histograph.nn.budget.fit_width` on the real network (backbone,
    readout and head as :func:`build_network` builds them, on the ``meta`` device), as a multiple
    of the readout's and GAT's attention heads. Returns the budget (``None`` when unset, or in
    frozen mode, whose backbone comes from its checkpoint). Graph classification only.
    """
    budget = cfg.model.get("param_budget")
    if budget is None or cfg.mode != "end_to_end":
        return None
    if cfg.get("task", "graph") != "graph":
        raise UserError("model.param_budget is implemented for graph classification only; "
                        "drop it (or set model.hidden) for task=node.")
    from histograph.nn.budget import fit_width, meta_count, width_step
    from histograph.nn.model import build_model

    def count(width: int) -> int:
        cfg.model.hidden = width  # the head's and readout's ${model.hidden} follow
        return meta_count(lambda: build_model(
            instantiate(cfg.model), instantiate(cfg.readout), instantiate(cfg.head),
            in_channels=data.num_features, out_channels=data.num_outputs,
            edge_dim=data.edge_dim, encoder=data.encoder))

    step = width_step([cfg.readout.get("heads"),
                       cfg.model.get("gat_heads") if cfg.model.get("conv") == "gat" else None])
    cfg.model.hidden = fit_width(count, budget, step=step)
    log.info("model.param_budget=%d -> model.hidden=%d", budget, cfg.model.hidden)
    return int(budget)


def split_meta(cfg: DictConfig, data) -> dict[str, Any]:
    """The dataset/protocol/fold settings a checkpoint records (frozen mode checks them)."""
    return {"dataset": data.name, "protocol": cfg.protocol.name,
            "fold": int(cfg.fold) if cfg.protocol.name != "ogb" else None,
            "folds": int(cfg.protocol.folds), "split_seed": int(cfg.protocol.split_seed),
            "val_fraction": float(cfg.protocol.val_fraction) if cfg.protocol.name != "gin"
            else 0.0}


def build_network(cfg: DictConfig, dm) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The network for ``cfg.mode``, the metadata stored in its checkpoints, and extra results.

    ``end_to_end`` builds backbone + readout + head from the config. ``frozen`` rebuilds the
    backbone of ``backbone_ckpt`` (its own stored config; ``model.*`` overrides do not apply),
    freezes it, swaps the dataset for the cached histories and trains readout + head only.
    """
    from histograph.nn.model import GraphClassifier, build_model
    from histograph.node import build_node_network, task_of

    if task_of(cfg) == "node":
        return build_node_network(cfg, dm, readout_name=choice(cfg, "readout"))
    data = dm.data
    meta = split_meta(cfg, data)
    if cfg.mode == "end_to_end":
        model = build_model(instantiate(cfg.model), instantiate(cfg.readout),
                            instantiate(cfg.head), in_channels=data.num_features,
                            out_channels=data.num_outputs, edge_dim=data.edge_dim,
                            encoder=data.encoder)
        meta.update(model=OmegaConf.to_container(cfg.model, resolve=True),
                    in_channels=data.num_features, edge_dim=data.edge_dim,
                    encoder=data.encoder)
        return model, meta, {}

    import dataclasses

    from histograph.training import frozen

    source = frozen.read_source(cfg.get("backbone_ckpt"))
    frozen.check_same_split(source.meta, meta)
    backbone = frozen.build_frozen_backbone(source)
    device = "cuda" if cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") \
        and torch.cuda.is_available() else "cpu"
    t0 = time.time()
    history, ptr = frozen.cached_history(
        source, backbone, data.dataset, cache=cfg.frozen.cache,
        cache_dir=Path(cfg.paths.data_dir) / "frozen_cache", device=device)
    backbone.cpu()
    cached = frozen.history_dataset(history, ptr, data.dataset.y)  # collated labels, in order
    dm.data = dataclasses.replace(data, dataset=cached)
    shell = build_model(instantiate(source.meta["model"]), instantiate(cfg.readout),
                        instantiate(cfg.head), in_channels=source.meta["in_channels"],
                        out_channels=data.num_outputs, edge_dim=source.meta["edge_dim"],
                        encoder=source.meta["encoder"])
    assert isinstance(shell, GraphClassifier)
    model = frozen.FrozenBackboneClassifier(backbone, shell.readout, shell.head)
    meta.update({k: source.meta[k] for k in ("model", "in_channels", "edge_dim", "encoder")})
    extra = {"backbone_ckpt": str(source.path), "cache_time_s": round(time.time() - t0, 3),
             "layers": int(source.meta["model"]["layers"]),
             "hidden": int(source.meta["model"]["hidden"]),
             "model": source.meta["model"].get("conv")}
    return model, meta, extra


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one job; write ``results.json`` atomically; return the results."""
    start = time.time()
    validate_config(cfg)  # before the slow imports: a bad value fails in about a second

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from histograph.diagnostics import diagnose
    from histograph.training.loggers import build_loggers, config_dict, finish_wandb, log_config
    from histograph.training.module import LitGraphClassifier, selected_epoch
    from histograph.training.node_module import LitNodeClassifier
    from histograph.checkpoints import RunConfigCheckpoint, resume_point, run_config
    from histograph.training.csv_logger import resume_loggers
    from histograph.training.guards import FiniteLossGuard
    from histograph.training.rng_state import RNGStateCheckpoint

    threads = resolve_threads(cfg.get("threads", "auto"))
    if threads is not None:
        torch.set_num_threads(threads)
    output_dir = Path(cfg.paths.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"Cannot write to the output folder {output_dir} ({exc.strerror}); set "
                        f"hydra.run.dir (or paths.log_dir) to a writable folder.") from exc
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(cfg)
    dm.setup("fit")
    param_budget = apply_param_budget(cfg, dm.data)
    model, meta, extra = build_network(cfg, dm)
    if cfg.model.get("compile", False):  # in place: state_dict keys stay those of the module
        model.compile(dynamic=True)
    data = dm.data
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    lit_class = LitNodeClassifier if extra.get("task") == "node" else LitGraphClassifier
    lit = lit_class(model, task=data.task, num_outputs=data.num_outputs, metric=data.metric,
                    dataset_name=data.name, optimizer=instantiate(cfg.optimizer),
                    scheduler=scheduler, eval_splits=dm.eval_splits, meta=meta)

    has_val = "val" in dm.eval_splits
    # best-epoch checkpoint (selected on val/<metric>; the last epoch without validation) and a
    # last.ckpt written after *every* epoch for resuming: Lightning 2.6's save_last=True writes
    # last.ckpt only when the monitored checkpoint improved, so it is a second callback here.
    checkpoint = ModelCheckpoint(
        dirpath=str(output_dir / "checkpoints"), filename="best-{epoch:03d}",
        monitor=f"val/{data.metric}" if has_val else None, mode="max", save_top_k=1)
    last_checkpoint = ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), filename="last",
                                      monitor=None, save_top_k=1, enable_version_counter=False)
    name = run_name(cfg)
    # W&B: grouped by sweep (task name for single runs), job type = readout, named after the
    # job's overrides, tagged with the experiment preset
    tags = list(dict.fromkeys([*(cfg.get("tags") or []), choice(cfg, "experiment")]))
    loggers = build_loggers(cfg.get("logger"), output_dir, run_name=jobs.job_name() or name,
                            group=cfg.get("sweep_name") if jobs.is_multirun()
                            else cfg.get("task_name"), job_type=choice(cfg, "readout"),
                            tags=[t for t in tags if t])
    # resume from <run dir>/checkpoints/last.ckpt, refused when it belongs to another run
    resume_from, resume_epoch = resume_point(cfg, output_dir, lit)
    if resume_epoch is not None:
        resume_loggers(loggers, resume_epoch)  # keep the CSV rows of the epochs already done
    failed = True
    try:
        log_config(loggers, config_dict(cfg))
        callbacks = [checkpoint, last_checkpoint, RNGStateCheckpoint(), FiniteLossGuard(),
                     RunConfigCheckpoint(run_config(cfg)),  # + configured ones (early stopping)
                     *[instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]]
        trainer = build_trainer(cfg, callbacks, loggers, output_dir)
        trainer.fit(lit, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        history = lit.history
        if not history["test"]:
            raise UserError("Training ran no evaluation epoch; raise trainer.max_epochs.")
        selected = selected_epoch(history)
        best = checkpoint.best_model_path
        tested = trainer.test(lit, datamodule=dm, ckpt_path=best, verbose=False,
                              weights_only=True)[0]
        smoothing = diagnose(lit.model, dm, loggers, step=trainer.global_step)  # best weights
        failed = False
    finally:
        finish_wandb(loggers, failed)

    results = {
        "dataset": data.name,
        "model": choice(cfg, "model") or cfg.model.conv,
        "readout": choice(cfg, "readout") or cfg.readout._target_.rsplit(".", 1)[-1],
        "layers": int(cfg.model.layers),
        "hidden": int(cfg.model.hidden),
        "param_budget": param_budget,
        "seed": int(cfg.seed),
        "fold": int(cfg.fold) if cfg.protocol.name != "ogb" else None,
        "protocol": cfg.protocol.name,
        "selection": cfg.protocol.get("selection"),
        "metric": data.metric,
        "mode": cfg.mode,
        "selected_epoch": selected,
        "epochs": len(history["test"]),
        "val": history["val"][selected] if has_val else None,
        "test": float(tested[f"test/{data.metric}"]),
        "history": history,
        "layer_weights": lit.test_layer_weights,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone_ckpt": None,
        "checkpoint": best,
        "threads": torch.get_num_threads(),
        "accelerator": type(trainer.accelerator).__name__,
        "world_size": trainer.world_size,
        "wall_time_s": round(time.time() - start, 3),
        "run_name": name,
        "versions": versions(),
    }
    results.update(extra)
    results.update(smoothing)
    if not trainer.is_global_zero:  # DDP: every rank returns the results, rank 0 writes them
        return results
    atomic_write_json(output_dir / "results.json", results)
    val_txt = f"val {data.metric} {results['val']:.4f}, " if has_val else ""
    print(f"[histograph] {name}: selected epoch {selected} ({cfg.protocol.name}): {val_txt}"
          f"test {data.metric} {results['test']:.4f}  -> {output_dir / 'results.json'}",
          flush=True)
    return results


# ---------------------------------------------------------------------- command line
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    # Lightning prints through its own stderr handlers *and* Hydra's root handlers; keep one
    # path (Hydra's console + <run dir>/train.log). Import first: the handlers come at import.
    import lightning  # noqa: F401

    # cosmetic library warnings (ENV.md gotcha 13; OGB's read-only numpy labels)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"The given NumPy array is not writable")

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    if jobs.is_multirun():  # skip when done; a failure becomes failed.json, the sweep goes on
        return jobs.run_idempotent(cfg, run)
    try:
        results = run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return results["val"] if results["val"] is not None else results["test"]


def main() -> None:
    """Console-script entry point (``histograph-train``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
