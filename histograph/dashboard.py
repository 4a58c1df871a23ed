"""W&B dashboards as code: ``python -m histograph.dashboard --group <sweep name>``.

For the runs of one sweep (a W&B group: every job of ``python train.py -m ... logger=wandb`` is
in the group named after ``sweep_name``), this builds a W&B report with

* **depth vs selected test metric**: a bar per (readout, depth), mean ± std over the folds and
  seeds (``selected/test``: the test figure at the epoch selected on validation, not the last
  epoch's), and the same per run as a scatter (x = ``layers``);
* **layer weights**: the sweep's heatmap of HISTOGRAPH's mean α per layer and depth (the
  ``layer_weights`` image of the sweep's ``plots`` run) and every run's ``layer_weights`` table;
* **over-smoothing**: the Dirichlet energy / MAD figures of the ``plots`` run and every run's
  ``oversmoothing`` table (per layer);
* **runs**: a table of the runs with ``selected/test``, ``collapsed`` and their state (a failed
  job's run ends with exit code 1 and shows as failed);
* **summary**: the sweep's ``summary.md`` (from ``--sweep-dir``, else the ``plots`` run).

Every key it reads is part of the run summary contract of
:func:`histograph.training.loggers.summary_values` (plus the two tables); ``--dry-run`` prints
the panels as JSON without any network access, which the tests check against the summaries of
an offline sweep. Building the report needs ``wandb-workspaces`` and a W&B login.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from histograph.errors import UserError

#: The summary keys the panels read (histograph.training.loggers.summary_values sets them).
SUMMARY_KEYS = ("selected/test", "selected/val", "selected/epoch", "layers", "readout",
                "dataset", "model", "collapsed", "num_params")
#: The tables every run logs (histograph.training.loggers.publish_summary).
TABLES = ("layer_weights", "oversmoothing")
#: The images the sweep's ``plots`` run logs (histograph.analysis.plot.upload_to_wandb).
PLOT_IMAGES = ("depth_accuracy", "layer_weights", "dirichlet_energy", "mad")


def dashboard_spec(group: str, project: str = "histograph", entity: str | None = None,
                   summary_md: str | None = None) -> dict[str, Any]:
    """The report as plain data: its run set and its panels, each naming the keys it reads."""
    return {
        "title": f"histograph · {group}",
        "project": project, "entity": entity, "group": group,
        "runset": {"filter": f"Metric('Group') == '{group}'"},
        "panels": [
            {"kind": "bar", "title": "Selected test metric by readout and depth (mean ± std "
                                     "over folds/seeds)",
             "metrics": ["selected/test"], "groupby": ["readout", "layers"],
             "aggregate": "mean", "range": "stddev"},
            {"kind": "scatter", "title": "Selected test metric vs depth, per run",
             "x": "layers", "y": "selected/test"},
            {"kind": "media", "title": "Sweep figures: depth vs accuracy, layer-weight heatmap, "
                                       "Dirichlet energy, MAD (the sweep's plots run)",
             "images": list(PLOT_IMAGES), "run": f"{group}-plots"},
            {"kind": "table", "title": "Layer weights α per run", "table": "layer_weights"},
            {"kind": "table", "title": "Dirichlet energy and MAD per layer, per run",
             "table": "oversmoothing"},
            {"kind": "runs", "title": "Runs (failed runs end with exit code 1; collapsed runs "
                                      "predict one class)",
             "columns": ["readout", "layers", "dataset", "selected/test", "selected/val",
                         "selected/epoch", "collapsed", "num_params"]},
            {"kind": "markdown", "title": "Sweep summary",
             "markdown": summary_md or "The sweep's summary.md is the `summary_md` entry of "
                                       f"the `{group}-plots` run."},
        ],
    }


def panel_keys(spec: dict[str, Any]) -> dict[str, set[str]]:
    """The summary keys and tables the panels read (what a run must log for them to fill)."""
    keys, tables = set(), set()
    for panel in spec["panels"]:
        keys.update(panel.get("metrics", ()))
        keys.update(k for k in (panel.get("x"), panel.get("y")) if k)
        keys.update(panel.get("groupby", ()))
        keys.update(panel.get("columns", ()))
        if panel.get("table"):
            tables.add(panel["table"])
    return {"summary": keys, "tables": tables}


def build_report(spec: dict[str, Any]):
    """The ``wandb_workspaces`` report of ``spec`` (not saved)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as exc:
        raise UserError("Building a W&B report needs wandb-workspaces; pip install "
                        "wandb-workspaces (or use --dry-run).") from exc
    runset = wr.Runset(entity=spec["entity"] or "", project=spec["project"],
                       name=spec["group"], filters=spec["runset"]["filter"])
    panels = []
    for p in spec["panels"]:
        if p["kind"] == "bar":
            panels.append(wr.BarPlot(title=p["title"], metrics=p["metrics"],
                                     groupby=",".join(p["groupby"]),
                                     groupby_aggfunc=p["aggregate"],
                                     groupby_rangefunc=p["range"]))
        elif p["kind"] == "scatter":
            panels.append(wr.ScatterPlot(title=p["title"], x=wr.SummaryMetric(p["x"]),
                                         y=wr.SummaryMetric(p["y"])))
        elif p["kind"] == "media":
            panels.append(wr.MediaBrowser(title=p["title"], media_keys=p["images"]))
        elif p["kind"] == "table":
            panels.append(wr.WeavePanelSummaryTable(table_name=p["table"]))
        elif p["kind"] == "runs":
            panels.append(wr.RunComparer(diff_only="split"))
        elif p["kind"] == "markdown":
            panels.append(wr.MarkdownPanel(markdown=p["markdown"]))
    return wr.Report(project=spec["project"], entity=spec["entity"] or "", title=spec["title"],
                     description="Made by python -m histograph.dashboard",
                     blocks=[wr.H1(text=spec["title"]),
                             wr.PanelGrid(runsets=[runset], panels=panels)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m histograph.dashboard --group G [--project P] [--entity E] [--sweep-dir D]
    [--dry-run]``."""
    parser = argparse.ArgumentParser(prog="python -m histograph.dashboard",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True, help="the sweep's W&B group (its sweep_name)")
    parser.add_argument("--project", default="histograph")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="the sweep's folder: its summary.md goes into the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the panels as JSON; no network, no login")
    args = parser.parse_args(argv)
    summary = None
    if args.sweep_dir is not None:
        if not (args.sweep_dir / "summary.md").is_file():
            print(f"error: {args.sweep_dir}/summary.md does not exist; run python -m "
                  f"histograph.analysis.aggregate {args.sweep_dir} first.", file=sys.stderr)
            return 2
        summary = (args.sweep_dir / "summary.md").read_text()
    spec = dashboard_spec(args.group, args.project, args.entity, summary)
    if args.dry_run:
        print(json.dumps(spec, indent=2))
        return 0
    try:
        report = build_report(spec)
        report.save()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - network and login problems, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"error: the report could not be saved to W&B ({type(exc).__name__}: {first}); "
              f"log in with `wandb login` (or use --dry-run).", file=sys.stderr)
        return 2
    print(f"[histograph] dashboard: {report.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
