"""Plots of a depth sweep: numbers behind the figures, PNGs, re-plotting, W&B offline upload."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from histograph.errors import UserError
from histograph.analysis.plot import (DIAGNOSTICS_FILE, depth_markdown, depth_table,
                                      layer_weight_grid, main, plot)

TEST = {("mean", 2, 0): 0.70, ("mean", 2, 1): 0.74, ("mean", 8, 0): 0.60, ("mean", 8, 1): 0.50,
        ("histograph", 2, 0): 0.72, ("histograph", 2, 1): 0.76, ("histograph", 8, 0): 0.71,
        ("histograph", 8, 1): 0.69}


def _weights(layers: int, seed: int) -> list[float]:
    w = np.arange(1, layers + 2, dtype=float) + seed
    return (w / w.sum()).tolist()


def _fake_sweep(root: Path, logger: dict | None = None) -> Path:
    """A sweep dir as the idempotent multirun writes it: 8 finished jobs and 1 failed one."""
    for (readout, layers, seed), test in TEST.items():
        job = root / f"layers={layers},readout={readout},seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"model.layers={layers}", f"readout={readout}", f"seed={seed}"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        config = {"sweep_name": "fake_sweep", "task_name": "train",
                  "logger": logger or {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"}}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        results = {"dataset": "PROTEINS", "model": "gin", "readout": readout, "layers": layers,
                   "seed": seed, "fold": 0, "protocol": "holdout", "metric": "acc",
                   "val": test, "test": test, "selected_epoch": 0, "epochs": 1,
                   "layer_weights": _weights(layers, seed) if readout == "histograph" else None,
                   "dirichlet_energy": [10.0 / (1 + l) for l in range(layers + 1)],
                   "mad": [0.5 / (1 + l) for l in range(layers + 1)]}
        (job / "results.json").write_text(json.dumps(results))
    bad = root / "layers=64,readout=mean,seed=0"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["model.layers=64", "readout=mean", "seed=0"]))
    (bad / "failed.json").write_text(json.dumps({"error": "boom", "traceback": "..."}))
    return root


def test_depth_table_is_mean_and_population_std(tmp_path):
    from histograph.analysis.aggregate import aggregate

    jobs = aggregate(_fake_sweep(tmp_path / "sweep"))["jobs"]
    table = depth_table(jobs).set_index(["readout", "layers"])
    assert len(table) == 4  # the failed depth-64 job is not a point
    row = table.loc[("mean", 8)]
    assert row["mean"] == pytest.approx(0.55) and row["std"] == pytest.approx(0.05)
    assert row["n"] == 2
    assert table.loc[("histograph", 2)]["mean"] == pytest.approx(0.74)
    md = depth_markdown(depth_table(jobs))
    assert "| readout | L=2 | L=8 |" in md
    assert "| mean | 72.0 ± 2.0 (2) | 55.0 ± 5.0 (2) |" in md


def test_layer_weight_grid_aligns_entries_and_offsets():
    records = [{"layers": 2, "layer_weights": [0.2, 0.3, 0.5]},
               {"layers": 2, "layer_weights": [0.4, 0.3, 0.3]},
               {"layers": 4, "layer_weights": [0.1, 0.2, 0.3, 0.4], "readout_history_start": 1}]
    depths, grid = layer_weight_grid(records)
    assert depths == [2, 4] and grid.shape == (2, 5)
    assert grid[0, :3] == pytest.approx([0.3, 0.3, 0.4]) and np.isnan(grid[0, 3:]).all()
    assert np.isnan(grid[1, 0]) and grid[1, 1:] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_sweep_dir_gives_tables_pngs_and_replots_from_the_copy(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    paths = plot(sweep, wandb="off")
    assert set(paths) == {"depth_accuracy", "layer_weights", "dirichlet_energy", "mad"}
    for png in paths.values():
        assert png.parent == sweep and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "summary.md").is_file() and (sweep / "jobs.csv").is_file()
    assert (sweep / "depth_table.md").is_file() and (sweep / "depth_table.csv").is_file()
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert (jobs["status"] == "failed").sum() == 1 and (jobs["status"] == "done").sum() == 8
    diag = json.loads((sweep / DIAGNOSTICS_FILE).read_text())
    assert len(diag) == 8 and all(len(d["mad"]) == d["layers"] + 1 for d in diag)
    # an aggregated copy without the job folders (what results/ keeps) re-plots the same
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("jobs.csv", DIAGNOSTICS_FILE):
        shutil.copy(sweep / name, copy / name)
    again = plot(copy, wandb="off")
    assert set(again) == set(paths) and all(p.parent == copy for p in again.values())


def test_cli_errors_and_output(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no jobs.csv" in capsys.readouterr().err
    with pytest.raises(UserError, match="--metric"):
        plot(tmp_path / "empty", metric_key="loss")
    sweep = _fake_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--out", str(tmp_path / "out"), "--metric", "val",
                 "--wandb", "off"]) == 0
    assert "depth_accuracy" in capsys.readouterr().out
    assert (tmp_path / "out" / "depth_accuracy.png").is_file()
    assert (tmp_path / "out" / "summary.csv").is_file()


def test_wandb_offline_upload_lands_in_the_output_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger",
                        "project": "histograph-test", "offline": True}}
    sweep = _fake_sweep(tmp_path / "sweep", logger=logger)
    paths = plot(sweep)  # auto: the jobs logged to W&B, so the plots are uploaded too
    run_dir = paths["wandb"]
    assert run_dir.parent == sweep / "wandb" and run_dir.name.startswith("offline-run-")
    media = list(run_dir.rglob("*.png"))
    assert len(media) == 4
    log = next(run_dir.glob("run-*.wandb"))  # the run's protobuf log, which `wandb sync` reads
    deadline = time.time() + 30  # wandb's service process may still be flushing it
    while b"fake_sweep" not in log.read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    record = log.read_bytes()
    assert b"fake_sweep" in record and b"plots" in record  # group = sweep name, job_type


def test_multirun_end_callback_plots_and_never_raises(tmp_path, capsys, monkeypatch):
    from omegaconf import OmegaConf

    from histograph.analysis import aggregate as aggregate_module
    from histograph.analysis import plot as plot_module
    from histograph.sweeps.callbacks import ReportOnMultirunEnd

    sweep = _fake_sweep(tmp_path / "sweep")
    calls = []
    real = aggregate_module.aggregate
    counting = lambda *a, **k: calls.append(a) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(aggregate_module, "aggregate", counting)
    monkeypatch.setattr(plot_module, "aggregate", counting)
    callback = ReportOnMultirunEnd(wandb="off", exit_zero=True)  # the fake sweep has a failure
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "depth_accuracy.png").is_file() and (sweep / "summary.md").is_file()
    assert "plots:" in capsys.readouterr().out
    assert len(calls) == 1, "the sweep is aggregated once, the plots reuse its tables"
    # a broken sweep dir is logged, not raised: the jobs' results must survive
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}}))


def test_another_swept_setting_is_not_averaged_in(tmp_path):
    from histograph.analysis.aggregate import aggregate

    sweep = _fake_sweep(tmp_path / "sweep")
    for job in sweep.glob("layers=*"):  # tag the seed-1 jobs as another normalisation
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        norm = "softmax" if "seed=1" in overrides else "signed"
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(overrides + [f"readout.normalization={norm}"]))
    table = depth_table(aggregate(sweep)["jobs"]).set_index(["readout", "layers"])
    assert table.loc[("mean [readout.normalization=softmax]", 8)]["mean"] == pytest.approx(0.50)
    assert table.loc[("mean [readout.normalization=signed]", 8)]["n"] == 1
