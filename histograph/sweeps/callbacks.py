"""Hydra's end-of-multirun callback: the sweep's tables and plots, made once, and its exit code.

:class:`ReportOnMultirunEnd` aggregates the sweep dir (:func:`histograph.analysis.aggregate.
aggregate`: ``jobs.csv``, ``summary.csv``, ``summary.md``, ``incomplete.csv``) and plots from the
same tables (:func:`histograph.analysis.plot.plot`: ``depth_accuracy.png``,
``layer_weights.png``, ``dirichlet_energy.png``, ``mad.png``, and to the sweep's W&B group when
its jobs log there). Then, unless ``exit_zero=true``, a sweep whose jobs did not all finish exits
non-zero (Hydra itself would return 0, since each failure became ``failed.json``): status 75
(:data:`~histograph.errors.EXIT_INTERRUPTED`) when a job was stopped by a signal (re-running the
command resumes it), else 1 when jobs failed or are missing. It is registered in
``configs/hydra/default.yaml`` (``hydra.callbacks.report``); ``hydra.callbacks.report.plots=false``
keeps the tables only, ``~hydra.callbacks.report`` turns it off. A reporting error never fails the
sweep: the jobs' own results must survive it; it is logged with the command that retries it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from histograph.errors import EXIT_INTERRUPTED

log = logging.getLogger("histograph")


def sweep_exit_code(statuses: list[str]) -> int:
    """0 when every job is done; :data:`EXIT_INTERRUPTED` when one was interrupted; else 1."""
    if "interrupted" in statuses:
        return EXIT_INTERRUPTED
    return 0 if all(s == "done" for s in statuses) else 1


class ReportOnMultirunEnd(Callback):
    """Aggregate, then plot, the sweep dir at the end of every multirun; exit non-zero when
    jobs did not finish.

    :param plots: also make the figures. (default: ``True``)
    :param wandb: ``auto`` (upload the figures when the jobs logged to W&B), ``on`` or ``off``.
    :param out_dir: where to write (default: the sweep dir).
    :param exit_zero: return 0 even when jobs failed, are missing or were interrupted.
        (default: ``False``)
    """

    def __init__(self, plots: bool = True, wandb: str = "auto", out_dir: str | None = None,
                 exit_zero: bool = False) -> None:
        self.plots, self.wandb, self.out_dir = plots, wandb, out_dir
        self.exit_zero = exit_zero

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
              f"{len(result['summary'])} rows ({incomplete} failed, interrupted or missing) -> "
              f"{result['paths']['markdown']}", flush=True)
        if self.plots:
            try:
                paths = plot(sweep_dir, self.out_dir, wandb=self.wandb, aggregated=result)
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                log.error("Plotting %s failed: %s; run `python -m histograph.analysis.plot %s` "
                          "to retry.", sweep_dir, exc, sweep_dir, exc_info=True)
                paths = {}
            if paths:
                print(f"[histograph] plots: {', '.join(str(p) for p in paths.values())}",
                      flush=True)
        code = sweep_exit_code(result["jobs"]["status"].tolist())
        if code and not self.exit_zero:
            print(f"[histograph] the sweep did not finish ({incomplete} of "
                  f"{len(result['jobs'])} jobs): exit status {code}; re-run the same command to "
                  f"retry or resume them (hydra.callbacks.report.exit_zero=true returns 0).",
                  flush=True)
            raise SystemExit(code)
