"""W&B dashboards as code: the summary keys of a run, and the dashboard spec built from an
offline sweep reads only keys that the runs' summaries hold (no network: --dry-run)."""

from __future__ import annotations

import json
import sys

import pytest

import histograph.train as train_mod
from histograph.dashboard import dashboard_spec, main, panel_keys
from histograph.training import loggers

pytest.importorskip("wandb")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_wandb import of_type, offline_run  # noqa: E402

SWEEP = ["experiment=depth_sweep_smoke", "logger=wandb_offline", "trainer.max_epochs=2"]


def _summary_keys(run_dir) -> set[str]:
    _, records = offline_run(run_dir)
    return {item.key or "/".join(item.nested_key)
            for r in of_type(records, "summary") for item in r.summary.update}


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """Two jobs of the smoke sweep (mean and HISTOGRAPH), logged to W&B offline."""
    from tests.conftest import make_cfg

    root = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setattr(loggers, "is_multirun", lambda: True)  # as inside `train.py -m`: group = sweep
    try:
        dirs = []
        for readout in ("mean", "histograph"):
            out = root / readout
            train_mod.run(make_cfg([*SWEEP, f"readout={readout}", "model.layers=2"], out,
                                   root / "data"))
            dirs.append(out)
    finally:
        mp.undo()
    return dirs


def test_every_run_summary_holds_the_selected_epochs_figures(offline_sweep):
    keys = _summary_keys(offline_sweep[1])
    assert {"selected/test", "selected/val", "selected/epoch", "collapsed", "num_params",
            "layers", "readout"} <= keys
    assert {"layer_weights/_type", "oversmoothing/_type"} <= keys  # the per-layer tables
    results = json.loads((offline_sweep[1] / "results.json").read_text())
    _, records = offline_run(offline_sweep[1])
    values = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
              for r in of_type(records, "summary") for item in r.summary.update}
    assert values["selected/test"] == pytest.approx(results["test"])
    assert values["selected/epoch"] == results["selected_epoch"]


def test_the_dashboard_reads_only_keys_the_runs_have(offline_sweep):
    spec = dashboard_spec("depth_sweep_smoke")
    wanted = panel_keys(spec)
    for run_dir in offline_sweep:
        keys = _summary_keys(run_dir)
        assert wanted["summary"] <= keys, wanted["summary"] - keys
        # both tables: a mean-pooling run has no layer weights, so only the over-smoothing one
        tables = wanted["tables"] - ({"layer_weights"} if run_dir.name == "mean" else set())
        assert {f"{t}/_type" for t in tables} <= keys
    assert {p["kind"] for p in spec["panels"]} == {"bar", "scatter", "media", "table", "runs",
                                                   "markdown"}


def test_dry_run_prints_the_panels_without_network(tmp_path, capsys):
    (tmp_path / "summary.md").write_text("# Summary of the sweep\n")
    assert main(["--group", "g", "--sweep-dir", str(tmp_path), "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["runset"]["filter"] == "Metric('Group') == 'g'"
    assert any(p.get("markdown", "").startswith("# Summary") for p in spec["panels"])
    assert main(["--group", "g", "--sweep-dir", str(tmp_path / "nope"), "--dry-run"]) == 2


def test_the_report_object_builds_offline():
    pytest.importorskip("wandb_workspaces")
    from wandb_workspaces.expr import expr_to_filters

    from histograph.dashboard import build_report

    spec = dashboard_spec("depth_sweep_smoke", entity="me")
    expr_to_filters(spec["runset"]["filter"])  # a filter the W&B front end understands
    report = build_report(spec)
    assert report.title == "histograph · depth_sweep_smoke" and len(report.blocks) == 2
