"""Signals and run folders: a run that is told to stop says so, and no two runs share a folder.

**Signals.** ``SIGTERM`` (``kill``, ``timeout``, Slurm at a time limit or preemption, after its
grace period), ``SIGUSR1`` and ``SIGUSR2`` (Slurm's ``--signal``, submitit's requeue signal) and,
while the trainer fits, ``SIGINT`` (Ctrl+C) only set a flag; :class:`StopOnSignal` raises
:class:`RunInterrupted` at the next batch boundary, so nothing is stopped half-written.
``checkpoints/last.ckpt`` already holds the last *completed* epoch (it is written, atomically,
after every epoch, with the RNG states); the interrupted epoch is redone on resume, which makes a
resumed run end bit-identical to an uninterrupted one. The run then writes ``interrupted.json``
(:func:`write_interrupted`) and the command line exits with :data:`EXIT_INTERRUPTED` (75,
``EX_TEMPFAIL``: "interrupted, resumable"; 130 for Ctrl+C) instead of Lightning's silent exit 0
(its ``SIGTERMException`` is a ``SystemExit`` without a code). A handler that was installed
before (submitit's requeue handler on ``SIGUSR2``) is still called after the flag is set.

Lightning's own Slurm auto-requeue is not used: it would call ``scontrol requeue`` on
``SIGUSR1`` beside submitit's requeue (docs/sweeps.md).

**Run folders.** :class:`RunDirLock` holds an exclusive ``flock`` on ``<run dir>/.lock`` for the
whole run (released by the kernel when the process dies, even by ``SIGKILL``): a second process
on the same folder stops with one sentence naming the running PID instead of "resuming" a run
that is still training. DDP ranks other than 0 share their rank 0's folder and take no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl

from histograph.errors import RunInterrupted, UserError
from histograph.utils import atomic_write_json

__all__ = ["RunDirLock", "RunInterrupted", "SignalFlag", "StopOnSignal", "write_interrupted"]

log = logging.getLogger("histograph")

#: The signals that stop a run gracefully (SIGINT only while the trainer fits).
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
INTERRUPTED_FILE = "interrupted.json"
#: A stopping signal this process received outside a run (between the jobs of a sweep,
#: :func:`histograph.sweeps.jobs.stop_between_jobs`): the next :class:`SignalFlag` starts set.
_pending: int | None = None


def note_stop(signum: int) -> None:
    """Record a stopping signal that arrived while no run was there to catch it."""
    global _pending
    if _pending is None:
        _pending = signum


class SignalFlag:
    """Records the first stopping signal; a context manager that installs the handlers.

    :param signals: the signals to catch (default :data:`SIGNALS`).
    """

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning("Received %s: stopping at the next batch (resumable from "
                        "checkpoints/last.ckpt).", signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous) and previous is not self.handle:
            previous(signum, frame)  # e.g. submitit's checkpoint-and-requeue on SIGUSR2

    def install(self, signum: int) -> None:
        self._previous[signum] = signal.signal(signum, self.handle)

    def restore(self, signum: int) -> None:
        if signum in self._previous:
            signal.signal(signum, self._previous.pop(signum))

    def check(self) -> None:
        """Raise :class:`RunInterrupted` when a signal was received."""
        if self.received is not None:
            raise RunInterrupted(self.received)

    def __enter__(self) -> "SignalFlag":
        for signum in self.signals:
            self.install(signum)
        if self.received is None and _pending is not None:
            self.received = _pending  # told to stop before this run began: stop at once
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum in list(self._previous):
            self.restore(signum)


class StopOnSignal(pl.Callback):
    """Stop training (and testing) at the next batch boundary once ``flag`` is set; catch
    ``SIGINT`` while fitting (a second Ctrl+C then stops at once, as usual).

    Under DDP the decision is all-reduced so that every rank stops at the same step (one
    collective per step, only when there are several processes).
    """

    def __init__(self, flag: SignalFlag) -> None:
        self.flag = flag

    def _check(self, trainer: pl.Trainer) -> None:
        stop = self.flag.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop and self.flag.received is None:
                self.flag.received = signal.SIGTERM  # another rank was told to stop
        if stop:
            self.flag.check()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flag.install(signal.SIGINT)
        self._check(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flag.restore(signal.SIGINT)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.flag.restore(signal.SIGINT)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._check(trainer)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check(trainer)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                            batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check(trainer)


def write_interrupted(output_dir: Path, exc: RunInterrupted, module: pl.LightningModule) -> Path:
    """``interrupted.json``: the signal, the epochs kept in ``last.ckpt``, when and where."""
    last = output_dir / "checkpoints" / "last.ckpt"
    trainer = module._trainer  # None when the signal came before training started
    completed_epochs = int(trainer.current_epoch) if trainer is not None else 0
    path = output_dir / INTERRUPTED_FILE
    atomic_write_json(path, {
        "status": "interrupted",
        "signal": exc.name,
        "completed_epochs": completed_epochs,
        "resume_from": str(last) if last.exists() else None,
        "interrupted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "resume": "run the same command again (same run folder)",
    })
    return path


class RunDirLock:
    """An exclusive lock on a run folder for the lifetime of a run (see the module docstring).

    :param output_dir: the run folder.
    :param enabled: ``False`` for DDP ranks other than 0 (they share rank 0's folder).
    :raises UserError: on entering, when another live process holds the folder.
    
    """

    def __init__(self, output_dir: Path, enabled: bool = True) -> None:
        self.path = Path(output_dir) / ".lock"
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> "RunDirLock":
        if not self.enabled:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"The run folder {self.path.parent} is in use by {holder}; wait "
                            f"for that run to end, or give this one another folder "
                            f"(hydra.run.dir=...).") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
