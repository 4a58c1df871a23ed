"""Job folder names of a sweep, and the Hydra state a job reads (no heavy imports).

A multirun job writes into ``<hydra.sweep.dir>/<job dir>`` where the sweep dir is
``${paths.log_dir}/sweeps/${sweep_name}`` (no timestamp) and the job dir is the job's overrides
as Hydra's ``hydra.job.override_dirname`` writes them (sorted ``key=value`` joined by ``,``;
non-result keys left out, :mod:`histograph.keys`), made file-system safe by
:func:`job_dir_name` (the ``${hg.job_dir:...}`` resolver). So the same sweep command always maps
a job to the same folder, whatever the launcher (basic, joblib, submitit) or the job's index.
"""

from __future__ import annotations

import hashlib
import os
import re

MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


def job_dir_name(overrides: str | None, max_len: int = MAX_NAME) -> str:
    """A file-system safe folder name for a job, from its ``override_dirname``.

    Characters other than letters, digits and ``._,=+@-`` become ``_`` (``/`` included, so a
    value never creates sub-folders); a leading ``.`` is dropped (no hidden folders). Names
    longer than ``max_len`` keep their first characters and end in a short hash of the whole
    text, so two different long override sets never share a folder. No overrides -> ``default``.

    >>> job_dir_name("model.layers=4,readout=mean")
    'model.layers=4,readout=mean'
    >>> job_dir_name("paths.x=/a b")
    'paths.x=_a_b'
    """
    text = "" if overrides is None else str(overrides)
    safe = _UNSAFE.sub("_", text).lstrip(".")
    if not safe:
        return "default"
    if len(safe) > max_len:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        safe = f"{safe[:max_len - 11].rstrip(',_')}-{digest}"
    return safe


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """This job's task overrides (``hydra.overrides.task``), or ``[]`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def job_name() -> str | None:
    """The job's readable name from its overrides (its folder name), or ``None`` without any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    name = HydraConfig.get().job.get("override_dirname")
    return job_dir_name(name) if name else None


def global_rank() -> int:
    """The distributed rank of this process from the launcher's environment (0 when alone).

    Lightning's own launcher sets ``RANK``/``LOCAL_RANK`` for the processes it starts; under
    Slurm (submitit with ``tasks_per_node > 1``) each task has ``SLURM_PROCID``.
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return 0
