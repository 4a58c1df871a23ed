"""scripts/compare_recipe_checks.py: two collapse checks paired cell by cell (docs/training.md's
residual recipe check), on tiny hand-made jobs.csv files."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT


def _jobs(path, rows):
    cols = ["status", "dataset", "model", "model.layers", "readout", "val", "collapsed"]
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return str(path)


def test_sides_are_assembled_and_paired_cell_by_cell(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "compare_recipe_checks", ROOT / "scripts" / "compare_recipe_checks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    first = _jobs(tmp_path / "first.csv", [
        ["done", "mutag", "gin", 64, "mean", 0.50, True],
        ["done", "mutag", "gin", 64, "jk_cat", 0.60, True],   # replaced by the later sweep
        ["done", "mutag", "gin", 64, "gmt", 0.70, False]])
    later = _jobs(tmp_path / "later.csv", [
        ["done", "mutag", "gin", 64, "jk_cat", 0.90, False],
        ["done", "mutag", "gin", 64, "gmt", 0.10, True],      # not taken: only jk_cat is
        ["failed", "mutag", "gin", 64, "mean", None, None]])  # unfinished: does not replace
    other = _jobs(tmp_path / "other.csv", [
        ["done", "mutag", "gin", 64, "mean", 0.80, False],
        ["done", "mutag", "gin", 64, "jk_cat", 0.40, True],
        ["done", "mutag", "gin", 64, "gmt", 0.75, False],
        ["done", "mutag", "gin", 64, "sum", 0.77, False]])    # no base cell: not paired
    base = mod.load_side([first, later + "::jk_cat"])
    assert dict(zip(base["readout"], base["val"])) == {"mean": 0.5, "jk_cat": 0.9, "gmt": 0.7}
    report = mod.compare(base, mod.load_side([other]), ("plain", "residual"))
    assert "4 finished residual cells, 1 flagged; plain on the same cells: 1 flagged" in report
    assert "over the 3 cells both finished: residual 0.650, plain 0.700" in report
    assert "| jk_cat | 1 | 0 | 1 | 0.900 | 0.400 |" in report
    assert "| mutag | gin | 64 | jk_cat | 0.400 | 0.900 |" in report  # the flagged list


def test_layers_keep_only_those_depths(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "compare_recipe_checks", ROOT / "scripts" / "compare_recipe_checks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    jobs = _jobs(tmp_path / "jobs.csv", [["done", "mutag", "gin", 8, "mean", 0.9, False],
                                         ["done", "mutag", "gin", 64, "mean", 0.5, True]])
    deep = mod.load_side([jobs], layers=[32, 64])
    assert list(deep["model.layers"]) == [64] and len(mod.load_side([jobs])) == 2


def test_depth_studies_pair_fold_by_fold_on_test(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "compare_recipe_checks", ROOT / "scripts" / "compare_recipe_checks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cols = ["status", "dataset", "model", "model.layers", "readout", "fold", "val", "test",
            "collapsed"]
    pd.DataFrame([["done", "proteins", "gin", 64, "mean", 0, 0.8, 0.60, False],
                  ["done", "proteins", "gin", 64, "mean", 1, 0.8, 0.70, False]],
                 columns=cols).to_csv(tmp_path / "plain.csv", index=False)
    pd.DataFrame([["done", "proteins", "gin", 64, "mean", 0, 0.7, 0.75, False],
                  ["done", "proteins", "gin", 64, "mean", 1, 0.7, 0.65, False]],
                 columns=cols).to_csv(tmp_path / "pre.csv", index=False)
    out = tmp_path / "vs.md"
    assert mod.main(["--folds", "--metric", "test", "--group", "model", "model.layers",
                     "readout", "--names", "plain", "pre", "--base", str(tmp_path / "plain.csv"),
                     "--other", str(tmp_path / "pre.csv"), "--out", str(out)]) == 0
    report = out.read_text()
    assert "Mean test accuracy over the 2 cells both finished: pre 0.700, plain 0.650; " \
           "pre higher in 1, lower in 1." in report
    assert "| gin | 64 | mean | 2 | 0 | 0 | 0.650 | 0.700 |" in report


def test_pair_readouts_counts_runs_fold_by_fold(tmp_path):
    spec = importlib.util.spec_from_file_location("pair_readouts",
                                                  ROOT / "scripts" / "pair_readouts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [["done", "gin", L, r, f, t] for L, r, f, t in [
        (2, "histograph", 0, 0.7), (2, "mean", 0, 0.6), (2, "histograph", 1, 0.5),
        (2, "mean", 1, 0.5), (64, "histograph", 0, 0.6), (64, "mean", 0, 0.4)]]
    rows.append(["failed", "gin", 64, "histograph", 1, None])  # unfinished: not paired
    jobs = pd.DataFrame(rows, columns=["status", "model", "model.layers", "readout", "fold",
                                       "test"])
    assert mod.pair(jobs, "histograph", ["mean"], deep=32) == [
        "histograph vs mean (test): higher in 2, lower in 0, tied in 1 of 3 paired runs; at "
        "depth >= 32: higher in 1 of 1"]
    # a readout the study did not run is named, not a KeyError
    assert mod.pair(jobs, "histograph", ["jk_cat", "mean"], deep=32)[0] == \
        "histograph vs jk_cat: no finished 'jk_cat' run in this table"
    with pytest.raises(SystemExit, match="no finished 'gmt' run .* has histograph, mean"):
        mod.pair(jobs, "gmt", ["mean"], deep=32)
    # a second run of the same cell (another axis this table does not name) is not averaged
    with pytest.raises(SystemExit, match="share"):
        mod.pair(pd.concat([jobs, jobs.iloc[:1]]), "histograph", ["mean"], deep=32)
