"""Build the comparison tables of results/ from aggregated sweeps, with the paper's figures beside.

    python -m histograph.analysis.tables tu  --runs logs/reproduce/tu  --out results/tu
    python -m histograph.analysis.tables ogb --runs logs/reproduce/ogb --out results/ogb

(``scripts/reproduce_tables.py`` is the same command.) Each call aggregates every job under
``--runs`` (:func:`histograph.analysis.aggregate.aggregate`, so the
tables also list failed and missing jobs) and writes ``table.md`` into ``--out``: one row per
dataset x readout, one column per protocol with mean ± std, n/expected, and the paper's figure.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from histograph.analysis.aggregate import aggregate, markdown_table
from histograph.utils import atomic_write_text

# HISTOGRAPH paper (Galron et al., ICLR 2026), as quoted in ../shared/docs/METHOD.md: TU figures
# under the gin protocol with a "5-layer GIN"; OGB figures with a 3-layer GCN (ROC-AUC).
PAPER_HISTOGRAPH = {"MUTAG": "97.9", "PTC_MR": "79.1", "PROTEINS": "97.8 ± 0.4",
                    "NCI1": "85.9", "IMDB-BINARY": "87.2 ± 1.7", "IMDB-MULTI": "61.9",
                    "REDDIT-BINARY": "not best (figure not quoted)",
                    "ogbg-molhiv": "77.81", "ogbg-molbbbp": "72.02",
                    "ogbg-molbace": "not quoted"}
# GIN-0 with sum readout, Xu et al., ICLR 2019 ("How Powerful are Graph Neural Networks?"),
# Table 1, same gin protocol: the literature figure for the `sum` rows.
PAPER_GIN_SUM = {"MUTAG": "89.4 ± 5.6", "PTC_MR": "64.6 ± 7.0", "PROTEINS": "76.2 ± 2.8",
                 "NCI1": "82.7 ± 1.7", "IMDB-BINARY": "75.1 ± 5.1", "IMDB-MULTI": "52.3 ± 2.8",
                 "REDDIT-BINARY": "92.4 ± 2.5"}
READOUT_ORDER = ["mean", "sum", "attention", "gmt", "jk_cat", "histograph"]
# The paper's full setting per table: epochs per run, and the unit (and count) of repeated runs.
FULL_SETTING = {"tu": (350, "fold", 10), "ogb": (100, "seed", 5)}


def setting(kind: str, epochs: list[int], runs: pd.DataFrame) -> str:
    """``full``, or ``REDUCED: ...`` naming what falls short of the paper's setting.

    ``runs`` are the row's jobs, finished or not (what the sweep asked for); ``epochs`` the
    trained epochs of its finished runs.
    """
    full_epochs, unit, n_full = FULL_SETTING[kind]
    short = []
    if any(e < full_epochs for e in epochs):
        short.append(f"{'/'.join(str(e) for e in epochs)} of {full_epochs} epochs")
    n = runs[unit].nunique() if unit in runs else 0
    if n < n_full:
        short.append(f"{n} of {n_full} {unit}s")
    return "REDUCED: " + ", ".join(short) if short else "full"


def paper_figure(dataset: str, readout: str) -> str:
    if readout == "histograph":
        return PAPER_HISTOGRAPH.get(dataset, "")
    if readout == "sum" and dataset in PAPER_GIN_SUM:
        return f"{PAPER_GIN_SUM[dataset]} (GIN paper)"
    return ""


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "not run"
    if row["n"] == 0 or (isinstance(row["test_mean"], float) and math.isnan(row["test_mean"])):
        return f"- (0/{row['n_expected']})"
    text = f"{100 * row['test_mean']:.1f} ± {100 * row['test_std']:.1f} ({row['n']}/" \
           f"{row['n_expected']})"
    return text if row["complete"] else f"**{text} incomplete**"


def _oracle(runs: Path, job_dirs: pd.Series) -> tuple[float, float]:
    """Mean ± std over runs of each run's best test value over epochs (a per-fold oracle)."""
    best = []
    for rel in job_dirs:
        res = json.loads((runs / rel / "results.json").read_text())
        best.append(max(res["history"]["test"]))
    return float(np.mean(best)), float(np.std(best))


def optimism_table(runs: Path, summary: pd.DataFrame, jobs: pd.DataFrame, display: dict,
                   readouts: list[str]) -> list[str]:
    """The same runs scored by three selection rules, to show what selecting on test adds."""
    done = jobs[jobs["status"] == "done"]
    header = ["dataset", "readout", "protocol", "n", "val-selected (honest)",
              "gin rule on these runs", "per-run best test epoch (oracle)"]
    rows = []
    for dataset in summary["dataset"].drop_duplicates():
        for readout in readouts:
            for protocol in ("holdout", "gin", "ogb"):
                sel = summary[(summary["dataset"] == dataset) & (summary["readout"] == readout)
                              & (summary["protocol"] == protocol)]
                part = done[(done["dataset"] == dataset) & (done["readout"] == readout)
                            & (done["protocol"] == protocol)]
                if sel.empty or part.empty:
                    continue
                r = sel.iloc[0]
                honest = "- (no validation)" if protocol == "gin" else \
                    f"{100 * r['test_mean']:.1f} ± {100 * r['test_std']:.1f}"
                oracle = _oracle(runs, part["job_dir"])
                name = display.get(dataset, dataset)
                rows.append([name if isinstance(name, str) else dataset, readout, protocol,
                             f"{r['n']}/{r['n_expected']}", honest,
                             f"{100 * r['testsel_mean']:.1f} ± {100 * r['testsel_std']:.1f}",
                             f"{100 * oracle[0]:.1f} ± {100 * oracle[1]:.1f}"])
    if not rows:
        return []
    return ["## What selecting on the test folds adds (same runs, three rules)", "",
            "`gin rule` = best epoch of the across-fold mean test curve (the paper's protocol); "
            "`oracle` = each run's own best test epoch (an upper bound of selection "
            "optimism, not a protocol anyone should report).", "",
            markdown_table(header, rows), ""]


def build(kind: str, runs: Path, out: Path) -> str:
    result = aggregate(runs, out)
    summary = result["summary"].copy()
    jobs = result["jobs"]
    if "dataset" not in summary.columns:  # one dataset only: take it from the jobs
        summary["dataset"] = jobs["dataset"].dropna().iloc[0]
    # the dataset's own name (results.json) for the config name that selected it
    names = jobs[jobs["status"] == "done"].dropna(subset=["dataset"]).drop_duplicates("dataset")
    display = dict(zip(names["dataset"], names.get("dataset_result", names["dataset"])))
    protocols = [p for p in ("gin", "holdout", "ogb") if p in set(summary["protocol"])]
    readouts = [r for r in READOUT_ORDER if r in set(summary["readout"])]
    header = ["dataset", "readout", *[f"{p} (optimistic)" if p == "gin" else p
                                      for p in protocols], "setting", "paper"]
    rows = []
    for dataset in summary["dataset"].drop_duplicates():
        name = display.get(dataset, dataset)
        name = name if isinstance(name, str) else dataset
        for readout in readouts:
            sel = summary[(summary["dataset"] == dataset) & (summary["readout"] == readout)]
            if sel.empty:
                continue
            cells = []
            for protocol in protocols:
                match = sel[sel["protocol"] == protocol]
                cells.append(_cell(match.iloc[0] if len(match) else None))
            epochs = sorted(int(e) for e in sel["epochs"].dropna().unique())
            row_jobs = jobs[(jobs["dataset"] == dataset) & (jobs["readout"] == readout)]
            rows.append([name, readout, *cells, setting(kind, epochs, row_jobs),
                         paper_figure(name, readout)])
    metric = "/".join(sorted(set(summary["metric"].dropna())))
    lines = [f"# {kind.upper()} comparison ({metric}, %)", "",
             "Each cell: mean ± population std over the finished runs (finished/expected). "
             "`gin` = the paper-compatible protocol: per-epoch test accuracy averaged over the "
             "folds, best epoch (selection on the test folds: OPTIMISTIC). `holdout` = epoch "
             "selected on a stratified 10% validation split of the training folds, test read "
             "at that epoch. `ogb` = official scaffold split, epoch selected on validation, "
             "runs = seeds. `setting`: `full` = the paper's epochs and all folds (TU: 350 "
             "epochs, 10 folds; OGB: 100 epochs, >= 5 seeds), else REDUCED with what was cut.",
             "",
             markdown_table(header, rows), ""]
    lines += optimism_table(runs, summary, jobs, display, readouts)
    bad = result["incomplete"]
    if len(bad):
        lines += [f"{len(bad)} job(s) failed or missing; see `{out}/incomplete.csv`.", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "table.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m histograph.analysis.tables {tu,ogb} --runs DIR --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m histograph.analysis.tables",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tu", "ogb"])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(build(args.kind, args.runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
