"""Nested cross-validation: ``python -m histograph.nested [overrides]``.

Errica, Podda, Bacciu, Micheli, "A Fair Comparison of Graph Neural Networks for Graph
Classification" (ICLR 2020): model selection *inside* each outer fold, so that the reported
figure estimates the risk of the whole procedure (hyper-parameter search included):

.. math::
    \\theta^\\star_f = \\arg\\max_{\\theta \\in \\Theta} \\mathrm{val}_f(\\theta), \\qquad
    \\mathrm{acc}_f = \\frac{1}{R} \\sum_{r=1}^{R} \\mathrm{test}_f(\\theta^\\star_f, r), \\qquad
    \\text{report } \\operatorname{mean}_f \\mathrm{acc}_f \\pm \\operatorname{std}_f
    \\mathrm{acc}_f

with :math:`\\Theta` the grid (``protocol.grid``, Hydra sweep syntax), :math:`\\mathrm{val}_f`
the metric on fold :math:`f`'s inner holdout (10% of its training folds, also used to select the
epoch), and :math:`R` = ``protocol.retrain`` runs of the winner with model seeds
``seed .. seed+R-1``. The first of them is the winner's selection run itself (same config, same
seed: training it again would repeat it step for step on CPU), so the R runs cost R-1 new jobs.
The outer test fold is never used to choose anything (the training module
evaluates it every epoch for the learning curve; the orchestrator ignores those values until the
winner's final runs).

Layout of the output dir (every job dir is a normal run dir, reproducible with ``train.py`` and its
``.hydra/overrides.yaml``; a finished job is reused, so an interrupted nested CV resumes)::

    fold_<f>/select/config_<i>/   one run per grid point
    fold_<f>/final/seed_<s>/      the winner's retrains (seeds after the first)
    nested.json, summary.md       per-fold choices and the final figure

One command: ``python -m histograph.nested dataset=mutag 'protocol.grid=["model.hidden=32,64"]'``.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import hydra
import numpy as np
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from histograph.analysis.aggregate import LATE_TEXT, markdown_table, selected_late
from histograph.console import quiet_libraries, say
from histograph.errors import EXIT_INTERRUPTED, UserError
from histograph.resolvers import config_dir
from histograph.sweeps import jobs
from histograph.utils import atomic_write_json, atomic_write_text

log = logging.getLogger("histograph")

#: Override keys the orchestrator sets itself for every job, or reads itself (not job settings).
MANAGED_KEYS = ("fold", "seed", "protocol", "nested_stage", "protocol.grid", "protocol.retrain",
                "protocol.outer_folds", "protocol.exit_zero")
ComposeFn = Callable[[list[str], Path], DictConfig]


# ---------------------------------------------------------------------- grid
def grid_points(grid: Sequence[str]) -> list[list[str]]:
    """Expand axes in Hydra's sweep syntax into one override list per grid point.

    ``["model.hidden=32,64", "optimizer.lr=0.01,0.001"]`` -> 4 points, in Hydra's order (the
    last axis varies fastest), expanded by Hydra's own basic sweeper.

    :raises UserError: when an axis is not a valid Hydra override.
    """
    if not grid:
        return [[]]
    try:
        overrides = OverridesParser.create().parse_overrides([str(axis) for axis in grid])
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception as exc:  # noqa: BLE001 - Hydra raises several parse exception types
        raise UserError(f"protocol.grid={list(grid)} is not a list of Hydra sweep overrides "
                        f"({exc}); write axes like \"model.hidden=32,64\".") from exc
    return [list(point) for batch in batches for point in batch]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# ---------------------------------------------------------------------- jobs
def compose_job(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` for a job writing into ``output_dir``.

    Sets Hydra's runtime config to the job's (``train.run`` reads config-group choices from it).
    """
    if GlobalHydra.instance().is_initialized():
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_job(overrides: list[str], output_dir: Path, compose: ComposeFn
            ) -> jobs.JobOutcome:
    """Compose one job, record its overrides and config like Hydra does, and run it through the
    sweeps' runner (:func:`histograph.sweeps.jobs.run_job`: skipped when finished with the same
    config, ``failed.json`` when it fails, never raises for the job's own failure)."""
    from histograph.train import run  # torch, PyG, Lightning: only when a job runs

    cfg = compose(list(overrides), output_dir)
    hydra_dir = output_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(list(overrides)))
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(job_cfg))
    outcome = jobs.run_job(cfg, run, list(overrides))
    if not outcome.ok:
        log.error("nested job %s failed: %s", output_dir, outcome.error)
    return outcome


# ---------------------------------------------------------------------- orchestrator
def _attempt(overrides: list[str], output_dir: Path,
             compose: ComposeFn) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`run_job` as ``(results or None, one-line error or None)``."""
    outcome = run_job(overrides, output_dir, compose)
    return outcome.results, outcome.error


def nested_cv(base_overrides: Sequence[str], grid: Sequence[str], output_dir: str | Path, *,
              folds: int, outer_folds: Sequence[int] | None = None, retrain: int = 3,
              seed: int = 0, compose: ComposeFn = compose_job) -> dict[str, Any]:
    """Run the nested CV and write ``nested.json`` and ``summary.md`` into ``output_dir``.

    :param base_overrides: overrides shared by every job (dataset, readout, epochs, ...); keys the
        orchestrator manages (``fold``, ``seed``, ``protocol``) and the grid's keys are dropped.
    :param grid: axes in Hydra sweep syntax (``"model.hidden=32,64"``).
    :param output_dir: where the job dirs and the summary go.
    :param folds: number of outer folds (``protocol.folds``).
    :param outer_folds: the outer folds to run (default: all).
    :param retrain: runs of the winner per outer fold.
    :param seed: model seed of the selection runs and of the first retrain.
    :param compose: ``compose(overrides, job_dir) -> cfg``; :func:`compose_job` by default.
    :returns: the content of ``nested.json``.
    """
    if retrain < 1:
        raise UserError(f"protocol.retrain must be >= 1, got {retrain}.")
    outer = list(range(folds)) if outer_folds is None else [int(f) for f in outer_folds]
    bad = [f for f in outer if not 0 <= f < folds]
    if bad or not outer:
        raise UserError(f"protocol.outer_folds={outer} must be a non-empty list of folds in "
                        f"0..{folds - 1}; fix it or set it to null for all folds.")
    points = grid_points(grid)
    grid_keys = {_key(o) for point in points for o in point}
    base = [str(o) for o in base_overrides
            if _key(str(o)) not in MANAGED_KEYS and _key(str(o)) not in grid_keys]
    out = Path(output_dir)
    fold_rows = []
    for fold in outer:
        selection, selection_results = [], []
        for i, point in enumerate(points):
            res, error = _attempt([*base, "protocol=nested", *point, f"fold={fold}",
                                   f"seed={seed}", "+nested_stage=select"],
                                  out / f"fold_{fold}" / "select" / f"config_{i}", compose)
            selection_results.append(res)
            if res is not None and res.get("val") is None:
                raise UserError("The selection runs report no validation metric; nested CV "
                                "needs protocol.val_fraction > 0.")
            selection.append({"config": i, "overrides": point, "error": error,
                              "val": None if res is None else float(res["val"]),
                              "selected_epoch": None if res is None else res["selected_epoch"],
                              "collapsed": None if res is None else res.get("collapsed")})
        ok = [s for s in selection if s["val"] is not None]
        row: dict[str, Any] = {"fold": fold, "selection": selection, "final": [],
                               "winner": None, "winner_overrides": None, "test": None}
        if ok:  # a failed grid point cannot win; ties go to the first point
            best = max(ok, key=lambda s: (s["val"], -s["config"]))["config"]
            row.update(winner=best, winner_overrides=points[best])
            for r in range(retrain):
                if r == 0:  # the winner's selection run is its retrain with seed `seed`
                    job = Path(f"fold_{fold}") / "select" / f"config_{best}"
                    res, error = selection_results[best], None
                else:
                    job = Path(f"fold_{fold}") / "final" / f"seed_{seed + r}"
                    res, error = _attempt([*base, "protocol=nested", *points[best],
                                           f"fold={fold}", f"seed={seed + r}",
                                           "+nested_stage=final"], out / job, compose)
                row["final"].append({"seed": seed + r, "error": error, "job": job.as_posix(),
                                     "val": None if res is None else res["val"],
                                     "test": None if res is None else float(res["test"]),
                                     "selected_epoch": None if res is None
                                     else res["selected_epoch"],
                                     "selected_late": res is not None and selected_late(
                                         res["selected_epoch"], res.get("epochs")),
                                     "collapsed": None if res is None
                                     else res.get("collapsed")})
                if res is not None:
                    row["metric"] = res["metric"]
            tests = [f["test"] for f in row["final"] if f["test"] is not None]
            row["test"] = float(np.mean(tests)) if tests else None
        fold_rows.append(row)
        log.info("nested fold %d: winner %s, test %s", fold, row["winner_overrides"],
                 row["test"])
    finished = [row for row in fold_rows if row["test"] is not None]
    tests = np.array([row["test"] for row in finished])
    n_final = sum(f["test"] is not None for row in fold_rows for f in row["final"])
    summary: dict[str, Any] = {
        "protocol": "nested",
        "selection": (f"per outer fold: grid point with the best inner-validation metric; "
                      f"winner retrained {retrain}x (seeds {seed}..{seed + retrain - 1}; "
                      f"seed {seed} is its selection run), epoch "
                      f"selected on validation, test averaged over the retrains; mean ± "
                      f"population std over outer folds"),
        "metric": next((row["metric"] for row in fold_rows if "metric" in row), None),
        "test_mean": float(tests.mean()) if len(tests) else math.nan,
        "test_std": float(tests.std()) if len(tests) else math.nan,
        "n_folds": len(finished),
        "n_folds_expected": len(outer),
        "n_retrains": n_final,
        "n_retrains_expected": len(outer) * retrain,
        "n_collapsed": sum(bool(f.get("collapsed")) for row in fold_rows for f in row["final"]),
        "n_selected_late": sum(bool(f.get("selected_late")) for row in fold_rows
                               for f in row["final"]),
        "failed_jobs": sum(job["error"] is not None for row in fold_rows
                           for job in row["selection"] + row["final"]),
        "folds": folds,
        "retrain": retrain,
        "grid": list(grid),
        "points": points,
        "base_overrides": base,
        "per_fold": fold_rows,
    }
    summary["complete"] = (summary["failed_jobs"] == 0 and len(finished) == len(outer)
                           and n_final == len(outer) * retrain)
    atomic_write_json(out / "nested.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The nested CV result as Markdown: the figure, then one row per outer fold."""
    def pct(x: float | None) -> str:
        return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}"

    n_line = (f"n = {summary['n_folds']} of {summary['n_folds_expected']} outer folds, "
              f"{summary['n_retrains']} of {summary['n_retrains_expected']} retrains, "
              f"{summary.get('n_collapsed', 0)} retrains collapsed to one class, "
              f"{summary.get('n_selected_late', 0)} selected an epoch in the last {LATE_TEXT} of "
              f"training")
    lines = [
        "# Nested cross-validation (Errica et al., ICLR 2020)", "",
        f"**test {summary['metric']} = {pct(summary['test_mean'])} ± "
        f"{pct(summary['test_std'])} %** (protocol `nested`, {n_line})", "",
    ]
    if not summary["complete"]:
        lines += [f"**INCOMPLETE**: {summary['failed_jobs']} job(s) failed (see the table); "
                  f"the figure averages the finished folds only.", ""]
    lines += [
        f"Selection: {summary['selection']}.", "",
        "Grid: " + ", ".join(f"`{g}`" for g in summary["grid"]) + "; fixed: "
        + (", ".join(f"`{o}`" for o in summary["base_overrides"]) or "none"), "",
    ]
    header = ["fold", "winner", *[f"val cfg {i}" for i in range(len(summary["points"]))],
              "test (retrains)", "test"]
    rows = []
    for row in summary["per_fold"]:
        winner = row["winner_overrides"]
        rows.append([row["fold"],
                     "(every grid point failed)" if winner is None
                     else " ".join(winner) or "(single point)",
                     *["failed" if s["error"] else pct(s["val"]) for s in row["selection"]],
                     ", ".join("failed" if f["error"] else pct(f["test"])
                               for f in row["final"]), pct(row["test"])])
    lines += [markdown_table(header, rows), ""]
    lines += ["Grid points: " + "; ".join(f"cfg {i} = `{' '.join(p) or '-'}`"
                                          for i, p in enumerate(summary["points"])), ""]
    errors = [(row["fold"], job) for row in summary["per_fold"]
              for job in row["selection"] + row["final"] if job["error"]]
    if errors:
        lines += ["Failed jobs:", ""]
        for fold, job in errors:
            which = f"cfg {job['config']}" if "config" in job else f"seed {job['seed']}"
            lines.append(f"- fold {fold}, {which}: {job['error']}")
        lines += [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def protocol_args(cfg: DictConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`nested_cv` (and ``tune_readouts``) from ``cfg``."""
    return {"folds": int(cfg.protocol.folds), "outer_folds": cfg.protocol.get("outer_folds"),
            "retrain": int(cfg.protocol.get("retrain", 3)), "seed": int(cfg.seed)}


@contextmanager
def command_line(hydra_cfg: DictConfig) -> Iterator[None]:
    """The commands' frame: train.py's quiet one-format output; a :class:`UserError` is one
    ``error:`` line and exit status 2; Hydra's own config is restored afterwards (every job
    composes and installs its own)."""
    quiet_libraries()
    try:
        yield
    except UserError as exc:
        say(f"error: {exc}")
        raise SystemExit(2) from None
    finally:
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra_cfg}))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="nested")
def _hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    with command_line(hydra_cfg):
        if cfg.protocol.name != "nested":
            raise UserError(f"python -m histograph.nested needs protocol=nested, got "
                            f"protocol={cfg.protocol.name}; drop the protocol override.")
        summary = nested_cv(list(hydra_cfg.overrides.task), list(cfg.protocol.grid or []),
                            hydra_cfg.runtime.output_dir, **protocol_args(cfg))
    print(summary_markdown(summary), flush=True)
    print(f"[histograph] nested CV -> {Path(hydra_cfg.runtime.output_dir) / 'summary.md'}",
          flush=True)
    if not summary["complete"] and not cfg.protocol.get("exit_zero", False):
        code = EXIT_INTERRUPTED if jobs.stopped_by() else 1
        print(f"[histograph] the nested CV did not finish ({summary['failed_jobs']} job(s) "
              f"failed or were not run): exit status {code}; re-run the same command to retry "
              f"them (protocol.exit_zero=true returns 0).", file=sys.stderr, flush=True)
        raise SystemExit(code)
    return summary["test_mean"]


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
