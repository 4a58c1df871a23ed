"""Aggregation of sweep folders: done / failed / missing jobs, summaries, the gin arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from histograph.analysis.aggregate import aggregate, gin_selection, main
from histograph.sweeps.callbacks import ReportOnMultirunEnd

ROOT = Path(__file__).resolve().parents[1]


def _results(readout: str, fold: int, protocol: str, test_curve: list[float],
             val_curve: list[float] | None) -> dict:
    if val_curve is not None:
        sel = max(range(len(val_curve)), key=lambda e: (val_curve[e], -e))
    else:
        sel = len(test_curve) - 1
    history = {"train_loss": [0.5] * len(test_curve), "test": test_curve}
    if val_curve is not None:
        history["val"] = val_curve
    return {"dataset": "MUTAG", "model": "gin", "readout": readout, "layers": 4, "hidden": 64,
            "seed": 0, "fold": fold, "protocol": protocol, "metric": "acc",
            "selection": "first epoch with the best validation metric" if val_curve else "last",
            "mode": "end_to_end", "selected_epoch": sel, "epochs": len(test_curve),
            "val": val_curve[sel] if val_curve else None, "test": test_curve[sel],
            "history": history, "num_params": 1000, "wall_time_s": 1.0}


def _job(root: Path, name: str, overrides: list[str], results: dict | None = None,
         failed: str | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if failed is not None:
        (job / "failed.json").write_text(json.dumps(
            {"error": failed, "traceback": "Traceback ...", "overrides": overrides}))
    return job


def _multirun_yaml(root: Path, task: list[str], sweeper: str = "BasicSweeper") -> None:
    conf = {"hydra": {"overrides": {"task": task},
                      "sweeper": {"_target_": f"hydra._internal.core_plugins.basic_sweeper."
                                              f"{sweeper}", "params": None}}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(conf))


@pytest.fixture
def holdout_sweep(tmp_path) -> Path:
    """readout {mean, histograph} x fold {0, 1, 2}: histograph fold 1 failed, fold 2 never ran."""
    root = tmp_path / "sweep"
    root.mkdir()
    _multirun_yaml(root, ["dataset=mutag", "readout=mean,histograph", "fold=0,1,2"])
    tests = {0: 0.80, 1: 0.70, 2: 0.90}
    for fold, test in tests.items():
        _job(root, f"readout=mean,fold={fold}", ["dataset=mutag", "readout=mean", f"fold={fold}"],
             _results("mean", fold, "holdout", [0.5, test, 0.1], [0.5, 0.9, 0.6]))
    _job(root, "readout=histograph,fold=0", ["dataset=mutag", "readout=histograph", "fold=0"],
         _results("histograph", 0, "holdout", [0.6, 0.95], [0.7, 0.8]))
    _job(root, "readout=histograph,fold=1", ["dataset=mutag", "readout=histograph", "fold=1"],
         failed="RuntimeError: CUDA out of memory\nmore lines")
    return root


def test_done_failed_and_missing_jobs_are_all_listed(holdout_sweep):
    out = aggregate(holdout_sweep)
    jobs = out["jobs"]
    assert len(jobs) == 6
    assert jobs["status"].value_counts().to_dict() == {"done": 4, "failed": 1, "missing": 1}
    # every swept override key is its own column, the results scalars sit beside them
    assert {"readout", "fold", "dataset", "test", "val", "selected_epoch", "num_params",
            "job_dir"} <= set(jobs.columns)
    missing = jobs[jobs["status"] == "missing"].iloc[0]
    assert missing["readout"] == "histograph" and missing["fold"] == 2
    assert pd.isna(missing["job_dir"]) and "multirun.yaml" in missing["error"]
    failed = jobs[jobs["status"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: CUDA out of memory"
    # the override value is the axis; results.json's own spelling is kept beside it
    assert set(jobs.loc[jobs["status"] == "done", "dataset_result"]) == {"MUTAG"}
    assert list(out["incomplete"]["status"]) == ["failed", "missing"]

    on_disk = pd.read_csv(holdout_sweep / "jobs.csv")
    assert len(on_disk) == 6 and (holdout_sweep / "incomplete.csv").exists()


def test_summary_never_averages_fewer_runs_silently(holdout_sweep):
    out = aggregate(holdout_sweep)
    summary = out["summary"].set_index("readout")
    mean, hist = summary.loc["mean"], summary.loc["histograph"]
    assert (mean["n"], mean["n_expected"], bool(mean["complete"])) == (3, 3, True)
    assert mean["test_mean"] == pytest.approx(np.mean([0.80, 0.70, 0.90]))
    assert mean["test_std"] == pytest.approx(np.std([0.80, 0.70, 0.90]))  # ddof=0
    assert mean["val_mean"] == pytest.approx(0.9) and mean["selected_epoch"] == 1
    assert (hist["n"], hist["n_expected"], hist["n_failed"], hist["n_missing"]) == (1, 3, 1, 1)
    assert not bool(hist["complete"])
    assert "fold" not in summary.columns  # seeds and folds are replicates, not axes
    md = (holdout_sweep / "summary.md").read_text()
    assert "| histograph | holdout | acc | 1/3 |" in md
    assert "NO (1 failed, 1 missing)" in md
    assert "Failed or missing jobs (2 of 6)" in md and "CUDA out of memory" in md
    assert "Fixed overrides: `dataset=mutag`" in md
    assert "first epoch with the best validation metric" in md  # the selection rule is shown
    # histograph's one run selected the last of its 2 epochs: counted as a late selection
    assert (mean["n_selected_late"], hist["n_selected_late"]) == (0, 1)
    assert "| 1 (1 late) |" in md


def test_killed_job_without_results_is_missing_and_out_dir_is_respected(tmp_path):
    root = tmp_path / "sweep"
    _job(root, "a", ["readout=mean", "seed=0"], _results("mean", 0, "holdout", [0.5], [0.5]))
    killed = _job(root, "b", ["readout=mean", "seed=1"])
    (killed / "checkpoints").mkdir()
    out = aggregate(root, tmp_path / "tables")
    assert list(out["jobs"]["status"]) == ["done", "missing"]
    assert "never finished" in out["jobs"]["error"].iloc[1]
    row = out["summary"].iloc[0]
    assert (row["n"], row["n_expected"]) == (1, 2)
    assert (tmp_path / "tables" / "summary.md").exists() and not (root / "summary.md").exists()


def test_unknown_sweeper_gives_no_expectations(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    _multirun_yaml(root, ["readout=mean,sum"], sweeper="OptunaSweeper")
    _job(root, "0", ["readout=mean"], _results("mean", 0, "holdout", [0.5], [0.5]))
    assert list(aggregate(root)["jobs"]["status"]) == ["done"]


def test_gin_selection_arithmetic_by_hand():
    # per-epoch test accuracy of three folds
    curves = [[0.50, 0.75, 0.50],
              [0.50, 0.50, 1.00],
              [0.25, 1.00, 0.50]]
    sel = gin_selection(curves)
    # fold means per epoch: 5/12, 9/12, 8/12 -> epoch 1; folds at epoch 1: .75, .5, 1.0
    assert sel.curve == pytest.approx([5 / 12, 0.75, 8 / 12])
    assert sel.epoch == 1 and sel.mean == pytest.approx(0.75)
    assert sel.std == pytest.approx(np.sqrt((0.0 ** 2 + 0.25 ** 2 + 0.25 ** 2) / 3))
    assert sel.n == 3 and sel.epochs == 3
    # not the per-fold best (that would be (0.75 + 1 + 1) / 3) nor the last epoch (8/12)
    assert sel.mean != pytest.approx(11 / 12) and sel.mean != pytest.approx(8 / 12)
    # ties go to the first epoch; runs of unequal length are cut to the shortest
    assert gin_selection([[1.0, 0.0, 1.0]]).epoch == 0
    assert gin_selection([[0.1, 0.2, 0.9], [0.3, 0.4]]).epochs == 2
    with pytest.raises(ValueError):
        gin_selection([])


def test_gin_protocol_summary_uses_the_across_fold_curve(tmp_path):
    root = tmp_path / "sweep"
    curves = [[0.50, 0.75, 0.50], [0.50, 0.50, 1.00], [0.25, 1.00, 0.50]]
    for fold, curve in enumerate(curves):
        _job(root, f"f{fold}", ["protocol=gin", f"fold={fold}"],
             _results("mean", fold, "gin", curve, None))
    out = aggregate(root)
    row = out["summary"].iloc[0]
    assert row["protocol"] == "gin" and row["selected_epoch"] == 1
    assert row["test_mean"] == pytest.approx(0.75)
    assert row["test_last_mean"] == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert "OPTIMISTIC" in row["selection"]
    curve = pd.read_csv(root / "gin_curves.csv")
    assert list(curve["best"]) == [False, True, False]
    assert curve["test_mean"].tolist() == pytest.approx([5 / 12, 0.75, 8 / 12])
    assert "gin (optimistic)" in out["markdown"]


def test_nested_parent_dirs_are_not_jobs(tmp_path):
    root = tmp_path / "nested"
    _job(root, ".", ["dataset=mutag"])  # the orchestrator's own run dir
    _job(root, "fold_0/final/seed_0", ["dataset=mutag", "fold=0", "seed=0"],
         _results("mean", 0, "nested", [0.5, 0.6], [0.5, 0.7]))
    jobs = aggregate(root)["jobs"]
    assert list(jobs["job_dir"]) == ["fold_0/final/seed_0"]


def test_cli_and_user_errors(holdout_sweep, tmp_path, capsys):
    assert main([str(holdout_sweep)]) == 0
    assert "| mean | holdout | acc | 3/3 |" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "No job dirs" in capsys.readouterr().err


def test_multirun_end_callback_writes_the_tables(holdout_sweep, capsys):
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(holdout_sweep)}}})
    with pytest.raises(SystemExit) as info:  # jobs failed: the sweep must not return 0
        ReportOnMultirunEnd(plots=False).on_multirun_end(cfg)
    assert info.value.code == 1
    assert (holdout_sweep / "summary.md").exists()
    out = capsys.readouterr().out
    assert "aggregated 6 jobs into 2 rows (2 failed, interrupted or missing)" in out
    assert "exit status 1" in out
    ReportOnMultirunEnd(plots=False, exit_zero=True).on_multirun_end(cfg)  # opted out: no exit
    # a broken sweep dir is logged, never raised (the jobs' results must survive)
    ReportOnMultirunEnd(plots=False).on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(holdout_sweep / "missing")}}}))


@pytest.mark.slow
def test_real_multirun_is_aggregated_at_its_end(tmp_path):
    """``train.py -m`` through Hydra: the registered callback leaves the tables in the sweep."""
    sweep = tmp_path / "multirun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "readout=mean,sum",
           "model.layers=1", "model.hidden=8", "trainer.max_epochs=1", "debug=fast",
           "logger=none", "trainer.accelerator=cpu", f"paths.data_dir={tmp_path / 'data'}",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["readout"]) == ["mean", "sum"]
    assert summary["n"].tolist() == [1, 1] and summary["complete"].all()
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert (jobs["status"] == "done").all() and len(jobs) == 2


def test_per_job_inputs_are_not_axes(tmp_path):
    """Frozen runs name their own source checkpoint: still one group over the folds."""
    root = tmp_path / "frozen"
    for fold in (0, 1):
        _job(root, f"fold_{fold}", ["mode=frozen", f"fold={fold}", "logger=csv",
                                    f"backbone_ckpt=/runs/fold_{fold}/best.ckpt"],
             _results("histograph", fold, "holdout", [0.5, 0.6], [0.5, 0.7]))
    out = aggregate(root)
    assert len(out["summary"]) == 1 and out["summary"]["n"].iloc[0] == 2
    assert out["jobs"]["backbone_ckpt"].nunique() == 2  # still recorded per job


def test_numeric_axes_sort_numerically(tmp_path):
    root = tmp_path / "depth"
    for layers in (16, 2, 4):  # job dirs scan as "model.layers=16" < "=2" < "=4"
        _job(root, f"model.layers={layers}", [f"model.layers={layers}", "fold=0"],
             _results("mean", 0, "holdout", [0.5], [0.5]))
    assert aggregate(root)["summary"]["model.layers"].tolist() == [2, 4, 16]


def test_late_selected_runs_are_counted():
    from histograph.analysis.aggregate import selected_late

    assert [selected_late(e, 20) for e in (17, 18, 19)] == [False, True, True]
    assert selected_late(45, 50) and not selected_late(44, 50) and selected_late(0, 1)
    assert not selected_late(None, 20) and not selected_late(float("nan"), 20)


def test_sweeps_in_pieces_merge_into_one_table(holdout_sweep, tmp_path, capsys):
    """A sweep finished elsewhere (or resumed after its folders were lost): its own jobs plus an
    aggregated copy of the first part make one table, each job once, the finished copy kept."""
    first = tmp_path / "first"
    aggregate(holdout_sweep, first)  # only jobs.csv etc. kept, as under results/
    rest = tmp_path / "rest"  # the failed and the never-run histograph folds, now finished
    for fold, test in ((1, 0.85), (2, 0.75)):
        _job(rest, f"readout=histograph,fold={fold}",
             ["readout=histograph", f"fold={fold}", "dataset=mutag"],
             _results("histograph", fold, "holdout", [0.6, test], [0.7, 0.8]))
    merged = tmp_path / "merged"
    assert main([str(first), str(rest), "--out", str(merged)]) == 0
    assert "| histograph | holdout | acc | 3/3 |" in capsys.readouterr().out
    jobs = pd.read_csv(merged / "jobs.csv")
    assert len(jobs) == 6 and set(jobs["status"]) == {"done"}
    hist = jobs[jobs["readout"] == "histograph"].set_index("fold")["test"]
    assert hist.to_dict() == pytest.approx({0: 0.95, 1: 0.85, 2: 0.75})
    summary = pd.read_csv(merged / "summary.csv").set_index("readout")
    assert summary.loc["histograph", "test_mean"] == pytest.approx((0.95 + 0.85 + 0.75) / 3)
    assert bool(summary.loc["histograph", "complete"])
    # a later failed copy never replaces a finished one; the first input's axes stay columns
    again = tmp_path / "again"
    _job(again, "readout=mean,fold=0", ["dataset=mutag", "readout=mean", "fold=0"],
         failed="RuntimeError: boom")
    out = aggregate([merged, again], tmp_path / "merged2")
    mean0 = out["jobs"][(out["jobs"]["readout"] == "mean") & (out["jobs"]["fold"] == 0)]
    assert list(mean0["status"]) == ["done"] and list(out["jobs"].columns[:5]) == [
        "status", "job_dir", "dataset", "readout", "fold"]
    assert main([str(first), str(rest)]) == 2
    assert "--out" in capsys.readouterr().err


def test_failed_job_errors_name_paths_relative_to_the_sweep(tmp_path):
    """A committed incomplete.csv must not carry the absolute folder the job first ran in."""
    root = tmp_path / "sweep"
    root.mkdir()
    name = "model.layers=64,readout=jk_cat"
    _job(root, name, ["model.layers=64", "readout=jk_cat"],
         failed=f"the gradients became infinite; the last good checkpoint is "
                f"/elsewhere/run-s19/logs/sweeps/x/{name}/checkpoints/last.ckpt, written before. "
                f"Lower optimizer.lr (see /usr/lib/python3/x.py)\nsecond line")
    error = aggregate(root)["jobs"].iloc[0]["error"]
    assert error == (f"the gradients became infinite; the last good checkpoint is "
                     f"{name}/checkpoints/last.ckpt, written before. "
                     f"Lower optimizer.lr (see /usr/lib/python3/x.py)")
