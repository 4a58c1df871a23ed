"""The command line: ``python train.py [group=option ...] [key=value ...]`` (``histograph-train``).

Hydra composes ``configs/train.yaml`` with the overrides; the config is checked
(:func:`histograph.config.validate_config`) before torch, PyG and Lightning are imported, so a
bad value is reported in about a second; then :func:`histograph.train.run` trains the job (inside
a multirun: :func:`histograph.sweeps.jobs.run_idempotent`, which skips finished jobs and records
failures). A :class:`~histograph.errors.UserError` ends in one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from histograph.config import validate_config
from histograph.errors import EXIT_CTRL_C, RunInterrupted, UserError
from histograph.resolvers import config_dir
from histograph.sweeps import jobs
from histograph.sweeps.names import is_multirun

log = logging.getLogger("histograph")


def _quiet_libraries() -> None:
    """One log path for Lightning (Hydra's console + ``<run dir>/<task>.log``), no cosmetic
    library warnings (ENV.md gotcha 13; OGB's read-only numpy labels)."""
    # imported here: Lightning installs its stderr handlers at import, which this replaces
    import lightning  # noqa: F401

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r"The given NumPy array is not writable")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    if is_multirun():  # skip when done; a failure becomes failed.json, the sweep goes on
        _quiet_libraries()
        from histograph.train import run  # heavy (torch, PyG, Lightning): after the checks

        return jobs.run_idempotent(cfg, run)
    try:
        validate_config(cfg)  # before the heavy imports: a bad value fails in about a second
        _quiet_libraries()
        from histograph.train import run  # heavy (torch, PyG, Lightning): after the checks

        results = run(cfg)
    except UserError as exc:
        _say(f"error: {exc}")
        raise SystemExit(2) from None
    except RunInterrupted as exc:
        _say(f"interrupted: {exc}; checkpoints/last.ckpt keeps the completed epochs and "
             f"interrupted.json says where; run the same command (same run folder) to resume.")
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        _say("interrupted: Ctrl+C before training started; nothing was trained.")
        raise SystemExit(EXIT_CTRL_C) from None
    return jobs.objective(results)


def _say(line: str) -> None:
    """One line on stderr, on a fresh line even after a progress bar."""
    print(f"\n{line}" if _progress_bar_open() else line, file=sys.stderr, flush=True)


def _progress_bar_open() -> bool:
    """Whether a progress bar may have left the cursor mid-line on a terminal."""
    return sys.stderr.isatty()


def main() -> None:
    """Console-script entry point (``histograph-train``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
