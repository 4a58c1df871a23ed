"""The readout contract shared by every readout of the project.

A readout is built as ``Readout(in_channels, history_len, **options)`` and called as
``readout(history, batch, num_graphs=None, *, return_layer_weights=False)`` where ``history`` is
the backbone's list of ``history_len`` node-state tensors ``[N, in_channels]`` (or the same
stacked as ``[N, L, D]``, as the frozen-backbone cache stores it) and ``batch`` is PyG's sorted
graph-index vector. It returns graph embeddings ``[num_graphs, out_channels]``, and with
``return_layer_weights=True`` the pair ``(embeddings, layer_weights)`` where ``layer_weights`` is
``[num_graphs, history_len]`` for readouts that weight the history's layers (HISTOGRAPH's
:math:`\\alpha`) and ``None`` for the others.

As PyG's :class:`~torch_geometric.nn.aggr.Aggregation` does, the base class's ``__call__``
checks the input once and infers ``num_graphs`` (one host sync) when it is not given, so a
subclass's ``forward(history, batch, num_graphs)`` always receives a checked history and an
``int``. ``forward`` returns the embeddings, or ``(embeddings, layer_weights)``; the base class
hands callers what they asked for.

Readouts that can also classify *nodes* (the node-classification task) implement
``node_states(history, batch, num_graphs)`` with the same return convention, called through
:meth:`Readout.nodes`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from histograph.nn.precision import autocast_off, fp32

History = Sequence[Tensor] | Tensor


def history_entry(history: History, index: int) -> Tensor:
    """Entry ``index`` of a history given as a list or as a stacked ``[N, L, D]`` tensor."""
    return history[index] if not isinstance(history, Tensor) else history[:, index]


def history_length(history: History) -> int:
    """Number of entries ``L`` of a history (list or stacked tensor)."""
    return len(history) if not isinstance(history, Tensor) else history.size(1)


def _split(out: Tensor | tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    return out if isinstance(out, tuple) else (out, None)


class Readout(torch.nn.Module):
    """Base class of every readout: sizes, input checks, ``num_graphs``, layer weights.

    ``reads_history`` says whether the readout sees the history's earlier entries (``True``:
    HISTOGRAPH, JK) or only the last one (``False``: the pooling readouts); the collapse check
    uses it to tell an over-smoothed last layer from an optimisation failure.

    Args:
        in_channels (int): width :math:`D` of every history entry.
        history_len (int): number of history entries :math:`L` (message-passing layers + 1).
        out_channels (int, optional): embedding width (default: ``in_channels``).
    """

    reads_history: bool = True

    def __init__(self, in_channels: int, history_len: int,
                 out_channels: int | None = None) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels!r}; pass the node "
                             f"width.")
        if isinstance(history_len, bool) or int(history_len) < 1:
            raise ValueError(f"history_len must be >= 1 (number of layers + 1), got "
                             f"{history_len!r}.")
        self.in_channels = int(in_channels)
        self.history_len = int(history_len)
        self.out_channels = int(out_channels if out_channels is not None else in_channels)

    # ------------------------------------------------------------------ the contract
    def check(self, history: History) -> None:
        """Raise ``ValueError`` unless ``history`` has ``history_len`` entries of width
        ``in_channels`` (a list of ``[N, D]`` tensors or one ``[N, L, D]`` tensor)."""
        if isinstance(history, Tensor):
            shape = list(history.shape)
            ok = (history.dim() == 3 and history.size(1) == self.history_len
                  and history.size(2) == self.in_channels)
        else:
            n = history[0].size(0) if len(history) else 0
            shape = [n, len(history), history[0].size(-1) if len(history) else 0]
            ok = len(history) == self.history_len and all(
                h.dim() == 2 and h.size(1) == self.in_channels for h in history)
        if not ok:
            raise ValueError(f"{type(self).__name__} was built for a history of "
                             f"{self.history_len} entries of width {self.in_channels} (shape "
                             f"[N, {self.history_len}, {self.in_channels}]) but got shape "
                             f"{shape}; pass the input embedding plus every layer's output.")

    @staticmethod
    def infer_num_graphs(batch: Tensor) -> int:
        """``batch.max() + 1`` (0 for an empty batch): one host sync."""
        return int(batch.max()) + 1 if batch.numel() else 0

    #: ``True``: the whole readout runs in fp32 under autocast (its reductions over nodes are
    #: exact; histograph/nn/precision.py); a readout that manages its own precision sets False.
    full_precision: bool = True

    def __call__(self, history: History, batch: Tensor, num_graphs: int | None = None, *,
                 return_layer_weights: bool = False):
        self.check(history)
        if num_graphs is None:
            num_graphs = self.infer_num_graphs(batch)
        if self.full_precision:
            first = history_entry(history, 0)
            with autocast_off(first):
                history = fp32(history) if isinstance(history, Tensor) \
                    else [fp32(h) for h in history]
                x, weights = _split(super().__call__(history, batch, num_graphs))
        else:
            x, weights = _split(super().__call__(history, batch, num_graphs))
        return (x, weights) if return_layer_weights else x

    def nodes(self, history: History, batch: Tensor | None = None, num_graphs: int = 1, *,
              return_layer_weights: bool = False):
        """Per-node states ``[N, out_channels]`` (node classification): :meth:`node_states`
        checked and called like ``__call__`` calls ``forward``; ``batch`` defaults to one graph.

        :raises TypeError: for a readout that pools whole graphs only.
        """
        if not self.classifies_nodes:
            raise TypeError(f"{type(self).__name__} pools whole graphs and has no per-node "
                            f"states.")
        self.check(history)
        if batch is None:
            first = history_entry(history, 0)
            batch = first.new_zeros(first.size(0), dtype=torch.long)
        x, weights = _split(self.node_states(history, batch, num_graphs))
        return (x, weights) if return_layer_weights else x

    @property
    def classifies_nodes(self) -> bool:
        """Whether this readout implements :meth:`node_states`."""
        return type(self).node_states is not Readout.node_states

    def node_states(self, history: History, batch: Tensor, num_graphs: int
                    ) -> Tensor | tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    # ------------------------------------------------------------------ repr
    def extra_repr_args(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr_args()
        return f"{self.__class__.__name__}({self.in_channels}{', ' + extra if extra else ''})"
