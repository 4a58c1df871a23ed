"""Collapse detection: a run built to collapse is flagged, a healthy one is not, and the
aggregated tables and depth plots count collapsed runs (rule: histograph/training/collapse.py)."""

from __future__ import annotations

import json
import math

import yaml

from histograph.analysis.aggregate import aggregate
from histograph.analysis.plot import depth_markdown, depth_table
from histograph.train import run
from histograph.training.collapse import (LOSS_RATIO, OVERSMOOTHED_MAD, collapse_advice,
                                          collapse_cause, collapse_verdict, collapsed_round,
                                          end_values)

SMALL = ["model.layers=2", "model.hidden=16", "trainer.max_epochs=6"]


def _history(pred, label, ratio):
    return {"epoch": list(range(len(pred))), "pred_majority": pred,
            "label_majority": [label] * len(pred), "loss_vs_prior": ratio}


def test_verdict_flags_the_final_collapsed_stretch_only():
    # healthy at the end (an early one-class round is not a collapse)
    h = _history([1.0, 0.7, 0.6], 0.65, [1.0, 0.6, 0.5])
    assert collapse_verdict(h, selected=2) == {"collapsed": False, "collapsed_from": None,
                                                "collapsed_at_selected": False,
                                                "collapse_signal": None}
    # learns, then diverges to one class from epoch 2; the selected epoch 1 is still healthy
    h = _history([0.7, 0.6, 1.0, 1.0, 1.0], 0.65, [0.8, 0.6, 1.0, 1.0, 1.0])
    assert collapse_verdict(h, selected=1) == {"collapsed": True, "collapsed_from": 2,
                                                "collapsed_at_selected": False,
                                                "collapse_signal": "one_class"}
    # two one-class rounds at the end are not yet a collapse (three are needed)
    h = _history([0.7, 0.6, 0.6, 1.0, 1.0], 0.65, [0.8, 0.6, 0.6, 1.0, 1.0])
    assert collapse_verdict(h, selected=1)["collapsed"] is False
    # the loss at the prior's entropy is a collapse even when predictions are mixed, and the
    # verdict says so (its figures are not a constant predictor's)
    h = _history([0.7, 0.6, 0.97, 0.7, 0.6], 0.65, [0.8, 0.7, 1.0, 0.995, 0.993])
    assert collapse_verdict(h, selected=1)["collapse_signal"] == "loss_at_prior"
    assert collapsed_round(0.6, 0.6, 1.0) and not collapsed_round(0.6, 0.6, 0.9)
    # a split that is itself 97% one class: one-class predictions alone are not a collapse
    assert not collapsed_round(1.0, 0.97, 0.5)
    assert not collapsed_round(math.nan, 0.6, math.nan)  # rounds before detection existed
    assert collapse_verdict({"epoch": [0]}, 0)["collapsed"] is None  # multi-label: not judged


def test_end_values_say_how_near_each_test_the_run_ended():
    # a weak learner just under the at-prior line: not flagged, and its margin is visible
    h = _history([0.9, 0.8, 0.85, 0.82, 0.88], 0.6, [1.0, 0.99, 0.985, 0.992, 0.98])
    assert collapse_verdict(h, selected=1)["collapsed"] is False
    assert end_values(h) == {"loss_vs_prior_end": 0.98, "pred_majority_end": 0.82}
    # the window is the verdict's: the lowest of the last 3 rounds reaching the line = flagged
    h = _history([0.7, 0.6, 0.6, 0.6, 0.6], 0.6, [0.5, 0.5, 0.995, 0.993, 0.991])
    assert end_values(h)["loss_vs_prior_end"] >= LOSS_RATIO
    assert collapse_verdict(h, selected=1)["collapsed"] is True
    # shorter histories use what they have; rounds without a loss are skipped
    assert end_values(_history([0.7, 0.6], 0.6, [math.nan, 0.9])) == {
        "loss_vs_prior_end": 0.9, "pred_majority_end": 0.6}
    assert end_values(_history([math.nan, math.nan], 0.6, [math.nan, math.nan])) == {
        "loss_vs_prior_end": None, "pred_majority_end": None}
    assert end_values({"epoch": [0]}) == {"loss_vs_prior_end": None, "pred_majority_end": None}


def test_the_advice_names_the_likely_fix():
    assert "Lower optimizer.lr" in collapse_advice(0.01, "histograph", 4)  # docs/training.md
    assert "readout.pool=mean" in collapse_advice(1e-3, "jk_cat", 64, pool="sum")  # deep JK-cat
    # JK-max: mean pooling fixed none of its flagged cells, a residual backbone all of them
    jk_max = collapse_advice(1e-3, "jk_max", 64, pool="sum")
    assert "model.residual=pre" in jk_max and "readout.pool" not in jk_max
    assert "model.residual=pre" in collapse_advice(1e-3, "jk_cat", 64, pool="mean")
    assert "model.residual=pre" in collapse_advice(1e-3, "mean", 64)  # over-smoothed stack
    assert "more epochs" in collapse_advice(1e-3, "histograph_stage1", 4)
    assert "readout.pool" not in collapse_advice(1e-3, "jk_cat", 2)
    over = collapse_advice(1e-3, "mean", 64, "over_smoothing", 0.015)
    assert "MAD 0.015" in over and "model.residual=pre" in over and "histograph" in over


def test_the_advice_never_names_a_fix_the_run_already_has():
    # JK-cat over 64 residual layers collapsed on every cell of the residual recipe check: the
    # post-activation states grow with depth, so the advice is the pre-activation form
    jk = collapse_advice(1e-3, "jk_cat", 64, pool="mean", residual=True)
    assert "model.residual=pre" in jk and "model.residual=true" not in jk
    assert "plain layers" not in jk  # the run is not plain
    assert "model.residual=true" not in collapse_advice(1e-3, "mean", 64, residual=True)
    over = collapse_advice(1e-3, "mean", 64, "over_smoothing", 0.015, residual="pre")
    assert "model.residual" not in over and "fewer layers" in over
    # the learning rate and a sum-pooled JK readout come first, whatever the backbone
    assert "Lower optimizer.lr" in collapse_advice(0.01, "jk_cat", 64, residual=True)
    # the pre-activation residual: its history stays normalised, and it already is residual
    pre = collapse_advice(1e-3, "jk_cat", 64, pool="mean", residual="pre")
    assert "model.residual" not in pre and "grow" not in pre and "histograph" in pre
    assert "readout.pool=mean" in collapse_advice(1e-3, "jk_cat", 64, pool="sum", residual=True)


def test_the_cause_separates_an_over_smoothed_last_layer_from_optimisation():
    flat, spread = [0.3, 0.1, OVERSMOOTHED_MAD / 3], [0.3, 0.2, 0.2]
    assert collapse_cause(False, flat, reads_history=False) is None
    assert collapse_cause(None, flat, reads_history=False) is None  # multi-label: not judged
    assert collapse_cause(True, flat, reads_history=False) == "over_smoothing"
    # a readout that sees the earlier layers is not excused by a flat last layer
    assert collapse_cause(True, flat, reads_history=True) == "optimisation"
    assert collapse_cause(True, spread, reads_history=False) == "optimisation"
    assert collapse_cause(True, None, reads_history=False) == "optimisation"  # not measured


def test_every_graph_readout_says_whether_it_reads_the_history(cfg_factory):
    from pathlib import Path

    from hydra.utils import instantiate

    from histograph.resolvers import config_dir

    last_only = {"mean", "sum", "max", "attention", "set2set", "gmt", "last"}
    names = sorted(p.stem for p in (Path(config_dir()) / "readout").glob("*.yaml"))
    assert last_only < set(names)
    for name in names:
        readout = instantiate(cfg_factory([f"readout={name}"]).readout)(in_channels=8,
                                                                         history_len=4)
        assert readout.reads_history is (name not in last_only), name


def test_a_run_built_to_collapse_is_flagged(cfg_factory, capsys, caplog):
    res = run(cfg_factory([*SMALL, "optimizer.lr=5.0"]))  # a huge step on a tiny set
    assert res["collapsed"] is True and res["collapsed_from"] is not None
    assert res["collapse_cause"] in ("optimisation", "over_smoothing")
    h = res["history"]  # diverged: one class, or a training loss no better than the prior's
    assert h["pred_majority"][-1] >= 0.95 or h["loss_vs_prior"][-1] >= 0.99
    assert res["collapse_signal"] == ("one_class" if h["pred_majority"][-1] >= 0.95
                                      else "loss_at_prior")
    assert "COLLAPSED from epoch" in capsys.readouterr().out
    assert any("collapsed" in r.message and "optimizer.lr" in r.message for r in caplog.records)


def test_a_healthy_run_is_not_flagged(cfg_factory):
    res = run(cfg_factory(["trainer.max_epochs=10"]))  # the default GIN-5 + HISTOGRAPH
    assert res["collapsed"] is False and res["collapsed_from"] is None
    assert res["collapse_cause"] is None
    assert len(res["history"]["pred_majority"]) == 10


def _job(root, name, overrides, results):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "results.json").write_text(json.dumps(results))


def test_tables_and_depth_plots_count_collapsed_runs(tmp_path):
    root = tmp_path / "sweep"
    for fold, collapsed in enumerate([True, False, True]):
        _job(root, f"readout=mean,fold={fold}", ["readout=mean", f"fold={fold}"],
             {"dataset": "MUTAG", "model": "gin", "readout": "mean", "layers": 4, "fold": fold,
              "protocol": "holdout", "metric": "acc", "val": 0.6, "test": 0.6,
              "selected_epoch": 1, "epochs": 3, "collapsed": collapsed,
              "history": {"test": [0.6, 0.6, 0.6],
                          **_history([0.7, 0.6, 0.65], 0.6, [0.9, 0.8, 0.85])}})
    out = aggregate(root)
    assert out["summary"]["n_collapsed"].tolist() == [2]
    assert "| 2/3 |" in out["markdown"]
    table = depth_table(out["jobs"])
    assert table["collapsed"].tolist() == [2]
    assert "(3, 2 collapsed)" in depth_markdown(table)

    # one more collapsed run whose last layer was over-smoothed: counted apart, still collapsed
    _job(root, "readout=mean,fold=3", ["readout=mean", "fold=3"],
         {"dataset": "MUTAG", "model": "gin", "readout": "mean", "layers": 4, "fold": 3,
          "protocol": "holdout", "metric": "acc", "val": 0.5, "test": 0.5, "selected_epoch": 1,
          "epochs": 3, "collapsed": True, "collapse_cause": "over_smoothing",
          "mad": [0.3, 0.01], "history": {"test": [0.5, 0.5, 0.5]}})
    out = aggregate(root)
    assert out["summary"]["n_collapsed"].tolist() == [3]
    assert out["summary"]["n_over_smoothed"].tolist() == [1]
    assert "| 3/4 (1 over-smoothed) |" in out["markdown"]
    assert out["jobs"].set_index("fold")["mad_last"].to_dict()[3] == 0.01
    # how near each run's end came to the collapse tests (fold 3's history has no counts)
    assert out["jobs"].set_index("fold")["loss_vs_prior_end"].fillna(-1).to_dict() == {
        0: 0.8, 1: 0.8, 2: 0.8, 3: -1}
    assert "(4, 3 collapsed: 1 over-smoothed)" in depth_markdown(depth_table(out["jobs"]))


def test_last_is_mean_for_graph_classification():
    """Why experiment=recipe_check leaves out readout=last: on graphs it computes `mean`."""
    import torch

    from histograph.nn.readouts.last import LastLayerReadout
    from histograph.nn.readouts.pooling import PoolReadout

    history = [torch.randn(9, 4) for _ in range(3)]
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    torch.testing.assert_close(LastLayerReadout(4, 3)(history, batch),
                               PoolReadout(4, 3, reduce="mean")(history, batch))
