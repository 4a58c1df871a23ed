"""The readout contract shared by every readout of the project.

A readout is built as ``Readout(in_channels, history_len, **options)`` and called as
``readout(history, batch, num_graphs)`` where ``history`` is the backbone's list of
``history_len`` node-state tensors ``[N, in_channels]`` (or the same stacked as ``[N, L, D]``,
as the frozen-backbone cache stores it) and ``batch`` is PyG's sorted graph-index vector. It
returns graph embeddings ``[num_graphs, out_channels]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

History = Sequence[Tensor] | Tensor


def history_entry(history: History, index: int) -> Tensor:
    """Entry ``index`` of a history given as a list or as a stacked ``[N, L, D]`` tensor."""
    return history[index] if not isinstance(history, Tensor) else history[:, index]


def history_length(history: History) -> int:
    """Number of entries ``L`` of a history (list or stacked tensor)."""
    return len(history) if not isinstance(history, Tensor) else history.size(1)


class Readout(torch.nn.Module):
    """Base class: stores ``in_channels``/``history_len``/``out_channels``, checks the length."""

    def __init__(self, in_channels: int, history_len: int, out_channels: int | None = None):
        super().__init__()
        self.in_channels = int(in_channels)
        self.history_len = int(history_len)
        self.out_channels = int(out_channels if out_channels is not None else in_channels)

    def check(self, history: History) -> None:
        if history_length(history) != self.history_len:
            raise ValueError(f"{self.__class__.__name__} was built for a history of "
                             f"{self.history_len} entries but got {history_length(history)}.")

    def extra_repr_args(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr_args()
        return f"{self.__class__.__name__}({self.in_channels}{', ' + extra if extra else ''})"
