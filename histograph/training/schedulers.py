"""Learning-rate warm-up in front of any epoch-interval schedule (``configs/scheduler/warmup.yaml``).

Linear warm-up is a standard remedy for attention models whose first large steps push the
logits into saturation (Goyal et al., 2017, "Accurate, Large Minibatch SGD", Sec. 2.2). torch
has the pieces (:class:`~torch.optim.lr_scheduler.LinearLR` and
:class:`~torch.optim.lr_scheduler.SequentialLR`) but both need the optimizer, which Hydra cannot
hand to a nested scheduler config; this factory wires them, nothing more::

    lr_e = lr * (start_factor + (1 - start_factor) * e / epochs)   for e < epochs
    lr_e = then(e - epochs)                                         afterwards

The schedule after the warm-up counts its epochs from the end of the warm-up (``StepLR(50)``
after 5 warm-up epochs halves the rate at epoch 55).
"""

from __future__ import annotations

from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, SequentialLR

from histograph.errors import UserError


def linear_warmup(optimizer: Optimizer, *, epochs: int = 5, start_factor: float = 0.01,
                  then: Callable[..., LRScheduler] | None = None) -> LRScheduler:
    """Ramp the learning rate linearly from ``start_factor * lr`` to ``lr`` over ``epochs``
    epochs, then follow ``then`` (a partial scheduler taking ``optimizer``; ``None``: constant).

    :param optimizer: the optimizer whose parameter groups' ``lr`` is the target rate.
    :param epochs: warm-up length in epochs (the scheduler steps once per epoch).
    :param start_factor: fraction of the target rate in the first epoch, in (0, 1].
    :param then: the schedule after the warm-up, e.g. ``partial(StepLR, step_size=50)``.
    """
    if int(epochs) != epochs or epochs < 1:
        raise UserError(f"scheduler.epochs={epochs} is not a warm-up length: give a whole "
                        f"number of epochs >= 1 (or scheduler=none / step for no warm-up).")
    if not 0.0 < start_factor <= 1.0:
        raise UserError(f"scheduler.start_factor={start_factor} must lie in (0, 1]: the first "
                        f"epoch runs at start_factor * optimizer.lr.")
    warm = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=int(epochs))
    after = (then(optimizer=optimizer) if then is not None
             else ConstantLR(optimizer, factor=1.0, total_iters=0))
    return SequentialLR(optimizer, schedulers=[warm, after], milestones=[int(epochs)])
