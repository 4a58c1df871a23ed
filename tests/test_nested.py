"""The nested-CV orchestrator (Errica et al.): a 2-point grid on 2 outer folds of MUTAG."""

from __future__ import annotations

import json

import pytest
import yaml

from histograph.analysis.aggregate import aggregate
from histograph.errors import UserError
from histograph.nested import grid_points, nested_cv

TINY = ["model.layers=1", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "protocol.folds=2"]


def test_grid_points_use_hydra_sweep_syntax():
    assert grid_points(["model.hidden=8,16", "optimizer.lr=0.01,0.001"]) == [
        ["model.hidden=8", "optimizer.lr=0.01"], ["model.hidden=8", "optimizer.lr=0.001"],
        ["model.hidden=16", "optimizer.lr=0.01"], ["model.hidden=16", "optimizer.lr=0.001"]]
    assert grid_points(["model.hidden=range(8,17,8)"]) == [["model.hidden=8"],
                                                          ["model.hidden=16"]]
    assert grid_points([]) == [[]]
    with pytest.raises(UserError, match="Hydra sweep overrides"):
        grid_points(["model.hidden=[8,"])


def test_nested_cv_selects_on_the_inner_holdout_and_retrains_the_winner(cfg_factory, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "nested"
    calls: list[list[str]] = []

    def compose(overrides, job_dir):
        calls.append(list(overrides))
        return cfg_factory(overrides, output_dir=job_dir)

    # a user override of a managed key (fold) or of a grid key is dropped, not duplicated
    summary = nested_cv([*TINY, "dataset=mutag", "fold=7", "model.hidden=64"],
                        ["model.hidden=8,16"], out, folds=2, retrain=3, seed=5,
                        compose=compose)
    # per outer fold: 2 grid points + 2 retrains (the first retrain is the winner's selection run)
    assert len(calls) == 2 * (2 + 2)
    assert all("fold=7" not in c and "model.hidden=64" not in c for c in calls)
    assert all("protocol=nested" in c for c in calls)

    assert summary["n_folds"] == 2 and summary["retrain"] == 3
    for row in summary["per_fold"]:
        vals = [s["val"] for s in row["selection"]]
        # the winner is the grid point with the best inner-validation metric (first on ties)
        assert row["winner"] == max(range(2), key=lambda i: (vals[i], -i))
        assert [f["seed"] for f in row["final"]] == [5, 6, 7]
        assert row["test"] == pytest.approx(sum(f["test"] for f in row["final"]) / 3)
        assert row["final"][0]["job"] == f"fold_{row['fold']}/select/config_{row['winner']}"
        for f in row["final"]:
            job = out / f["job"]
            res = json.loads((job / "results.json").read_text())
            assert res["protocol"] == "nested" and res["fold"] == row["fold"]
            assert res["hidden"] == int(row["winner_overrides"][0].split("=")[1])
            # the winner's test figure is read at the epoch selected on validation
            assert res["test"] == pytest.approx(res["history"]["test"][res["selected_epoch"]],
                                                abs=1e-6)
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            stage = "select" if f["seed"] == 5 else "final"
            assert f"seed={f['seed']}" in overrides and f"+nested_stage={stage}" in overrides
    tests = [row["test"] for row in summary["per_fold"]]
    assert summary["test_mean"] == pytest.approx(sum(tests) / 2)
    md = (out / "summary.md").read_text()
    assert "n = 2 of 2 outer folds, 6 of 6 retrains" in md and "inner-validation" in md
    # a 1-epoch run can only select its last epoch: every retrain is late
    assert summary["n_selected_late"] == 6
    assert "6 selected an epoch in the last 10% of training" in md
    assert summary["complete"] and "INCOMPLETE" not in md
    assert json.loads((out / "nested.json").read_text())["test_mean"] == summary["test_mean"]

    # the job dirs aggregate like any sweep (the stage is an axis)
    tables = aggregate(out, tmp_path / "tables")
    assert tables["jobs"]["status"].eq("done").all() and len(tables["jobs"]) == 8
    assert set(tables["summary"]["nested_stage"]) == {"select", "final"}

    # a re-run reuses every finished job (same config: composed and checked, not trained)
    def no_training(cfg):
        raise AssertionError("a finished nested job was trained again")

    monkeypatch.setattr("histograph.train.run", no_training)
    again = nested_cv([*TINY, "dataset=mutag"], ["model.hidden=8,16"], out, folds=2,
                      retrain=3, seed=5, compose=compose)
    assert again["test_mean"] == summary["test_mean"] and again["failed_jobs"] == 0


def test_bad_outer_folds_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="outer_folds"):
        nested_cv([], ["model.hidden=8"], tmp_path, folds=2, outer_folds=[2])
    with pytest.raises(UserError, match="retrain"):
        nested_cv([], ["model.hidden=8"], tmp_path, folds=2, retrain=0)


def test_a_failing_grid_point_is_recorded_and_cannot_win(cfg_factory, tmp_path):
    out = tmp_path / "nested"
    # readout.heads=3 does not divide model.hidden=8: that grid point fails on every fold
    summary = nested_cv([*TINY, "dataset=mutag", "readout=histograph", "model.hidden=8"],
                        ["readout.heads=3,4"], out, folds=2, retrain=1,
                        compose=lambda ov, job: cfg_factory(ov, output_dir=job))
    assert summary["failed_jobs"] == 2 and not summary["complete"]
    assert summary["n_folds"] == 2  # every fold still has a winner and a test figure
    for row in summary["per_fold"]:
        assert row["winner_overrides"] == ["readout.heads=4"]
        assert "divisor" in row["selection"][0]["error"] and row["selection"][0]["val"] is None
        assert (out / f"fold_{row['fold']}" / "select" / "config_0" / "failed.json").exists()
    md = (out / "summary.md").read_text()
    assert "INCOMPLETE" in md and "| failed |" in md
    assert "fold 0, cfg 0: readout.heads=3 must" in md
