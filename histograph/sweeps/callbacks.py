"""Hydra's multirun callbacks: the sweep's tables and plots, made once, and its exit code; a stop
signal that reaches every job of a parallel sweep.

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

:class:`ForwardStopSignals` (``hydra.callbacks.stop``) covers the joblib launcher, whose jobs run
in worker processes: ``kill <pid>`` (or a scheduler's ``SIGTERM``) reaches only the parent, which
would die at once, leave its workers training as orphans and never write the summary. With the
callback the parent passes ``SIGTERM``/``SIGUSR1``/``SIGUSR2`` on to its workers, whose jobs stop
resumably at the next batch (``interrupted.json``) and start no further job; the parent then
aggregates as usual and exits 75. Other launchers run the jobs in the process that gets the
signal (basic) or outside it (submitit: Slurm signals the jobs itself), so it does nothing there.
"""

from __future__ import annotations

import logging
import signal
import threading
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


class ForwardStopSignals(Callback):
    """Pass the stopping signals a joblib sweep's parent receives on to its worker processes
    (see the module docstring).

    A worker is signalled once it catches the signal (its first job has installed the handlers,
    :func:`histograph.sweeps.jobs.stop_between_jobs`): a worker still starting up would be killed
    by it, which ends the whole sweep with joblib's ``TerminatedWorkerError``. A thread therefore
    keeps passing the signal on, every :attr:`POLL_S` seconds, to each worker as soon as it is
    ready, until the sweep ends. The workers' resource trackers are left alone.
    """

    POLL_S = 0.2

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._signum: int | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the joblib launcher pickles the callbacks into every task: nothing to carry

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from histograph.training.interrupt import SIGNALS

        if "joblib" not in str(config.hydra.launcher.get("_target_", "")).lower():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self.forward)

    def forward(self, signum: int, frame: Any) -> None:
        if self._signum is not None:
            return
        self._signum = signum
        log.warning("Received %s: passing it on to the sweep's workers; their jobs stop at the "
                    "next batch (resumable), then the sweep writes its summary.",
                    signal.Signals(signum).name)
        self._thread = threading.Thread(target=self._pass_on, name="histograph-stop",
                                        daemon=True)
        self._thread.start()

    def _pass_on(self) -> None:
        import psutil

        signum, sent = self._signum, set()
        assert signum is not None
        while not self._done.is_set():
            for worker in psutil.Process().children():
                if worker.pid in sent or not _catches(worker, signum):
                    continue
                try:
                    worker.send_signal(signum)
                except psutil.Error:  # ended meanwhile
                    pass
                sent.add(worker.pid)
            self._done.wait(self.POLL_S)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def _catches(process: Any, signum: int) -> bool:
    """Whether ``process`` has a handler for ``signum`` (Linux: ``SigCgt`` of
    ``/proc/<pid>/status``; elsewhere assumed) and is not a resource tracker."""
    try:
        if any("resource_tracker" in part for part in process.cmdline()):
            return False
    except Exception:  # noqa: BLE001 - psutil.Error: gone or not ours to read
        return False
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return True
