"""Collapse detection: a run that ends predicting (nearly) one class is flagged, never averaged in
silently.

A classifier collapses when its optimisation diverges into the constant predictor: every graph
(or node) gets the majority class, and the training loss sits at the entropy of the class prior
(docs/training.md measures why it happens at Adam lr 0.01: the head's ReLUs all die). Such a run
still has a test figure, usually the majority rate, which decides a comparison for the wrong
reason. Per validation round the LightningModule records (:class:`ClassCounter`, no host sync
per step), from the epoch's training batches:

* ``pred_majority``: the share of the training predictions in the most predicted class;
* ``label_majority``: the share of the training labels in their most common class;
* ``loss_vs_prior``: the epoch's training loss divided by the entropy of the training labels'
  class prior (1.0: the model has learnt nothing beyond the prior).

A round is *collapsed* when ``pred_majority >= MAJORITY`` while the labels are not that
unbalanced themselves (``label_majority < MAJORITY``), or when ``loss_vs_prior >= LOSS_RATIO``.
:func:`collapse_verdict` flags a run whose last :data:`ROUNDS` rounds are all collapsed (all of
them when it has fewer): ``collapsed``, ``collapsed_from`` (the trainer epoch that final collapsed
stretch starts at) and whether the selected round itself is collapsed (``collapsed_at_selected``).
Multi-label tasks (OGB) are not judged (``None``).

A collapsed run also gets a ``collapse_cause`` (:func:`collapse_cause`): ``"over_smoothing"``
when its readout sees only the last layer and that layer's node states are nearly parallel (MAD
below :data:`OVERSMOOTHED_MAD` on the evaluation graphs, :mod:`histograph.diagnostics`): such a
run learnt nothing because its input carries nothing a last-layer readout can use, and no
optimiser setting is expected to fix that (docs/training.md: plain GCN-64 on IMDB-BINARY). Any
other collapsed run is ``"optimisation"``. Both stay ``collapsed``: the label names the fix, it
does not excuse the run.

The thresholds are docs/training.md's, read off 92 diagnosis runs: collapsed runs sit at
loss / H = 0.997-1.004 in each of their last 3 epochs, every other run at <= 0.967; runs caught
only by the majority test have >= 0.977 of their predictions in one class, while the highest
sustained share of a run that is not collapsed was 0.91. One round is not enough: learning runs
show isolated one-class epochs early on. (The diagnosis counted an eval-mode pass over the
training set; here the training batches' own predictions are counted, which costs nothing extra;
a dead head, the collapse's end state, predicts a constant in both modes.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from histograph.nn.backbones import residual_mode

#: A round whose selection-split predictions are at least this much one class is collapsed.
MAJORITY = 0.95
#: ... and so is one whose training loss is at least this fraction of the prior's entropy.
LOSS_RATIO = 0.99
#: A run is collapsed when its last this many rounds are.
ROUNDS = 3
#: A collapsed last-layer readout whose last history entry has a MAD below this is labelled
#: over-smoothed. docs/training.md ("Over-smoothed or collapsed?"): plain GCN-64 on IMDB-BINARY,
#: where 7 of 10 readouts learnt nothing, ends at 0.015-0.023; GCN-32 there at 0.035-0.043 and
#: GIN-8/64 at 0.036-0.052 (their last-layer readouts trained); MUTAG, PROTEINS and NCI1 stacks
#: at 0.07-0.63, except MUTAG GIN-64 (0.020). A hint for the fix, not a proof: MAD is a continuum.
OVERSMOOTHED_MAD = 0.03
#: The history keys this module adds (one value per validation round).
KEYS = ("pred_majority", "label_majority", "loss_vs_prior")


class ClassCounter:
    """Per split, how often each class is predicted and labelled (device tensors, summed over
    an epoch's batches with ``scatter_add``: no host sync per step)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self._counts: dict[str, Tensor] = {}

    def update(self, split: str, logits: Tensor, y: Tensor) -> None:
        rows = torch.stack([logits.detach().argmax(-1), y.view(-1)])  # [2, n]
        counts = torch.zeros(2, self.num_classes, dtype=torch.long, device=logits.device)
        counts.scatter_add_(1, rows, torch.ones_like(rows))
        previous = self._counts.get(split)
        self._counts[split] = counts if previous is None else previous + counts

    def pop(self, split: str) -> Tensor | None:
        """``[2, C]`` (predicted, labelled) counts of ``split`` this epoch, then reset."""
        return self._counts.pop(split, None)

    def reset(self) -> None:
        self._counts.clear()


def round_values(train: Tensor, train_loss: float | None) -> dict[str, float]:
    """The three per-round values from an epoch's training counts ``[2, C]`` and loss."""
    pred, labels = train.double()
    prior = labels / labels.sum().clamp(min=1)
    entropy = float(-(prior[prior > 0] * prior[prior > 0].log()).sum())
    return {"pred_majority": float(pred.max() / pred.sum().clamp(min=1)),
            "label_majority": float(prior.max()),
            "loss_vs_prior": train_loss / entropy if train_loss is not None and entropy > 0
            else math.nan}


def round_flags(pred_majority: float, label_majority: float, loss_vs_prior: float
                ) -> tuple[bool, bool]:
    """``(one_class, at_prior)`` of one round: which of the two tests (module docstring) holds."""
    one_class = pred_majority >= MAJORITY and label_majority < MAJORITY
    at_prior = not math.isnan(loss_vs_prior) and loss_vs_prior >= LOSS_RATIO
    return one_class, at_prior


def collapsed_round(pred_majority: float, label_majority: float, loss_vs_prior: float) -> bool:
    """Whether one round is collapsed (see the module docstring)."""
    return any(round_flags(pred_majority, label_majority, loss_vs_prior))


def _flags(history: dict[str, list[float]]) -> list[tuple[bool, bool]] | None:
    """Per round :func:`round_flags` (``None`` without class counts: multi-label tasks)."""
    if not all(history.get(k) for k in KEYS):
        return None
    return [round_flags(*values) for values in zip(*(history[k] for k in KEYS))]


def _final_stretch(flags: list[tuple[bool, bool]]) -> tuple[int, bool]:
    """First round of the final stretch of collapsed rounds, and whether it is a collapse."""
    start = len(flags)
    while start > 0 and any(flags[start - 1]):
        start -= 1
    return start, start < len(flags) and len(flags) - start >= min(ROUNDS, len(flags))


def _signal(flags: list[tuple[bool, bool]], start: int) -> str:
    return "one_class" if all(one for one, _ in flags[start:]) else "loss_at_prior"


def collapse_signal(history: dict[str, list[float]]) -> str | None:
    """Which test holds a collapsed run down: ``"one_class"`` when every round of its final
    collapsed stretch predicts (nearly) one class, else ``"loss_at_prior"`` (the training loss
    stayed at the prior's entropy while the predictions still varied: the model learnt almost
    nothing, but its figures are not a constant predictor's); ``None`` when not collapsed."""
    return collapse_verdict(history, 0)["collapse_signal"] if _flags(history) else None


def end_values(history: dict[str, list[float]]) -> dict[str, float | None]:
    """How close a run's end came to each collapse test: the lowest ``loss_vs_prior`` and the
    lowest ``pred_majority`` over its last :data:`ROUNDS` rounds (``*_end``; ``None`` without
    class counts). The at-prior test flags the run exactly when ``loss_vs_prior_end`` reaches
    :data:`LOSS_RATIO`, the one-class test (balanced labels) when ``pred_majority_end`` reaches
    :data:`MAJORITY`; so a run at 0.98 learnt little yet passes. The thresholds cut a continuum
    (results/README.md section 8: deep NCI1 runs at 0.95-0.99): these columns show where each
    run sits instead of a yes/no."""
    if _flags(history) is None:
        return {"loss_vs_prior_end": None, "pred_majority_end": None}

    def lowest(key: str) -> float | None:  # rounds without a value (NaN) are skipped
        values = [v for v in history[key][-ROUNDS:] if not math.isnan(v)]
        return round(min(values), 4) if values else None

    return {"loss_vs_prior_end": lowest("loss_vs_prior"),
            "pred_majority_end": lowest("pred_majority")}


def collapse_verdict(history: dict[str, list[float]], selected: int) -> dict[str, Any]:
    """``collapsed``, ``collapsed_from`` (trainer epoch), ``collapsed_at_selected`` and
    ``collapse_signal`` (:func:`collapse_signal`) of a run's history (``None`` when the history
    has no class counts: multi-label tasks)."""
    flags = _flags(history)
    if flags is None:
        return {"collapsed": None, "collapsed_from": None, "collapsed_at_selected": None,
                "collapse_signal": None}
    start, collapsed = _final_stretch(flags)
    return {"collapsed": collapsed,
            "collapsed_from": int(history["epoch"][start]) if collapsed else None,
            "collapsed_at_selected": any(flags[selected]),
            "collapse_signal": _signal(flags, start) if collapsed else None}


def collapse_cause(collapsed: bool | None, mad: list[float] | None,
                   reads_history: bool) -> str | None:
    """``"over_smoothing"``, ``"optimisation"`` or ``None`` (not collapsed; see the module
    docstring). ``mad`` is the run's per-history-entry MAD (``None`` when not measured)."""
    if not collapsed:
        return None
    last = mad[-1] if mad else None
    if not reads_history and last is not None and last < OVERSMOOTHED_MAD:
        return "over_smoothing"
    return "optimisation"


def collapse_advice(lr: float | None, readout: str, layers: int, cause: str | None = None,
                    mad_last: float | None = None, pool: str | None = None,
                    residual: bool | str = False) -> str:
    """The likely fix for a collapsed run, from docs/training.md's measurements: above the
    default learning rate, the rate; at it, an over-smoothed last layer under a last-layer
    readout (IMDB-BINARY, plain GCN-64: only the readouts over the whole history trained), a
    sum-pooled JK readout over a deep stack (whose head input grows with depth and graph size),
    a JK readout over a deep post-activation residual stack (whose node states grow with
    depth), or a stack
    that leaves the prior late. ``residual`` is the backbone's ``model.residual`` (``False``,
    ``True``/``"post"`` or ``"pre"``): a fix the run already has is never the advice."""
    mode = residual_mode(residual)
    if lr is None or lr > 1e-3:
        return "Lower optimizer.lr (the default 0.001 trained every screened setting)."
    # the pre-activation residual trained every cell of the deep recipe check (the plain stack
    # flagged 18, the post-activation one 13, all JK-cat: docs/training.md)
    residual_fix = "" if mode == "pre" else "model.residual=pre, "
    if cause == "over_smoothing":
        return (f"Its last layer is over-smoothed (node states nearly parallel: MAD "
                f"{mad_last:.3f} < {OVERSMOOTHED_MAD}) and this readout sees only that layer: "
                f"use {residual_fix}fewer layers, or a readout over the whole history "
                f"(readout=histograph).")
    if readout.startswith("jk") and readout != "jk_max" and layers >= 32 and pool == "sum":
        return ("At this learning rate a sum-pooled JK readout over a deep stack is the likely "
                "cause: try readout.pool=mean.")
    if readout.startswith("jk") and layers >= 32 and mode == "post":
        # each residual layer adds a non-negative (post-ReLU) update, so the node states grow
        # with depth (last layer's mean norm 162-165 at step 0 over 64 layers, 4.1-4.7 plain:
        # results/training/diagnosis/residual/) and a JK readout hands the head all of them:
        # JK-cat collapsed on every depth-64 residual cell of the check, while pooled by mean
        # on the plain stack it trained them (docs/training.md, the residual recipe check).
        return (f"Over a {layers}-layer residual stack the node states grow with depth and "
                f"this JK readout hands the head all of them: try model.residual=pre (its "
                f"history stays normalised and trained every deep cell) or "
                f"readout=histograph.")
    if readout.startswith("jk") and layers >= 32 and mode == "none":
        # jk_max: mean pooling fixed none of its flagged cells (and flagged one more), while
        # either residual form left none flagged (docs/training.md, "JK pooling", the probe of
        # the residual fix and the pre-activation recipe check).
        return (f"At this learning rate a JK readout over {layers} plain layers may not train "
                f"(jk_max collapsed on plain GCN-64 under every probe but a residual backbone): "
                f"try model.residual=pre or readout=histograph.")
    if layers >= 32:
        return (f"At this learning rate a {layers}-layer stack may be over-smoothed (`mad` of "
                f"its last layer near 0 in results.json) or leave the prior late: try more "
                f"epochs, {residual_fix}or a readout over the whole history "
                f"(readout=histograph).")
    return "At this learning rate: try more epochs, then a lower optimizer.lr."
