"""Plots of a depth sweep: ``python -m histograph.analysis.plot <sweep dir or aggregated dir>``.

Three figures (matplotlib, Agg backend), one panel per dataset x backbone (x readout where the
figure is per readout), written as PNGs beside the aggregated tables:

* ``depth_accuracy.png``: the test metric against depth (``layers``, log2 axis), mean +- std over
  the finished seeds/folds, one line per readout;
* ``layer_weights.png``: HISTOGRAPH's mean layer weight :math:`\\alpha_l` on the test set
  (``results.json`` ``layer_weights``), a heatmap of layer index x depth, diverging around 0
  (the weights are signed);
* ``dirichlet_energy.png`` and ``mad.png``: the over-smoothing diagnostics of
  :mod:`histograph.diagnostics` per history entry (layer index), one line per depth.

Given a sweep dir (job folders below it), the tables are (re)made with
:func:`histograph.analysis.aggregate.aggregate` first and the per-layer vectors of every finished job are
saved as ``diagnostics.json`` beside them, so an aggregated dir (``jobs.csv`` +
``diagnostics.json``, e.g. a copy under ``results/``) can be re-plotted without the job folders.
Several inputs (``plot A B --out DIR``) are merged into one set of tables and figures
(:func:`histograph.analysis.aggregate.merge_jobs`).
With ``--wandb`` (or ``auto`` and a W&B logger in the jobs' config) the PNGs are logged to a run
of the sweep's W&B group (``job_type=plots``); offline runs stay in ``<out>/wandb/``.

Long file: the three figures share the job table's reading (which axis is a line, which a
panel) and one W&B upload; each figure is one function.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from histograph.analysis.aggregate import (  # noqa: E402
    DERIVED_COLUMNS, RESULT_SCALARS, aggregate, find_job_dirs, is_axis_key)
from histograph.errors import UserError  # noqa: E402
from histograph.utils import atomic_write_json, atomic_write_text  # noqa: E402


DIAGNOSTICS_FILE = "diagnostics.json"
#: per-job vectors kept in ``diagnostics.json``
VECTOR_KEYS = ("layer_weights", "dirichlet_energy", "mad")
ID_KEYS = ("dataset", "model", "readout", "layers", "seed", "fold", "metric", "protocol",
           "readout_history_start")
FIGURES = ("depth_accuracy", "layer_weights", "dirichlet_energy", "mad")


# ---------------------------------------------------------------------- inputs
def collect(path: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
            aggregated: dict[str, Any] | None = None
            ) -> tuple[pd.DataFrame, list[dict[str, Any]], Path, dict[str, Any] | None]:
    """Read a sweep dir (aggregating it, unless ``aggregated`` holds what
    :func:`~histograph.analysis.aggregate.aggregate` returned for it) or an aggregated dir, or
    several of these (merged by :func:`~histograph.analysis.aggregate.merge_jobs`; the tables
    are written to ``out_dir``).

    :returns: ``(jobs, diagnostics, out_dir, job_config)``: the ``jobs.csv`` table, one record
        per finished job with its per-layer vectors, the folder for the PNGs, and the Hydra config
        of one finished job (``None`` when no input is a sweep dir).
    :raises UserError: when an input is neither.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    for root in paths:
        if not root.is_dir():
            raise UserError(f"{root} is not a folder; pass a sweep dir (logs/sweeps/<name>) or a "
                            f"folder with jobs.csv from python -m histograph.analysis.aggregate.")
    if (aggregated is None and len(paths) == 1 and not find_job_dirs(paths[0])
            and (paths[0] / "jobs.csv").is_file()):
        root = paths[0]  # an aggregated dir alone: re-plotted as it is, its tables untouched
        jobs = pd.read_csv(root / "jobs.csv")
        diagnostics = _read_diagnostics(root)
        return jobs, diagnostics, Path(out_dir) if out_dir is not None else root, None
    agg = aggregated if aggregated is not None else aggregate(
        paths[0] if len(paths) == 1 else paths, out_dir)
    out = Path(out_dir) if out_dir is not None else paths[0]
    jobs = agg["jobs"]
    results, sources = agg.get("results", {}), agg.get("sources", {})
    # vectors of jobs read back from an aggregated input come from its diagnostics.json
    stored = {r.get("job_dir"): r for root in paths if not find_job_dirs(root)
              for r in _read_diagnostics(root)}
    diagnostics, config = [], None
    for job_dir in jobs.loc[jobs["status"] == "done", "job_dir"]:
        if job_dir in results:
            record = {"job_dir": job_dir, **{k: results[job_dir].get(k) for k in ID_KEYS},
                      **{k: results[job_dir].get(k) for k in VECTOR_KEYS}}
            config_file = sources[job_dir] / job_dir / ".hydra" / "config.yaml"
            if config is None and config_file.is_file():
                config = yaml.safe_load(config_file.read_text())
        elif job_dir in stored:
            record = stored[job_dir]
        else:
            continue
        diagnostics.append(record)
    atomic_write_json(out / DIAGNOSTICS_FILE, diagnostics)
    return jobs, diagnostics, out, config


def _read_diagnostics(root: Path) -> list[dict[str, Any]]:
    path = root / DIAGNOSTICS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _done(jobs: pd.DataFrame, metric_key: str) -> pd.DataFrame:
    need = {"status", "dataset", "model", "readout", "layers", metric_key}
    missing = need - set(jobs.columns)
    if missing:
        raise UserError(f"jobs.csv lacks the columns {sorted(missing)}; re-run "
                        f"python -m histograph.analysis.aggregate on the sweep.")
    done = jobs[jobs["status"] == "done"].copy()
    for key in ("dataset", "model", "readout"):  # the name results.json uses (Cora, not cora)
        if f"{key}_result" in done:
            done[key] = done[f"{key}_result"].where(done[f"{key}_result"].notna(), done[key])
    done["layers"] = pd.to_numeric(done["layers"], errors="coerce")
    done[metric_key] = pd.to_numeric(done[metric_key], errors="coerce")
    # any other swept setting (model.param_budget=..., readout.normalization=...) keeps its
    # jobs apart: it becomes part of the line's name instead of being averaged in
    axes = [c for c in _other_axes(done) if done[c].astype(str).nunique() > 1]
    done["readout"] = done["readout"].astype(str)
    if axes:
        done["readout"] = done["readout"] + " [" + done[axes].astype(str).apply(
            lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1) + "]"
    return done.dropna(subset=["layers", metric_key])


def _other_axes(jobs: pd.DataFrame) -> list[str]:
    """Override columns of ``jobs.csv`` that are neither a plot axis nor a replicate."""
    known = {"status", "job_dir", "error", "experiment", "model.layers", *RESULT_SCALARS,
             *DERIVED_COLUMNS}
    return [c for c in jobs.columns if c not in known and not c.endswith("_result")
            and is_axis_key(c)]


def _panels(keys: Sequence[tuple]) -> tuple[plt.Figure, list[plt.Axes]]:
    n = max(len(keys), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _depth_axis(ax: plt.Axes, depths: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted({int(d) for d in depths})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()


# ---------------------------------------------------------------------- figures
def depth_table(jobs: pd.DataFrame, metric_key: str = "test") -> pd.DataFrame:
    """Mean, population std and count of ``metric_key`` over the finished jobs of each
    (dataset, model, readout, layers): the points and error bars of ``depth_accuracy.png``."""
    done = _done(jobs, metric_key)
    keys = ["dataset", "model", "readout", "layers"]
    if done.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n"])
    grouped = done.groupby(keys)[metric_key]
    collapsed = (done["collapsed"].fillna(False).astype(bool) if "collapsed" in done
                 else pd.Series(False, index=done.index))
    over_smoothed = (done["collapse_cause"] == "over_smoothing" if "collapse_cause" in done
                     else pd.Series(False, index=done.index))
    by_cell = [done[k] for k in keys]
    table = pd.DataFrame({"mean": grouped.mean(),
                          "std": grouped.agg(lambda v: float(np.std(v.to_numpy()))),
                          "n": grouped.count(),
                          "collapsed": collapsed.groupby(by_cell).sum(),
                          "over_smoothed": over_smoothed.groupby(by_cell).sum(),
                          }).reset_index()
    table[["collapsed", "over_smoothed"]] = table[["collapsed", "over_smoothed"]].astype(int)
    return table.sort_values(keys).reset_index(drop=True)


def depth_markdown(table: pd.DataFrame, metric_key: str = "test") -> str:
    """The depth table as markdown: a block per dataset x model, a row per readout, a column per
    depth, cells ``mean ± std (n)`` in percent, ``, k collapsed`` when runs collapsed (``, k
    collapsed: j over-smoothed`` when j of them had an over-smoothed last layer)."""
    lines: list[str] = []
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=True):
        depths = sorted(int(d) for d in part["layers"].unique())
        lines += [f"### {dataset} · {model} ({metric_key}, %)", "",
                  "| readout | " + " | ".join(f"L={d}" for d in depths) + " |",
                  "| --- |" + " ---: |" * len(depths)]
        for readout, rows in part.groupby("readout", sort=True):
            cells = {int(r.layers): f"{100 * r.mean:.1f} ± {100 * r.std:.1f} ({int(r.n)}"
                     + (f", {int(r.collapsed)} collapsed" if getattr(r, "collapsed", 0) else "")
                     + (f": {int(r.over_smoothed)} over-smoothed"
                        if getattr(r, "over_smoothed", 0) else "") + ")"
                     for r in rows.itertuples()}
            lines.append(f"| {readout} | " + " | ".join(cells.get(d, "—") for d in depths)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def plot_depth_accuracy(jobs: pd.DataFrame, path: Path, metric_key: str = "test") -> Path | None:
    """Mean +- std of ``metric_key`` against depth, one line per readout, a panel per
    dataset x model. Returns the PNG path (``None`` when no job has finished)."""
    table = depth_table(jobs, metric_key)
    if table.empty:
        return None
    done = _done(jobs, metric_key)
    metric = (done["metric"].dropna().iloc[0] if "metric" in done and done["metric"].notna().any()
              else "metric")
    panels = sorted(table.groupby(["dataset", "model"]).groups)
    fig, axes = _panels(panels)
    for ax, (dataset, model) in zip(axes, panels):
        part = table[(table["dataset"] == dataset) & (table["model"] == model)]
        for readout, rows in sorted(part.groupby("readout")):
            lo, hi = int(rows["n"].min()), int(rows["n"].max())
            lost = int(rows["collapsed"].sum())
            flat = int(rows["over_smoothed"].sum()) if "over_smoothed" in rows else 0
            label = f"{readout} (n={lo})" if lo == hi else f"{readout} (n={lo}-{hi})"
            label += (f", {lost} collapsed" if lost else "") + (f": {flat} over-smoothed"
                                                                if flat else "")
            line = ax.errorbar(rows["layers"], 100 * rows["mean"], yerr=100 * rows["std"],
                               marker="o", capsize=3, label=label)
            hit = rows[rows["collapsed"] > 0]  # points that include collapsed runs: hollow x
            ax.scatter(hit["layers"], 100 * hit["mean"], marker="x", s=80,
                       color=line[0].get_color(), zorder=5)
        _depth_axis(ax, part["layers"])
        jobs_here = done[(done["dataset"] == dataset) & (done["model"] == model)]
        protocol = (jobs_here["protocol"].dropna().iloc[0] if "protocol" in jobs_here
                    and jobs_here["protocol"].notna().any() else "")
        ax.set_title(f"{dataset} · {model} ({protocol})")
        ax.set_xlabel("layers (message-passing depth)")
        ax.set_ylabel(f"{metric_key} {metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Depth vs accuracy (mean ± std over seeds/folds; x: the point includes runs "
                 "that collapsed to one class)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _frame(diagnostics: Sequence[dict[str, Any]], key: str) -> pd.DataFrame:
    rows = [d for d in diagnostics if d.get(key)]
    return pd.DataFrame(rows) if rows else pd.DataFrame()


def layer_weight_grid(records: Sequence[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
    """Depths (sorted) and the ``[depths, max L]`` grid of mean layer weights; entry ``[i, l]``
    is the weight of history entry ``l`` at depth ``depths[i]`` (``nan`` where that depth has no
    entry ``l``, including entries a readout does not read, ``readout_history_start``)."""
    depths = sorted({int(r["layers"]) for r in records})
    start = {int(r["layers"]): int(r.get("readout_history_start") or 0) for r in records}
    width = max(len(r["layer_weights"]) + start[int(r["layers"])] for r in records)
    grid = np.full((len(depths), width), np.nan)
    for i, depth in enumerate(depths):
        vectors = np.array([r["layer_weights"] for r in records if int(r["layers"]) == depth],
                           dtype=float)
        mean = vectors.mean(axis=0)
        grid[i, start[depth]:start[depth] + len(mean)] = mean
    return depths, grid


def plot_layer_weights(diagnostics: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Heatmap of the mean layer weight per (depth, layer index), a panel per dataset x model x
    readout that has layer weights (HISTOGRAPH). Returns ``None`` when no job has them."""
    records = [d for d in diagnostics if d.get("layer_weights")]
    if not records:
        return None
    panels = sorted({(r["dataset"], r["model"], r["readout"]) for r in records})
    fig, axes = _panels(panels)
    for ax, panel in zip(axes, panels):
        depths, grid = layer_weight_grid(
            [r for r in records if (r["dataset"], r["model"], r["readout"]) == panel])
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="RdBu_r",
                          norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
                          interpolation="nearest")
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([str(d) for d in depths])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("history entry l (0 = input embedding)")
        ax.set_ylabel("depth (layers)")
        ax.set_title(" · ".join(map(str, panel)))
        fig.colorbar(image, ax=ax, label="mean α_l (test)")
    fig.suptitle("HISTOGRAPH layer weights α (signed; rows sum to 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_layer(diagnostics: Sequence[dict[str, Any]], key: str, path: Path,
                   label: str, log_scale: bool) -> Path | None:
    """``key`` (``dirichlet_energy`` or ``mad``) per history entry, one line per depth, a panel
    per dataset x model x readout; mean over seeds/folds."""
    frame = _frame(diagnostics, key)
    if frame.empty:
        return None
    panels = sorted(frame.groupby(["dataset", "model", "readout"]).groups)
    fig, axes = _panels(panels)
    cmap = plt.get_cmap("viridis")
    for ax, (dataset, model, readout) in zip(axes, panels):
        part = frame[(frame["dataset"] == dataset) & (frame["model"] == model)
                     & (frame["readout"] == readout)]
        depths = sorted(part["layers"].unique())
        for i, depth in enumerate(depths):
            vectors = np.array(list(part[part["layers"] == depth][key]), dtype=float)
            mean = vectors.mean(axis=0)
            if log_scale:
                mean = np.where(mean > 0, mean, np.nan)
            ax.plot(range(len(mean)), mean, marker="." if len(mean) < 20 else None,
                    color=cmap(i / max(len(depths) - 1, 1)),
                    label=f"{int(depth)} layers (n={len(vectors)})")
        if log_scale:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("history entry l (0 = input embedding)")
        ax.set_ylabel(label)
        ax.set_title(f"{dataset} · {model} · {readout}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{label} of the node states per layer (evaluation data)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- W&B
def wandb_settings(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The W&B logger settings of a job's config (``None`` when it logs no W&B run)."""
    for node in ((config or {}).get("logger") or {}).values():
        if isinstance(node, dict) and str(node.get("_target_", "")).endswith("WandbLogger"):
            return {"project": node.get("project") or "histograph", "entity": node.get("entity"),
                    "offline": bool(node.get("offline")),
                    "group": (config or {}).get("sweep_name") or node.get("group")
                    or (config or {}).get("task_name")}
    return None


def upload_to_wandb(pngs: Sequence[Path], out_dir: Path, settings: dict[str, Any],
                    summary_md: Path | None = None) -> Path | None:
    """Log the PNGs (and the summary table) to a ``job_type=plots`` run of the sweep's group.

    Returns the run's local folder. The run is always finished (exit code 1 on failure).
    """
    import wandb

    mode = "offline" if settings.get("offline") else None
    run = wandb.init(project=settings["project"], entity=settings.get("entity"),
                     group=settings.get("group"), job_type="plots",
                     name=f"{settings.get('group') or 'sweep'}-plots", dir=str(out_dir),
                     mode=mode, reinit="finish_previous")
    exit_code = 1
    try:
        run.log({p.stem: wandb.Image(str(p)) for p in pngs})
        if summary_md is not None and summary_md.is_file():
            run.summary["summary_md"] = summary_md.read_text()
        exit_code = 0
        return Path(run.dir).parent
    finally:
        run.finish(exit_code=exit_code)


# ---------------------------------------------------------------------- entry point
def plot(path: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
         metric_key: str = "test",
         wandb: str = "auto", aggregated: dict[str, Any] | None = None) -> dict[str, Path]:
    """Make every figure the data allows; returns ``{figure name: PNG path}`` (plus ``wandb``:
    the W&B run folder when uploaded). ``aggregated``: the tables of ``path`` already made by
    :func:`~histograph.analysis.aggregate.aggregate` (not made again)."""
    if metric_key not in ("test", "val"):
        raise UserError(f"--metric must be test or val, got {metric_key!r}.")
    if wandb not in ("auto", "on", "off"):
        raise UserError(f"--wandb must be auto, on or off, got {wandb!r}.")
    jobs, diagnostics, out, config = collect(path, out_dir, aggregated)
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "depth_accuracy": plot_depth_accuracy(jobs, out / "depth_accuracy.png", metric_key),
        "layer_weights": plot_layer_weights(diagnostics, out / "layer_weights.png"),
        "dirichlet_energy": plot_per_layer(diagnostics, "dirichlet_energy",
                                           out / "dirichlet_energy.png", "Dirichlet energy",
                                           log_scale=True),
        "mad": plot_per_layer(diagnostics, "mad", out / "mad.png", "MAD (cosine)",
                              log_scale=False),
    }
    paths = {k: v for k, v in made.items() if v is not None}
    table = depth_table(jobs, metric_key)
    if not table.empty:  # the numbers behind depth_accuracy.png
        atomic_write_text(out / "depth_table.csv", table.to_csv(index=False))
        atomic_write_text(out / "depth_table.md", depth_markdown(table, metric_key))
    settings = wandb_settings(config)
    if wandb == "on" and settings is None:
        settings = {"project": "histograph", "entity": None, "offline": False,
                    "group": Path(path if isinstance(path, (str, Path)) else path[0]
                                  ).resolve().name}
    if wandb != "off" and settings is not None and paths:
        run_dir = upload_to_wandb(list(paths.values()), out, settings, out / "summary.md")
        if run_dir is not None:
            paths["wandb"] = run_dir
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m histograph.analysis.plot <dir> [--out DIR] [--metric test|val] [--wandb MODE]``."""
    parser = argparse.ArgumentParser(prog="python -m histograph.analysis.plot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="+",
                        help="a sweep dir (job folders below it) or an aggregated dir (jobs.csv "
                             "+ diagnostics.json); several are merged (then --out is required)")
    parser.add_argument("--out", default=None, help="folder for tables and PNGs (default: path)")
    parser.add_argument("--metric", default="test", help="test (default) or val")
    parser.add_argument("--wandb", default="auto",
                        help="auto (when the jobs logged to W&B), on, or off")
    args = parser.parse_args(argv)
    try:
        paths = plot(args.path[0] if len(args.path) == 1 else args.path, args.out, args.metric,
                     args.wandb)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("error: no finished job to plot yet.", file=sys.stderr)
        return 2
    for name, p in paths.items():
        print(f"[histograph] {name}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
