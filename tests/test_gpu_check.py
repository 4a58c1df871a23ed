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


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_matrix_cells_are_distinct_and_filterable():
    import argparse

    gpu_check = _load_gpu_check()
    cells = gpu_check.matrix(argparse.Namespace(quick=False, only=[]))
    assert len(cells) == 36 and len({tuple(c.values()) for c in cells}) == 36
    assert {c["model"] for c in cells if c["dataset"] == "ogbg_molhiv"} == {"gine", "gcn", "gat"}
    # the deep cells judge bf16 agreement on a well-conditioned (pre-activation) stack
    assert {c["residual"] for c in cells if c["layers"] == 64} == {"pre"}
    assert cells[0]["layers"] == 5  # shallow first: a budget-cut run still covers every cell kind
    narrowed = gpu_check.matrix(argparse.Namespace(
        quick=False, only=["layers=64", "model=gcn,gat", "dataset=proteins"]))
    assert [(c["model"], c["readout"]) for c in narrowed] == [
        ("gcn", "mean"), ("gcn", "histograph"), ("gat", "mean"), ("gat", "histograph")]


def test_gpu_check_budget_skips_cells_and_says_so(tmp_path, data_dir):
    gpu_check = _load_gpu_check()
    code = gpu_check.main(["--device", "cpu", "--quick", "--matrix-only", "--budget-s", "0",
                           "--out", str(tmp_path), "--data-dir", str(data_dir)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["complete"] and not report["runs"] and len(report["skipped"]) == 2
    assert not report["ok"] and code == 1  # nothing was checked: not a pass
    assert "Not run (2 of 2 cells" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_refuses_an_only_filter_that_matches_nothing(tmp_path, capsys):
    import pytest

    gpu_check = _load_gpu_check()
    for only in (["layer=64"], ["readout=histogram"]):  # a key typo, a value that matches none
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(["--device", "cpu", "--quick", "--only", *only,
                            "--out", str(tmp_path)])
        assert exc.value.code == 2
    assert "matches no cell" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.json").exists()
