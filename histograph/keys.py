"""Which config keys change a result, in one table: :data:`NON_RESULT_KEYS`.

A *result key* is any config key whose value can change what a job computes (its numbers); a
*non-result key* only changes where files go, how the run is logged, how fast it runs or how it
is controlled. Four places need this distinction and all read it from here:

* the job folder of a sweep (Hydra's ``hydra.job.config.override_dirname.exclude_keys`` is
  ``${hg.non_result_overrides:}``, see :func:`non_result_overrides`): two commands that differ
  only in non-result keys write into the same folder;
* the config hash of a finished sweep job (:func:`result_config`, read by
  :mod:`histograph.sweeps.jobs`): a finished job is skipped unless a result key changed;
* the aggregator's axes (:mod:`histograph.analysis.aggregate`): a non-result key never splits a
  table row;
* the resume check (:mod:`histograph.checkpoints`): a run folder resumes only when no result
  key changed (``resume=force`` continues and records the change).

An entry names a key or a whole sub-tree (``paths`` covers ``paths.data_dir``). Keys that may
change numbers only within floating-point or evaluation-padding noise (the accelerator, the
number of DDP devices) are listed as non-result on purpose: a job moved to another machine is the
same job. This module imports nothing heavy (no torch), so the command line can use it before
any training library is loaded.
"""

from __future__ import annotations

import json
import hashlib
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

#: Config keys (or sub-trees) whose value does not change a job's result.
NON_RESULT_KEYS: tuple[str, ...] = (
    # where files go and how runs are named, grouped and logged
    "paths", "hydra", "logger", "sweep_name", "task_name", "tags", "cluster",
    "data.data_dir", "data.data_mirror",
    # how fast, and on what, the same computation runs
    "threads", "data.num_workers", "data.loader", "data.device_resident", "task.cache",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.matmul_precision",
    # what is shown while it runs
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    # run control, and the nested CV orchestrator's own settings (each of its jobs is one
    # training run; which grid it belongs to does not change that run's numbers)
    "resume", "protocol.grid", "protocol.retrain", "protocol.outer_folds", "protocol.exit_zero",
)


def is_result_key(key: str) -> bool:
    """Whether ``key`` (dotted, ``+``/``~`` prefixes allowed) can change a job's result."""
    key = key.lstrip("+~")
    return not any(key == k or key.startswith(k + ".") for k in NON_RESULT_KEYS)


def non_result_overrides(*, _root_: DictConfig) -> list[str]:
    """The keys of this job's overrides that :func:`is_result_key` rejects.

    The value of ``hydra.job.config.override_dirname.exclude_keys`` (resolver
    ``${hg.non_result_overrides:}``): Hydra compares whole keys, so the table's sub-tree entries
    are expanded against the overrides actually given (``paths.data_dir=...`` ->
    ``paths.data_dir``).
    """
    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []
    keys = [str(o).split("=", 1)[0].lstrip("+~") for o in overrides]
    return sorted({k for k in keys if not is_result_key(k)} | set(NON_RESULT_KEYS))


def _drop_non_result(tree: Any, prefix: str = "") -> Any:
    if not isinstance(tree, dict):
        return tree
    return {k: _drop_non_result(v, f"{prefix}{k}.") for k, v in tree.items()
            if is_result_key(f"{prefix}{k}")}


def result_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config without its non-result keys (a nested plain dict)."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) \
        if OmegaConf.is_config(cfg) else dict(cfg)
    assert isinstance(tree, dict)
    return _drop_non_result(tree)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"layers": 4}}`` -> ``{"model.layers": 4}`` (lists stay values)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def digest(config: Mapping[str, Any]) -> str:
    """A short, process-stable SHA-256 of a plain config tree (keys sorted)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """:func:`digest` of :func:`result_config`: equal for configs that give the same result."""
    return digest(result_config(cfg))


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any],
                 only: Iterable[str] | None = None) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every flattened key whose value differs (``<unset>`` if absent).

    :param only: compare these flattened keys only (default: all keys of both).
    """
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b)) if only is None else sorted(only)
    return [(k, a.get(k, "<unset>"), b.get(k, "<unset>")) for k in keys
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """``"trainer.max_epochs 100 -> 200, ..."`` for the first ``limit`` changes."""
    parts = [f"{k} {a!r} -> {b!r}" for k, a, b in changes[:limit]]
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(parts) + more
