"""The project's OmegaConf resolvers and where its configs live.

Resolvers (registered by :func:`register`, which ``import histograph`` calls):

* ``${hg.job_dir:<text>}``: a file-system safe folder name
  (:func:`histograph.sweeps.names.job_dir_name`);
* ``${hg.non_result_overrides:}``: the override keys that do not change a result
  (:func:`histograph.keys.non_result_overrides`), Hydra's ``exclude_keys`` of job folder names;
* ``${hg.root:}``: the default ``paths.root_dir`` (:func:`default_root`);
* ``${hg.run_id:}``: six hex digits drawn once per process (:data:`RUN_ID`), the suffix that keeps
  run folders of the same second apart.

Only OmegaConf is imported here: the command line registers these before any training library.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
#: The checkout (or editable install) root: the folder above the package.
CHECKOUT_DIR = PACKAGE_DIR.parent
#: This process's run-folder suffix (DDP ranks get their rank 0's folder passed explicitly).
RUN_ID = secrets.token_hex(3)


def config_dir() -> str:
    """The folder of ``train.yaml``: ``<checkout>/configs`` in a checkout or editable install,
    else the copy a wheel ships inside the package (``histograph/configs``, see pyproject.toml).
    """
    checkout = CHECKOUT_DIR / "configs"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    return str(PACKAGE_DIR / "configs")


def in_checkout() -> bool:
    """Whether the package runs from a source checkout (``pyproject.toml`` beside it)."""
    return (CHECKOUT_DIR / "pyproject.toml").is_file() and (CHECKOUT_DIR / "configs").is_dir()


def default_root() -> str:
    """Where ``logs/`` and ``data/`` go by default (``paths.root_dir``).

    ``$HISTOGRAPH_ROOT`` when set; else the checkout's root when the package runs from one
    (whatever folder the command is started in); else the current folder (a pip install).
    """
    env = os.environ.get("HISTOGRAPH_ROOT")
    if env:
        return env
    return str(CHECKOUT_DIR) if in_checkout() else os.getcwd()


def register() -> None:
    """Register the ``hg.*`` resolvers with OmegaConf (idempotent)."""
    from histograph.keys import non_result_overrides
    from histograph.sweeps.names import job_dir_name

    for name, fn in (("hg.job_dir", job_dir_name),
                     ("hg.non_result_overrides", non_result_overrides),
                     ("hg.root", default_root),
                     ("hg.run_id", lambda: RUN_ID)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
