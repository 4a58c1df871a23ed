"""Random-number-generator state in checkpoints, so that a resumed run repeats itself exactly.

Lightning restores weights, optimizer, scheduler and loop counters from ``last.ckpt``, but not the
global random streams. Those decide the shuffle order of the next epoch (PyTorch's
``RandomSampler`` and ``DataLoader`` draw their seeds from the global torch generator when the
iterator is created) and every dropout mask. Without them a run killed after epoch ``e`` and
resumed continues with the streams as ``seed_everything`` left them at start-up, and its numbers
drift from those of an uninterrupted run.

:class:`RNGStateCheckpoint` stores the torch (CPU and CUDA), NumPy and Python generator states in
every checkpoint and puts them back when training resumes from one. Everything it stores is a
tensor or a plain Python value, so checkpoints stay loadable with ``torch.load(weights_only=True)``
(NumPy's state array is kept as an ``int64`` tensor, not as an ``ndarray``).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The current states of the torch, CUDA, NumPy and Python generators (weights-only safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore generator states saved by :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    npy = states["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(pl.Callback):
    """Save the global generator states in every checkpoint; restore them on resume.

    Checkpoints are written at the end of an epoch (after its validation), where the next random
    draw is the next epoch's shuffle; restoring the states there makes the resumed epochs draw
    exactly what the uninterrupted run drew. Lightning hands the stored states back whenever it
    restores callbacks from a checkpoint (``trainer.fit(ckpt_path=...)``, and also
    ``trainer.test(ckpt_path=...)``, after which nothing random follows).
    """

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            set_rng_states(state_dict)
