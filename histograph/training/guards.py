"""Stop a run at the first non-finite loss or gradient, before it can damage a checkpoint.

A diverging run (learning rate too high, an unlucky batch, an ill-conditioned readout) produces a
NaN or infinite loss; one optimizer step later every weight is NaN, the epoch's validation scores
a constant prediction, and ``ModelCheckpoint`` writes those weights into ``last.ckpt``: the
overnight run is lost and a resume starts from garbage. Lightning has no built-in guard for the
training loss (``EarlyStopping(check_finite=True)`` looks at a validation metric only, after the
damage). :class:`FiniteLossGuard` checks the loss before ``backward`` and the gradients before the
optimizer step, and raises :class:`NonFiniteLossError` (a :class:`~histograph.errors.UserError`, so
the command line prints one sentence and exits with status 2). No update with a non-finite
gradient is applied and no checkpoint is written after it, so ``last.ckpt`` stays the last good
one.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor

from histograph.errors import UserError


class NonFiniteLossError(UserError):
    """The training loss or its gradients became NaN or infinite."""


class FiniteLossGuard(pl.Callback):
    """Raise :class:`NonFiniteLossError` at the first non-finite training loss or gradient.

    :param check_gradients: also check the total gradient norm before each optimizer step (a
        finite loss can still have infinite gradients, e.g. through ``sqrt`` at 0). Skipped under
        fp16 mixed precision, whose gradient scaler expects (and skips) infinite gradients.
    :param check_every: look at the values on the host every this many steps (``None``: every
        step on a CPU, where that costs nothing, and every 25 steps on a GPU, where reading a
        value back stalls the device queue once per step). Between looks the finiteness is
        accumulated on the device; the epoch's end always looks, before any checkpoint of the
        epoch is written, so ``last.ckpt`` never holds weights updated from a non-finite
        gradient. On a GPU an update from a non-finite gradient can thus be applied before the
        run stops, and the message names the window of steps.
    """

    def __init__(self, check_gradients: bool = True, check_every: int | None = None) -> None:
        self.check_gradients = check_gradients
        self.check_every = check_every
        self._bad: Tensor | None = None  # device bool: a non-finite value since the last look
        self._what = ""
        self._since = 0  # the global step of the last look

    def _every(self, trainer: pl.Trainer) -> int:
        if self.check_every is not None:
            return max(1, int(self.check_every))
        return 1 if trainer.strategy.root_device.type == "cpu" else 25

    def _check(self, trainer: pl.Trainer, value: Tensor, what: str, note: str = "") -> None:
        """Note whether ``value`` is finite; on a CPU (every step) look at once."""
        finite = torch.isfinite(value.detach()).all()
        if self._every(trainer) == 1:
            if not bool(finite):
                self._stop(trainer, f"{what} became {_kind(value)}{note}", applied=False)
            return
        bad = ~finite
        self._bad = bad if self._bad is None else self._bad | bad
        self._what = self._what or f"{what} became non-finite"

    def _look(self, trainer: pl.Trainer) -> None:
        """Read the accumulated flag (one host sync; all ranks agree under DDP)."""
        bad = self._bad is not None and bool(self._bad)
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            what = self._what if bad else "the loss or gradients became non-finite on another " \
                                          "process"
            self._stop(trainer, f"{what} between global steps {self._since} and "
                                f"{trainer.global_step}", applied=self._every(trainer) > 1)
        self._bad, self._what, self._since = None, "", trainer.global_step

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: Tensor) -> None:
        self._check(trainer, loss, "the training loss")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.check_gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            # fp16 loss scaling: inf gradients are expected, the scaler skips those steps.
            # The optimizer's flat parameter lists: walking the module tree every step is slow.
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                     if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False,
                                                     foreach=True)
                self._check(trainer, norm, "the gradients", " (the loss was finite)")
        every = self._every(trainer)
        if every > 1 and (trainer.global_step + 1) % every == 0:
            self._look(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._look(trainer)  # before the epoch's checkpoints (Lightning runs those last)

    @staticmethod
    def _stop(trainer: pl.Trainer, what: str, applied: bool) -> None:
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        where = f"epoch {trainer.current_epoch}, batch {batch} (global step {trainer.global_step})"
        written = [p for cb in trainer.checkpoint_callbacks
                   for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))]
        last = next((p for p in written if p and Path(p).name == "last.ckpt"), "")
        if last and Path(last).exists():
            kept = f"the last good checkpoint is {last}, written before this step"
        else:
            kept = "no checkpoint had been written yet"
        update = ("updates since the previous check may have used it, no checkpoint was written "
                  "after it") if applied else "no update was applied"
        raise NonFiniteLossError(
            f"Training stopped at {where}: {what}; {update} and {kept}. Lower "
            f"optimizer.lr or set trainer.gradient_clip_val, then start again in a fresh run "
            f"folder (or pass resume=false).")


def _kind(value: Tensor) -> str:
    return "NaN" if bool(torch.isnan(value.detach()).any()) else "infinite"
