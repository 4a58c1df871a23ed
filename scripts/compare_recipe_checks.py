#!/usr/bin/env python
"""Pair two collapse checks cell by cell: flagged runs and validation accuracy, per readout and
per (dataset, backbone, depth).

The aggregated ``jobs.csv`` of each side is read (``python -m histograph.analysis.plot`` writes
it). A side may be assembled from several sweeps: later files replace earlier ones cell by cell,
and ``PATH::r1,r2`` takes only those readouts from a file (the plain default's JK-cat cells come
from the sweep that pooled them by mean, never from the first check's sum-pooled ones). Only finished jobs count; the mean accuracies are over
the cells both sides finished. Used for docs/training.md's residual recipe check:

    python scripts/compare_recipe_checks.py \\
      --base results/training/recipe_check/jobs.csv::$(echo mean sum max attention set2set gmt \\
               jk_max histograph histograph_stage1 | tr ' ' ,) \\
             results/training/recipe_check_jk_mean/jobs.csv::jk_cat \\
             results/training/recipe_check_nci1_deep/jobs.csv \\
      --other results/training/recipe_check_residual_all/jobs.csv \\
      --names plain residual --out results/training/recipe_check_residual_all/vs_plain.md

and for its pre-activation check (``PLAIN`` standing for the three ``--base`` specs above;
``--layers 32 64`` / ``--layers 2 8`` write ``vs_plain_deep.md`` / ``vs_plain_shallow.md``):

    python scripts/compare_recipe_checks.py --base PLAIN \
      --other results/training/recipe_check_pre_all/jobs.csv \
      --names plain pre --out results/training/recipe_check_pre_all/vs_plain.md
    python scripts/compare_recipe_checks.py \
      --base results/training/recipe_check_residual_all/jobs.csv \
      --other results/training/recipe_check_pre_all/jobs.csv --layers 32 64 \
      --names post pre --out results/training/recipe_check_pre_all/vs_post.md

and for the depth studies, test accuracy paired fold by fold (results/depth/<dataset>_pre/):

    python scripts/compare_recipe_checks.py --folds --metric test \
      --group model model.layers readout --names plain pre \
      --base results/depth/proteins_recipe/jobs.csv --other results/depth/proteins_pre/jobs.csv \
      --out results/depth/proteins_pre/vs_plain.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from histograph.utils import atomic_write_text  # noqa: E402

CELL = ["dataset", "model", "model.layers", "readout"]


def load_side(specs: list[str], layers: list[int] | None = None, cell: list[str] = CELL,
              metric: str = "val") -> pd.DataFrame:
    """Finished jobs of one side, at the given depths only (all when ``None``); later specs
    replace earlier ones cell by cell. ``metric`` (``val`` or ``test``) is read into ``val``."""
    frames = []
    for spec in specs:
        path, _, readouts = spec.partition("::")
        jobs = pd.read_csv(path)
        jobs = jobs[jobs["status"] == "done"]
        if readouts:
            jobs = jobs[jobs["readout"].isin(readouts.split(","))]
        jobs = jobs.assign(val=jobs[metric])
        frames.append(jobs[cell + ["val", "collapsed"]])
    side = pd.concat(frames).drop_duplicates(cell, keep="last")
    if layers:
        side = side[side["model.layers"].isin(layers)]
    side["collapsed"] = side["collapsed"].astype(str).str.lower().eq("true")
    return side


def compare(base: pd.DataFrame, other: pd.DataFrame, names: tuple[str, str],
            cell: list[str] = CELL, metric: str = "val",
            group: list[str] | None = None) -> str:
    """The report: flags and mean ``metric`` per readout, per (dataset, backbone, depth) and,
    with ``group``, per those columns; the cells flagged on the ``other`` side."""
    a, b = names
    what = "validation" if metric == "val" else "test"
    cells = other.merge(base, on=cell, how="left", suffixes=(f"_{b}", f"_{a}"))
    both = cells.dropna(subset=[f"val_{a}"])
    flags_a = base.merge(other[cell], on=cell)["collapsed"].sum()
    better = (both[f"val_{b}"] > both[f"val_{a}"]).sum()
    lines = [f"# {b} against {a}, cell by cell", "",
             f"{len(other)} finished {b} cells, {int(other['collapsed'].sum())} flagged; "
             f"{a} on the same cells: {int(flags_a)} flagged. Mean {what} accuracy over the "
             f"{len(both)} cells both finished: {b} {both[f'val_{b}'].mean():.3f}, "
             f"{a} {both[f'val_{a}'].mean():.3f}; {b} higher in {better}, lower in "
             f"{(both[f'val_{b}'] < both[f'val_{a}']).sum()}.", ""]

    def table(by: list[str]) -> list[str]:
        rows = [f"| {' | '.join(by)} | cells | flagged {a} | flagged {b} | {metric} {a} | "
                f"{metric} {b} |",
                "|" + "---|" * (len(by) + 5)]
        for key, g in cells.groupby(by):
            key = key if isinstance(key, tuple) else (key,)
            paired = g.dropna(subset=[f"val_{a}"])
            rows.append(f"| {' | '.join(str(k) for k in key)} | {len(g)} | "
                        f"{int(g[f'collapsed_{a}'].fillna(False).astype(bool).sum())} | "
                        f"{int(g[f'collapsed_{b}'].sum())} | {paired[f'val_{a}'].mean():.3f} | "
                        f"{paired[f'val_{b}'].mean():.3f} |")
        return rows

    lines += ["## Per readout", "", *table(["readout"]), "",
              "## Per dataset, backbone and depth", "",
              *table(["dataset", "model", "model.layers"]), ""]
    if group:
        lines += [f"## Per {', '.join(group)}", "", *table(group), ""]
    lines += [f"## Flagged in {b}", "", f"| {' | '.join(cell)} | {metric} {b} | {metric} {a} |",
              "|" + "---|" * (len(cell) + 2)]
    for _, r in cells[cells[f"collapsed_{b}"]].iterrows():
        lines.append(f"| {' | '.join(str(r[c]) for c in cell)} | {r[f'val_{b}']:.3f} | "
                     f"{r[f'val_{a}']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", nargs="+", required=True, help="jobs.csv[::readouts] ...")
    parser.add_argument("--other", nargs="+", required=True, help="jobs.csv[::readouts] ...")
    parser.add_argument("--names", nargs=2, default=("base", "other"))
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="pair only the cells at these depths (model.layers)")
    parser.add_argument("--folds", action="store_true",
                        help="a cell is also keyed by its fold (depth studies: pair fold by fold)")
    parser.add_argument("--metric", choices=["val", "test"], default="val")
    parser.add_argument("--group", nargs="+", default=None,
                        help="one more table grouped by these columns, e.g. model model.layers "
                             "readout")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    cell = CELL + (["fold"] if args.folds else [])
    report = compare(load_side(args.base, args.layers, cell, args.metric),
                     load_side(args.other, args.layers, cell, args.metric), tuple(args.names),
                     cell, args.metric, args.group)
    print(report, end="")
    if args.out is not None:
        atomic_write_text(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
