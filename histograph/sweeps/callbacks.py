"""Hydra callbacks for sweeps.

:class:`AggregateOnMultirunEnd` runs :func:`histograph.aggregate.aggregate` on the sweep dir when
a multirun ends, so every ``python train.py -m ...`` leaves ``jobs.csv``, ``summary.csv``,
``summary.md`` and ``incomplete.csv`` beside its job dirs. It is registered in
``configs/hydra/default.yaml`` (``hydra.callbacks.aggregate``); disable it with
``~hydra.callbacks.aggregate``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("histograph")


class AggregateOnMultirunEnd(Callback):
    """Aggregate the sweep dir at the end of every multirun (never fails the sweep itself).

    :param out_dir: where to write the tables (default: the sweep dir).
    """

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from histograph.aggregate import aggregate

            result = aggregate(sweep_dir, self.out_dir)
        except Exception as exc:  # noqa: BLE001 - the jobs' own results must survive this
            log.error("Aggregating %s failed: %s; run `python -m histograph.aggregate %s` to "
                      "retry.", sweep_dir, exc, sweep_dir, exc_info=True)
            return
        summary = result["summary"]
        incomplete = len(result["incomplete"])
        print(result["markdown"], flush=True)
        print(f"[histograph] aggregated {len(result['jobs'])} jobs into {len(summary)} rows "
              f"({incomplete} failed or missing) -> {result['paths']['markdown']}", flush=True)
