#!/usr/bin/env python
"""Pair readouts run by run inside one depth study: how often one readout's test accuracy is
above another's on the same backbone, depth and fold (the counts results/README.md quotes
beside the fold means, which hide that the folds differ more than the readouts).

    python scripts/pair_readouts.py results/depth/proteins_pre/jobs.csv
    python scripts/pair_readouts.py results/depth/proteins_recipe/jobs.csv --against mean jk_cat
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def pair(jobs: pd.DataFrame, readout: str, against: list[str], deep: int,
         metric: str = "test") -> list[str]:
    """One line per readout in ``against``: runs where ``readout`` is higher, lower, tied.

    A run is identified by every replicate and axis column ``jobs`` has besides the readout;
    two finished runs with the same identity (another axis the table does not name) stop the
    count instead of being averaged into one pair."""
    jobs = jobs[jobs["status"] == "done"]
    index = [c for c in ("dataset", "model", "model.layers", "seed", "fold") if c in jobs]
    clash = jobs.duplicated(subset=[*index, "readout"])
    if clash.any():
        raise SystemExit(f"pair_readouts: {int(clash.sum())} finished runs share "
                         f"{', '.join(index)} and readout with another; pair one study "
                         f"(one jobs.csv without other axes) at a time.")
    table = jobs.pivot(index=index, columns="readout", values=metric)
    if readout not in table:
        raise SystemExit(f"pair_readouts: no finished {readout!r} run in this table (it has "
                         f"{', '.join(sorted(table.columns))}); pass --readout with one of "
                         f"those.")
    lines = []
    for other in against:
        if other not in table:  # the default --against names readouts a narrow study skips
            lines.append(f"{readout} vs {other}: no finished {other!r} run in this table")
            continue
        d = (table[readout] - table[other]).dropna()
        is_deep = d.index.get_level_values("model.layers") >= deep
        lines.append(f"{readout} vs {other} ({metric}): higher in {(d > 0).sum()}, lower in "
                     f"{(d < 0).sum()}, tied in {(d == 0).sum()} of {len(d)} paired runs; at "
                     f"depth >= {deep}: higher in {(d[is_deep] > 0).sum()} of {is_deep.sum()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", help="a sweep's aggregated jobs.csv")
    parser.add_argument("--readout", default="histograph")
    parser.add_argument("--against", nargs="+", default=["mean", "jk_cat"])
    parser.add_argument("--deep", type=int, default=32, help="depth from which a run is deep")
    parser.add_argument("--metric", choices=["val", "test"], default="test")
    args = parser.parse_args(argv)
    print("\n".join(pair(pd.read_csv(args.jobs), args.readout, args.against, args.deep,
                         args.metric)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
