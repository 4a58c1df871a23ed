"""Hydra's end-of-multirun callback: the sweep's tables and plots, made once.

:class:`ReportOnMultirunEnd` aggregates the sweep dir (:func:`histograph.analysis.aggregate.
aggregate`: ``jobs.csv``, ``summary.csv``, ``summary.md``, ``incomplete.csv``) and plots from the
same tables (:func:`histograph.analysis.plot.plot`: ``depth_accuracy.png``,
``layer_weights.png``, ``dirichlet_energy.png``, ``mad.png``, and to the sweep's W&B group when
its jobs log there). It is registered in ``configs/hydra/default.yaml``
(``hydra.callbacks.report``); ``hydra.callbacks.report.plots=false`` keeps the tables only,
``~hydra.callbacks.report`` turns it off. It never fails the sweep: the jobs' own results must
survive a reporting error, which is logged with the command that retries it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("histograph")


class ReportOnMultirunEnd(Callback):
    """Aggregate, then plot, the sweep dir at the end of every multirun.

    :param plots: also make the figures. (default: ``True``)
    :param wandb: ``auto`` (upload the figures when the jobs logged to W&B), ``on`` or ``off``.
    :param out_dir: where to write (default: the sweep dir).
    """

    def __init__(self, plots: bool = True, wandb: str = "auto",
                 out_dir: str | None = None) -> None:
        self.plots, self.wandb, self.out_dir = plots, wandb, out_dir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # imported here: pandas and matplotlib are needed only once the sweep has ended
        from histograph.analysis.aggregate import aggregate
        from histograph.analysis.plot import plot

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            result = aggregate(sweep_dir, self.out_dir)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            log.error("Aggregating %s failed: %s; run `python -m histograph.analysis.aggregate "
                      "%s` to retry.", sweep_dir, exc, sweep_dir, exc_info=True)
            return
        incomplete = len(result["incomplete"])
        print(result["markdown"], flush=True)
        print(f"[histograph] aggregated {len(result['jobs'])} jobs into "
              f"{len(result['summary'])} rows ({incomplete} failed or missing) -> "
              f"{result['paths']['markdown']}", flush=True)
        if not self.plots:
            return
        try:
            paths = plot(sweep_dir, self.out_dir, wandb=self.wandb, aggregated=result)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            log.error("Plotting %s failed: %s; run `python -m histograph.analysis.plot %s` to "
                      "retry.", sweep_dir, exc, sweep_dir, exc_info=True)
            return
        if paths:
            print(f"[histograph] plots: {', '.join(str(p) for p in paths.values())}", flush=True)
