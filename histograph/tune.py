"""Fair per-readout selection: ``python -m histograph.tune dataset=proteins``.

A comparison of readouts at one shared learning rate is decided by that setting whenever it
suits some readouts and breaks others (docs/training.md: at Adam lr 0.01 HISTOGRAPH and GMT can
collapse to one class while mean pooling trains). This command gives every readout the **same
budget of configurations** and lets each pick its own on validation data only:

for each readout in ``tune.readouts``, the nested cross-validation of :mod:`histograph.nested`
(Errica et al., ICLR 2020) with the grid ``protocol.grid`` (default: the learning rates of
``configs/tune.yaml``): per outer fold, every grid point is trained on the inner split and the
one with the best inner-validation metric wins; the winner is retrained ``protocol.retrain``
times and tested once each on the outer fold. The test folds choose nothing.

    python -m histograph.tune dataset=mutag 'tune.readouts=[mean,sum,histograph]' \\
        'protocol.grid=["optimizer.lr=0.01,0.003,0.001"]' trainer.max_epochs=100

Every readout's run is an ordinary nested CV in ``<run dir>/readout=<name>/`` (its jobs are
reused when the command is run again); the comparison goes to ``comparison.md`` and
``comparison.json``: test mean ± std over outer folds, the number of configurations each readout
got (the same for all), the winning setting per fold, and how many retrains collapsed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from histograph.analysis.aggregate import LATE_TEXT, markdown_table
from histograph.errors import EXIT_INTERRUPTED, UserError
from histograph.nested import (ComposeFn, command_line, compose_job, grid_points, nested_cv,
                               protocol_args)
from histograph.resolvers import config_dir
from histograph.sweeps import jobs
from histograph.utils import atomic_write_json, atomic_write_text

log = logging.getLogger("histograph")

#: Override keys the command reads itself (not job settings).
OWN_KEYS = ("tune", "readout")


def tune_readouts(base_overrides: Sequence[str], readouts: Sequence[str], grid: Sequence[str],
                  output_dir: str | Path, *, folds: int, outer_folds: Sequence[int] | None,
                  retrain: int, seed: int, compose: ComposeFn = compose_job,
                  nested: Callable[..., dict[str, Any]] = nested_cv) -> dict[str, Any]:
    """Nested CV per readout with one shared grid; writes ``comparison.json`` and
    ``comparison.md`` into ``output_dir`` and returns the comparison."""
    if not readouts:
        raise UserError("tune.readouts is empty; list the readouts to compare, e.g. "
                        "'tune.readouts=[mean,histograph]'.")
    points = grid_points(grid)
    base = [str(o) for o in base_overrides
            if str(o).split("=", 1)[0].lstrip("+~").split(".")[0] not in OWN_KEYS]
    out = Path(output_dir)
    rows = []
    for readout in readouts:
        summary = nested([*base, f"readout={readout}"], grid, out / f"readout={readout}",
                         folds=folds, outer_folds=outer_folds, retrain=retrain, seed=seed,
                         compose=compose)
        rows.append({"readout": readout, "test_mean": summary["test_mean"],
                     "test_std": summary["test_std"], "n_folds": summary["n_folds"],
                     "n_folds_expected": summary["n_folds_expected"],
                     "n_collapsed": summary.get("n_collapsed", 0),
                     "n_selected_late": summary.get("n_selected_late", 0),
                     "n_retrains": summary["n_retrains"],
                     "failed_jobs": summary["failed_jobs"], "complete": summary["complete"],
                     "winners": [row["winner_overrides"] for row in summary["per_fold"]],
                     "metric": summary["metric"]})
    comparison = {"configs_per_readout": len(points), "grid": list(grid), "points": points,
                  "retrain": retrain, "outer_folds": rows[0]["n_folds_expected"],
                  "base_overrides": base, "readouts": rows,
                  "complete": all(r["complete"] for r in rows),
                  "selection": "per readout and outer fold: the grid point with the best "
                               "inner-validation metric (nested CV); test read once per "
                               "retrain of the winner"}
    atomic_write_json(out / "comparison.json", comparison)
    atomic_write_text(out / "comparison.md", comparison_markdown(comparison))
    return comparison


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as Markdown: one row per readout."""
    def pct(mean: float, std: float) -> str:
        return "-" if mean is None or math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"

    metric = next((r["metric"] for r in comparison["readouts"] if r["metric"]), "metric")
    lines = ["# Readouts compared, each tuned on validation (nested CV)", "",
             f"Each readout got the same {comparison['configs_per_readout']} configurations: "
             + (", ".join(f"`{' '.join(p)}`" for p in comparison["points"]) or "(one)")
             + f"; {comparison['outer_folds']} outer folds, winner retrained "
               f"{comparison['retrain']}x; fixed: "
             + (", ".join(f"`{o}`" for o in comparison["base_overrides"]) or "none") + ".", "",
             f"Selection: {comparison['selection']}. Late-selected: retrains whose selected "
             f"epoch is in the last {LATE_TEXT} of their epochs (more epochs may change them).", ""]
    header = ["readout", f"test {metric} (%)", "folds", "collapsed retrains",
              "late-selected retrains", "winner per fold", "complete"]
    body = [[r["readout"], pct(r["test_mean"], r["test_std"]),
             f"{r['n_folds']}/{r['n_folds_expected']}", f"{r['n_collapsed']}/{r['n_retrains']}",
             f"{r.get('n_selected_late', 0)}/{r['n_retrains']}",
             "; ".join(" ".join(w) if w else "-" for w in r["winners"]),
             "yes" if r["complete"] else f"NO ({r['failed_jobs']} failed jobs)"]
            for r in comparison["readouts"]]
    return "\n".join(lines + [markdown_table(header, body), ""])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="tune")
def _hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    with command_line(hydra_cfg):
        comparison = tune_readouts(
            list(hydra_cfg.overrides.task), list(cfg.tune.readouts),
            list(cfg.protocol.grid or []), hydra_cfg.runtime.output_dir, **protocol_args(cfg))
    print(comparison_markdown(comparison), flush=True)
    print(f"[histograph] readout comparison -> "
          f"{Path(hydra_cfg.runtime.output_dir) / 'comparison.md'}", flush=True)
    if not comparison["complete"] and not cfg.protocol.get("exit_zero", False):
        raise SystemExit(EXIT_INTERRUPTED if jobs.stopped_by() else 1)
    return None


def main() -> None:
    """Console entry point (``histograph-tune``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
