"""A CSV logger that survives a crash and a resume without losing rows.

Lightning's ``CSVLogger`` has two habits that lose a resumed run's log: it buffers rows and writes
them every 100 steps (a killed job loses everything since the last flush), and when its folder
already holds a ``metrics.csv`` it deletes that file (a resumed job keeps only the epochs after the
resume). :class:`ResumableCSVLogger` writes at every logging call (rows are logged at epoch ends
and every ``trainer.log_every_n_steps`` steps, so this costs little) and, when told that the run
resumes after epoch ``e`` (:meth:`ResumableCSVLogger.resume_after`), keeps the rows of epochs
``<= e`` and drops the later ones and those without an epoch (logged after training), all of
which the resumed run logs again. The file is rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Iterable

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from histograph.utils import atomic_write_text


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is trimmed, not deleted."""

    def __init__(self, log_dir: str, keep_through_epoch: int | None) -> None:
        self._keep_through_epoch = keep_through_epoch
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._keep_through_epoch is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            reader = csv.DictReader(fh)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if _epoch(row) <= self._keep_through_epoch]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, out.getvalue())
        self.metrics_keys = sorted(keys)


def _epoch(row: dict[str, str]) -> float:
    """A row's epoch; rows without one (logged after training, e.g. diagnostics) count as last:
    the resumed run logs them again."""
    try:
        return float(row.get("epoch") or "")
    except ValueError:
        return math.inf


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that flushes at every logging call and keeps earlier epochs on resume.

    Same arguments as :class:`~lightning.pytorch.loggers.CSVLogger`; ``flush_logs_every_n_steps``
    defaults to 1.
    """

    def __init__(self, *args, flush_logs_every_n_steps: int = 1, **kwargs) -> None:
        super().__init__(*args, flush_logs_every_n_steps=flush_logs_every_n_steps, **kwargs)
        self._keep_through_epoch: int | None = None

    def resume_after(self, epoch: int) -> None:
        """Declare that the run resumes from a checkpoint written at the end of ``epoch``.

        Must be called before anything is logged (the writer is created on first use).
        """
        if self._experiment is not None:
            raise RuntimeError("resume_after() must be called before the logger is used")
        self._keep_through_epoch = int(epoch)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(self.log_dir, self._keep_through_epoch)
        return self._experiment


def resume_loggers(loggers: Iterable[Logger], epoch: int) -> None:
    """Tell each :class:`ResumableCSVLogger` of ``loggers``: the run resumes after ``epoch``."""
    for logger in loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.resume_after(epoch)
