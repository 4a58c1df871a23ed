"""Shared test set-up: offline, one thread, a network guard, and Hydra compose helpers.

Every test composes the real ``configs/`` with Hydra's compose API and shrinks it; data comes from
the data mirror (``../shared/data`` when it exists, set by ``make test``/``.ci/run``) or the
embedded MUTAG copy, staged into a per-session data folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OUTDATED_IGNORE", "1")
os.environ.setdefault("HISTOGRAPH_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("HISTOGRAPH_DATA_MIRROR") and (_SHARED / "TUDataset").is_dir():
    os.environ["HISTOGRAPH_DATA_MIRROR"] = str(_SHARED)

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
MIRROR = os.environ.get("HISTOGRAPH_DATA_MIRROR")

# ----------------------------------------------------------------------------- network guard
# One guard per interpreter (tests/netguard/netguard.py): pytest imports this file as ``conftest``
# and test modules import it again as ``tests.conftest``; both copies share the same list.
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
if str(NETGUARD_DIR) not in sys.path:
    sys.path.insert(0, str(NETGUARD_DIR))
import netguard  # noqa: E402

NETWORK_ATTEMPTS: list[str] = netguard.install()

# Subprocesses (``python train.py ...`` in tests) get the same guard from
# tests/netguard/sitecustomize.py; it appends every blocked host to $HISTOGRAPH_NETGUARD_LOG.


def guarded_env(log_file: Path, **extra: str) -> dict[str, str]:
    """Environment for a test subprocess: offline, one thread, and the network guard installed.

    After the subprocess, ``log_file`` lists the hosts it tried to reach (empty file: none).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", HISTOGRAPH_OFFLINE="1", WANDB_MODE="offline",
               OUTDATED_IGNORE="1", HISTOGRAPH_NETGUARD_LOG=str(log_file), **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD_DIR), str(ROOT),
                                                    env.get("PYTHONPATH", "")) if p)
    log_file.write_text("")
    return env


@pytest.fixture(autouse=True)
def no_network(request):
    """Fail any test that tried to open a non-local connection (unless it expects one)."""
    NETWORK_ATTEMPTS.clear()
    yield
    if not request.node.get_closest_marker("network_attempt_expected"):
        assert not NETWORK_ATTEMPTS, f"test tried to reach the network: {NETWORK_ATTEMPTS}"


def pytest_configure(config):
    config.addinivalue_line("markers", "network_attempt_expected: the test provokes a download "
                                       "attempt (blocked) on purpose")


def needs_mirror(*datasets: str):
    """Skip unless the data mirror holds the given TU/OGB folders (e.g. 'TUDataset/PROTEINS')."""
    missing = [d for d in datasets if not MIRROR or not (Path(MIRROR) / d).is_dir()]
    return pytest.mark.skipif(bool(missing), reason=f"data mirror lacks {missing}; set "
                                                    f"HISTOGRAPH_DATA_MIRROR")


# ----------------------------------------------------------------------------- hydra helpers
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One writable data folder per test session (processed datasets are reused across tests)."""
    return tmp_path_factory.mktemp("data")


FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=csv",
        "trainer.accelerator=cpu", "threads=1"]


def make_cfg(overrides: list[str], output_dir: Path, data_dir: Path,
             fast: bool = True) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` as ``python train.py`` would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=(FAST if fast else []) + list(overrides),
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_datamodule(cfg: DictConfig):
    """The task's set-up DataModule of ``cfg`` (as ``histograph.train.run`` builds it)."""
    from histograph.tasks import build_task

    return build_task(cfg).datamodule(cfg)


def build_parts(cfg: DictConfig):
    """The project's own builders, as ``histograph.train.run`` calls them: ``(task, dm, net)``
    with the DataModule set up and ``net.model`` the network (untrained)."""
    from histograph.tasks import build_task

    task = build_task(cfg)
    dm = task.datamodule(cfg)
    return task, dm, task.network(cfg, dm)


@pytest.fixture
def cfg_factory(tmp_path, data_dir):
    """``cfg_factory(overrides)`` -> composed config writing into this test's tmp dir."""

    def factory(overrides: list[str] | None = None, fast: bool = True,
                output_dir: Path | None = None) -> DictConfig:
        return make_cfg(overrides or [], output_dir or tmp_path / "run", data_dir, fast)

    return factory
