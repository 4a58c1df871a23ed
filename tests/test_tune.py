"""Fair per-readout selection (histograph/tune.py): every readout gets the same grid, chosen on
the inner validation split of each outer fold; end to end on MUTAG, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from histograph.tune import tune_readouts
from tests.conftest import ROOT, guarded_env

TINY = ["model.layers=1", "model.hidden=8", "trainer.max_epochs=2", "protocol.folds=2",
        "dataset=mutag"]


def test_each_readout_gets_the_same_grid_and_is_tested_at_its_own_winner(cfg_factory, tmp_path):
    composed: list[list[str]] = []

    def compose(overrides, job_dir):
        composed.append(list(overrides))
        return cfg_factory(overrides, output_dir=job_dir)

    out = tmp_path / "tune"
    comparison = tune_readouts([*TINY, "readout=sum", "tune.readouts=[x]"], ["mean", "sum"],
                               ["optimizer.lr=0.01,0.001"], out, folds=2, outer_folds=None,
                               retrain=1, seed=0, compose=compose)
    assert comparison["configs_per_readout"] == 2 and comparison["complete"]
    # per readout: 2 outer folds x 2 grid points (the one retrain is the winner's selection run);
    # the user's readout=sum and the command's own keys are not passed to the jobs
    assert len(composed) == 2 * 2 * 2
    assert all(sum(o.startswith("readout=") for o in c) == 1 for c in composed)
    assert not any(o.startswith("tune.") for c in composed for o in c)
    rows = {r["readout"]: r for r in comparison["readouts"]}
    assert set(rows) == {"mean", "sum"}
    for name, row in rows.items():
        nested = json.loads((out / f"readout={name}" / "nested.json").read_text())
        assert row["test_mean"] == nested["test_mean"] and row["n_folds"] == 2
        for fold in nested["per_fold"]:  # the winner is the best on validation, never on test
            vals = [s["val"] for s in fold["selection"]]
            assert fold["winner"] == max(range(2), key=lambda i: (vals[i], -i))
    md = (out / "comparison.md").read_text()
    assert "Each readout got the same 2 configurations" in md and "| mean |" in md


def test_the_command_runs(tmp_path, data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "histograph.tune", *TINY, "tune.readouts=[mean]",
         'protocol.grid=["optimizer.lr=0.01"]', "protocol.outer_folds=[0]",
         "trainer.enable_progress_bar=false", f"paths.data_dir={data_dir}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=guarded_env(tmp_path / "net.log"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "readout comparison ->" in proc.stdout
    for hint in ("srun", "litlogger", "TPU available", "Restoring states"):  # as quiet as train.py
        assert hint not in proc.stdout + proc.stderr, hint
    assert json.loads((tmp_path / "run" / "comparison.json").read_text())["complete"]
