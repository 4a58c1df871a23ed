r"""Parameter budgets: choose the hidden width so that every depth has about ``N`` weights.

Benchmarking GNNs (Dwivedi et al., JMLR 2023, "Benchmarking Graph Neural Networks") compares
architectures at fixed budgets (100k / 500k parameters) by adjusting each model's hidden width.
``model.param_budget=N`` does the same across depths, so that in a depth sweep a deeper model
neither wins nor loses just by having more weights. For depth :math:`K` and budget :math:`N`,

.. math::
    h^\star(K) = \operatorname*{arg\,min}_{h \in s\mathbb{N},\; h \le h_{max}}
                 \bigl|\,P_K(h) - N\,\bigr|

where :math:`P_K(h)` is the parameter count of the *whole* network (backbone, readout and head,
built exactly as training builds it) at width :math:`h`, and :math:`s` is the step every width
must be a multiple of (attention heads). :math:`P_K` increases with :math:`h` (quadratically for
GIN/GCN layers), so a binary search over the multiples of :math:`s` finds the crossing and the
closer of its two neighbours. Probes are built on PyTorch's ``meta`` device: no memory is
allocated and no weights are initialised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

MAX_WIDTH = 8192


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def width_step(divisors: Iterable[int | None]) -> int:
    """The smallest width step that every given divisor (e.g. attention heads) divides."""
    values = [int(d) for d in divisors if d]
    return math.lcm(*values) if values else 1


def meta_count(build: Callable[[], torch.nn.Module]) -> int:
    """Parameter count of the module ``build()`` returns, built on the ``meta`` device."""
    with torch.device("meta"):
        return count_parameters(build())


def fit_width(num_params: Callable[[int], int], budget: int, step: int = 1,
              max_width: int = MAX_WIDTH) -> int:
    """The multiple of ``step`` whose parameter count is closest to ``budget``.

    :param num_params: ``width -> parameter count``; must increase with the width.
    :param budget: the target number of parameters ``N``.
    :param step: every candidate width is a multiple of this (e.g. ``lcm`` of attention heads).
    :param max_width: the largest width tried.
    :raises ValueError: when even the smallest width exceeds the budget, or the largest one
        stays below it.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"param_budget must be a positive integer, got {budget!r}.")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    lo, hi = 1, max(1, max_width // step)  # candidate widths are k * step, k in [lo, hi]
    smallest = num_params(lo * step)
    if smallest > budget:
        raise ValueError(f"param_budget={budget} is below the smallest model at this depth "
                        f"({smallest} parameters at hidden={lo * step}); raise the budget or "
                        f"lower model.layers.")
    largest = num_params(hi * step)
    if largest < budget:
        raise ValueError(f"param_budget={budget} needs a width above {hi * step} "
                        f"({largest} parameters there); lower the budget.")
    counts = {lo: smallest, hi: largest}
    while hi - lo > 1:  # invariant: P(lo) <= budget <= P(hi)
        mid = (lo + hi) // 2
        counts[mid] = num_params(mid * step)
        if counts[mid] <= budget:
            lo = mid
        else:
            hi = mid
    best = lo if budget - counts[lo] <= counts[hi] - budget else hi
    return best * step
