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
