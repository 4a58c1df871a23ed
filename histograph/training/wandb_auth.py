"""Keep W&B from blocking or failing a run when it has no credentials.

``wandb.init`` in online mode without an API key either stops at an interactive login prompt (when
the job has a terminal: an ``srun --pty`` shell, tmux, a notebook) or raises ``UsageError`` (batch
jobs). Neither should cost an overnight run: :func:`wandb_online_possible` tells whether online
logging can start without a prompt, and :func:`histograph.training.loggers.build_loggers`
falls back to offline logging (``<run dir>/wandb/offline-run-*``, uploaded later with
``wandb sync``) with a warning when it cannot.
"""

from __future__ import annotations

import os

OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_online_possible() -> bool:
    """Whether ``wandb.init`` would find credentials without prompting.

    True when ``WANDB_MODE`` already makes W&B offline/disabled (nothing to check), when
    ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE`` is set, or when the ``.netrc`` file that
    ``wandb login`` writes (``NETRC`` or ``~/.netrc``) holds a key for ``WANDB_BASE_URL``. Never
    prompts, never touches the network, and leaves W&B's settings alone (creating W&B's settings
    singleton here would freeze ``WANDB_MODE`` before the logger sets it).
    """
    if os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:  # a wandb without this module: let wandb decide
        return True
    host = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    try:
        return read_netrc_auth(host=host) is not None
    except Exception:  # noqa: BLE001 - a malformed entry: wandb.init would fail as well
        return False
