"""A quiet, readable command line: a config error before torch is imported, no progress-bar
characters when the output is not a terminal, only real config groups in --help."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, guarded_env

NO_TORCH = """
import sys
sys.argv = ["train.py", "model.layers=0", "hydra.run.dir={out}"]
from histograph.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "torch_geometric", "lightning") if m in sys.modules)
print("CODE", code, "HEAVY", ",".join(heavy) or "none")
"""


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(out=tmp_path / "run")],
                          cwd=ROOT, env=guarded_env(tmp_path / "net.log"), capture_output=True,
                          text=True, timeout=120)
    assert "CODE 2 HEAVY none" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.layers must be")


def test_piped_output_has_one_line_per_epoch_and_no_bars(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, "train.py", "trainer.max_epochs=3", "model.layers=1",
                           "model.hidden=8", f"hydra.run.dir={tmp_path / 'run'}",
                           f"paths.data_dir={data_dir}"], cwd=ROOT,
                          env=guarded_env(tmp_path / "net.log"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "\r" not in out and "it/s" not in out and "█" not in out  # no progress bar
    epochs = [line for line in out.splitlines() if "] - epoch " in line]
    assert len(epochs) == 3 and "train loss" in epochs[0] and "val acc" in epochs[0]
    for hint in ("srun", "litlogger", "TPU available", "Processing...", "Restoring states"):
        assert hint not in out, hint
    assert len(out.strip().splitlines()) <= 6, out  # 3 epochs + the summary line


def test_help_lists_only_real_config_groups(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT,
                          env=guarded_env(tmp_path / "net.log"), capture_output=True, text=True,
                          timeout=120)
    groups = proc.stdout.split("== Configuration groups ==")[1].split("==")[0]
    assert "local.example" not in groups and "readout:" in groups and "mode:" in groups
    assert proc.stdout.startswith("histograph-train")


def test_reproduce_depth_keeps_other_budgets_out_of_the_40_epoch_tables():
    """scripts/reproduce_depth.sh with EPOCHS other than 40 writes to its own ``_e<N>`` sweep and
    output folders (the committed 40-epoch tables are never overwritten), and LAYERS / READOUTS
    narrow the grid. ``PY=echo`` prints the two commands instead of running them."""
    import os

    env = {**os.environ, "PY": "echo", "RESIDUAL": "pre", "DATASETS": "nci1", "EPOCHS": "80",
           "FOLDS": "0", "LAYERS": "32,8", "READOUTS": "mean,histograph"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_depth.sh")], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    assert "sweep_name=depth_nci1_pre_e80" in out[0].split()
    assert {"model.layers=32,8", "readout=mean,histograph", "fold=0", "trainer.max_epochs=80",
            "model.residual=pre"} <= set(out[0].split())
    assert out[1].split()[-2:] == ["--out", "results/depth/nci1_pre_e80"]
    env.update(EPOCHS="40", RESIDUAL="")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_depth.sh")], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    assert out[1].split()[-2:] == ["--out", "results/depth/nci1_recipe"]
