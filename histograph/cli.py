"""The command line: ``python train.py [group=option ...] [key=value ...]`` (``histograph-train``).

Hydra composes ``configs/train.yaml`` with the overrides; the config is checked
(:func:`histograph.config.validate_config`) before torch, PyG and Lightning are imported, so a
bad value is reported in about a second; then :func:`histograph.train.run` trains the job (inside
a multirun: :func:`histograph.sweeps.jobs.run_idempotent`, which skips finished jobs and records
failures). A :class:`~histograph.errors.UserError` ends in one ``error:`` line and exit status 2;
a signal in one ``interrupted:`` line and status 75 (130 for Ctrl+C).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from histograph.config import validate_config
from histograph.console import quiet_libraries, say
from histograph.errors import EXIT_CTRL_C, RunInterrupted, UserError
from histograph.resolvers import config_dir
from histograph.sweeps import jobs
from histograph.sweeps.names import is_multirun

log = logging.getLogger("histograph")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    if is_multirun():  # skip when done; a failure becomes failed.json, the sweep goes on
        quiet_libraries()
        from histograph.train import run  # heavy (torch, PyG, Lightning): after the checks

        return jobs.run_idempotent(cfg, run)
    try:
        validate_config(cfg)  # before the heavy imports: a bad value fails in about a second
        quiet_libraries()
        from histograph.train import run  # heavy (torch, PyG, Lightning): after the checks

        results = run(cfg)
    except UserError as exc:
        say(f"error: {exc}")
        raise SystemExit(2) from None
    except RunInterrupted as exc:
        say(f"interrupted: {exc}; checkpoints/last.ckpt keeps the completed epochs and "
            f"interrupted.json says where; run the same command (same run folder) to resume.")
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        say("interrupted: Ctrl+C before training started; nothing was trained.")
        raise SystemExit(EXIT_CTRL_C) from None
    return jobs.objective(results)


def main() -> None:
    """Console-script entry point (``histograph-train``)."""
    try:
        _hydra_main()
    except KeyboardInterrupt:  # Ctrl+C while Hydra composes or saves the config
        say("interrupted: Ctrl+C before training started; nothing was trained.")
        raise SystemExit(EXIT_CTRL_C) from None


if __name__ == "__main__":
    main()
