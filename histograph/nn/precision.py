"""Mixed precision (``trainer=bf16``) without wrong sums: reductions over nodes stay in fp32.

Under ``torch.autocast`` a linear layer returns bf16 (8 bits of mantissa), and a scatter-add over
bf16 values accumulates in bf16 on CUDA (atomics in the output's dtype): a count or a degree stops
growing at 256 (256 + 1 == 256 in bf16), a sum of 430 ones is 256, a mean over a 300-node graph
is off by tens of percent. The CPU kernel accumulates in fp32 and hides this, so it is made
impossible by construction rather than tested on a GPU:

* message passing aggregates fp32 values (:func:`fp32`): GIN-style convolutions get an fp32 input
  (their sum is fp32, their MLP still runs in bf16); convolutions that aggregate *after* their
  linear layer (GCN, SAGE, GAT: degrees, means, attention softmax) run with autocast off
  (:func:`autocast_off`; on a GPU their matmuls then use TF32, ``trainer.matmul_precision``);
* readouts run in fp32 by default (:class:`~histograph.nn.readouts.base.Readout`); HISTOGRAPH
  keeps its projection and node attention in bf16 and computes its layer weights in fp32;
* logged layer weights are accumulated in fp32 (the LightningModule).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor


def autocast_active(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``cpu``, ``cuda``)."""
    return torch.is_autocast_enabled(device_type)


@contextlib.contextmanager
def autocast_off(like: Tensor) -> Iterator[None]:
    """Autocast disabled for ``like``'s device type (a no-op when it is off)."""
    device = like.device.type
    if device in ("cpu", "cuda") and autocast_active(device):
        with torch.autocast(device_type=device, enabled=False):
            yield
    else:
        yield


def fp32(x: Tensor | None) -> Tensor | None:
    """``x`` as float32 when it is a lower-precision float (bf16, fp16), else unchanged."""
    if x is not None and x.is_floating_point() and x.dtype in (torch.bfloat16, torch.float16):
        return x.float()
    return x
