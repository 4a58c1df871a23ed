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
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        # under DDP every rank must stop together (a lone rank would leave the others waiting
        # in the gradient all-reduce); a no-op on one device
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            what = f"the training loss became {_kind(loss)}" if bad else \
                "the training loss became non-finite on another process"
            self._stop(trainer, what)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if not self.check_gradients:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: inf gradients are expected, the scaler skips the step
        # the optimizer's flat parameter lists: walking the module tree every step is slow
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False, foreach=True)
        if not bool(torch.isfinite(norm)):
            self._stop(trainer, f"the gradients became {_kind(norm)} (the loss was finite)")

    @staticmethod
    def _stop(trainer: pl.Trainer, what: str) -> None:
        batch = trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        where = f"epoch {trainer.current_epoch}, batch {batch} (global step {trainer.global_step})"
        written = [p for cb in trainer.checkpoint_callbacks
                   for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))]
        last = next((p for p in written if p and Path(p).name == "last.ckpt"), "")
        if last and Path(last).exists():
            kept = f"the last good checkpoint is {last}, written before this step"
        else:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"Training stopped at {where}: {what}; no update was applied and {kept}. Lower "
            f"optimizer.lr or set trainer.gradient_clip_val, then start again in a fresh run "
            f"folder (or pass resume=false).")


def _kind(value: Tensor) -> str:
    return "NaN" if bool(torch.isnan(value.detach()).any()) else "infinite"
