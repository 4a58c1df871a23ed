"""Metrics: torchmetrics accuracy for single-label sets, the official OGB Evaluator for OGB sets."""

from __future__ import annotations

import os

import torch
import torchmetrics
from torch import Tensor

from histograph.errors import unknown_choice

METRICS = ("acc", "rocauc", "ap")


class OGBMetric(torchmetrics.Metric):
    """Epoch-level OGB metric: collects logits and labels, then calls ``ogb``'s ``Evaluator``.

    The Evaluator masks unlabelled (NaN) entries and averages over tasks exactly as the OGB
    leaderboards do; wrapping it as a torchmetrics ``Metric`` gives epoch accumulation and DDP
    synchronisation for free.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, dataset_name: str, metric: str) -> None:
        super().__init__()
        os.environ.setdefault("OUTDATED_IGNORE", "1")
        from ogb.graphproppred import Evaluator

        self.evaluator = Evaluator(dataset_name)
        self.metric = metric
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.preds.append(logits.detach().float())
        self.target.append(target.detach().float().view_as(logits))

    def compute(self) -> Tensor:
        preds = torchmetrics.utilities.dim_zero_cat(self.preds).cpu().numpy()
        target = torchmetrics.utilities.dim_zero_cat(self.target).cpu().numpy()
        value = self.evaluator.eval({"y_true": target, "y_pred": preds})[self.metric]
        return torch.tensor(float(value))


def make_metric(metric: str, task: str, num_outputs: int, dataset_name: str) -> torchmetrics.Metric:
    """The metric object for one split: ``acc`` for multiclass sets, OGB's for ``ogbg-*`` sets."""
    if metric not in METRICS:
        raise unknown_choice("metric", metric, METRICS)
    if task == "multiclass":
        if metric != "acc":
            raise ValueError(f"multiclass datasets are scored by accuracy, not {metric!r}")
        # validate_args=False: no per-step input checks (torch.unique + host syncs); the
        # module always passes logits [B, C] and integer targets [B]
        return torchmetrics.classification.MulticlassAccuracy(num_classes=num_outputs,
                                                              average="micro",
                                                              validate_args=False)
    return OGBMetric(dataset_name, metric)
