"""scripts/gpu_check.py, the GPU acceptance script, in its tiny CPU version: the same checks
(real training path, fp32 vs bf16 agreement, host reads per step, node task, frozen mode)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import ROOT


def test_gpu_check_passes_on_the_cpu(tmp_path, data_dir):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "out"),
                           "--data-dir", str(data_dir)])
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert code == 0 and report["ok"], report
    assert {r["readout"] for r in report["runs"]} == {"mean", "histograph"}
    assert all(r["eval_fp32"] is not None and r["bf16_test"] is not None for r in report["runs"])
    assert {c["check"].split(" (")[0] for c in report["checks"]} == {"node task end to end",
                                                                     "frozen mode"}
    assert "all checks PASSED" in (tmp_path / "out" / "gpu_check.md").read_text()
