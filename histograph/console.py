"""What a run prints: one plain line per epoch when the output is not a terminal, no library
hints, error lines on a line of their own. Imports no training library at module level.

Known hints are dropped, not warnings that matter: Lightning's "srun is available" (on any
machine with Slurm installed), its litlogger tip, the GPU/TPU availability lines, the "restoring
states / loaded weights / fit stopped" lines of every test, the logging-interval note, "modules
in eval mode" (frozen mode's frozen backbone is meant to be), and PyTorch's LeafSpec deprecation
that Lightning triggers. The training libraries keep every other warning.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

#: Warnings that are hints about the environment, not about the run.
HINT_WARNINGS = (
    r".*The `srun` command is available on your system but is not used.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Found \d+ module\(s\) in eval mode at the start of training.*",
    r".*LeafSpec.*",
    r".*does not have many workers.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*GPU available but not used.*",
    r"The given NumPy array is not writable.*",
)
#: Lightning's INFO lines that repeat in every run.
_HINT_LINES = re.compile(r"^(GPU available|TPU available|HPU available|💡 Tip|Restoring states "
                         r"from the checkpoint|Loaded model weights from|`Trainer.fit` stopped|"
                         r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES|You are using a CUDA device)")


class _DropHints(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _HINT_LINES.match(record.getMessage())


_DROP_HINTS = _DropHints()  # one instance: addFilter ignores a second call, so this is idempotent


def quiet_libraries() -> None:
    """Drop the known hints; Lightning logs through Hydra's handlers only (one log format and
    ``<run dir>/<job>.log``), not through its own stderr handlers as well."""
    # imported here: Lightning installs its stderr handlers at import, which this replaces
    import lightning  # noqa: F401

    for pattern in HINT_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DROP_HINTS)


def say(line: str) -> None:
    """One line on stderr, on a fresh line even when a progress bar left the cursor mid-line."""
    print(f"\n{line}" if sys.stderr.isatty() else line, file=sys.stderr, flush=True)
