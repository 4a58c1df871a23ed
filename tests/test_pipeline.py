"""End-to-end pipeline: real data, every readout, the results contract, OGB, any TU name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histograph.train import run
from tests.conftest import needs_mirror

RESULT_KEYS = {"dataset", "model", "readout", "layers", "hidden", "seed", "fold", "protocol",
               "metric", "selected_epoch", "val", "test", "history", "num_params",
               "wall_time_s", "versions", "layer_weights", "mode"}
READOUTS = ["mean", "sum", "max", "attention", "set2set", "gmt", "jk_cat", "jk_max", "jk_lstm"]


def _check_results(res: dict, out: Path) -> None:
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["test"] == pytest.approx(res["test"])
    assert RESULT_KEYS <= set(on_disk), RESULT_KEYS - set(on_disk)
    assert 0.0 <= on_disk["test"] <= 1.0
    assert set(on_disk["versions"]) >= {"python", "torch", "torch_geometric", "git_commit"}
    assert len(on_disk["history"]["test"]) == on_disk["epochs"]
    assert 0 <= on_disk["selected_epoch"] < on_disk["epochs"]


@pytest.mark.parametrize("readout", READOUTS)
def test_every_readout_trains_on_mutag(readout, cfg_factory, tmp_path):
    cfg = cfg_factory([f"readout={readout}", "model.layers=2", "model.hidden=16"])
    res = run(cfg)
    _check_results(res, tmp_path / "run")
    assert res["readout"] == readout and res["dataset"] == "MUTAG"
    # selection is on validation; the test figure is the selected epoch's
    assert res["val"] == max(res["history"]["val"])
    assert res["test"] == pytest.approx(res["history"]["test"][res["selected_epoch"]], abs=1e-6)


def test_results_contract_and_artifacts(cfg_factory, tmp_path):
    res = run(cfg_factory(["trainer.max_epochs=3"]))
    out = tmp_path / "run"
    _check_results(res, out)
    assert (out / "csv" / "metrics.csv").exists()
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert res["protocol"] == "holdout" and res["metric"] == "acc"
    assert res["num_params"] > 0 and res["wall_time_s"] > 0
    assert not list(out.glob(".results.json.*")), "temp file left behind"
    # every number traces to its exact data: the raw files' fingerprint and the split sizes
    assert len(res["data_fingerprint"]) == 64 and res["split_sizes"] == {
        "train": 152, "val": 17, "test": 19}  # MUTAG, fold 0 of 10, 10% validation
    assert res["config_changes"] == [] and res["history"]["epoch"] == [0, 1, 2]


@pytest.mark.parametrize("model,residual", [("gcn", "true"), ("gat", "true"), ("sage", "true"),
                                            ("gine", "true"), ("gin", "pre")])
def test_backbones_train(model, residual, cfg_factory):
    res = run(cfg_factory([f"model={model}", "model.layers=2", "model.hidden=16",
                           "trainer.max_epochs=1", f"model.residual={residual}",
                           "model.norm=layer"]))
    assert res["model"] == model


@needs_mirror("ogb/ogbg_molbace")
def test_ogb_metric_equals_evaluator(cfg_factory, tmp_path):
    from ogb.graphproppred import Evaluator

    from tests.conftest import build_parts

    cfg = cfg_factory(["dataset=ogbg_molbace", "model=gine", "model.layers=2",
                       "model.hidden=16", "trainer.max_epochs=1"])
    assert cfg.protocol.name == "ogb"
    res = run(cfg)
    assert res["metric"] == "rocauc" and res["fold"] is None
    # recompute the test ROC-AUC of the selected checkpoint with the official Evaluator
    _, dm, net = build_parts(cfg)
    ckpt = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)
    model = net.model
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()
                           if k.startswith("model.")})
    model.eval()
    preds, ys = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds.append(model(batch))
            ys.append(batch.y)
    y_pred = torch.cat(preds).numpy()
    y_true = torch.cat(ys).float().view_as(torch.cat(preds)).numpy()
    expected = Evaluator("ogbg-molbace").eval({"y_true": y_true, "y_pred": y_pred})["rocauc"]
    assert res["test"] == pytest.approx(expected, abs=1e-6)


def _write_tu(root: Path, name: str) -> None:
    """A tiny TU-format dataset: 12 graphs (triangles vs paths), no node labels."""
    raw = root / "TUDataset" / name / "raw"
    raw.mkdir(parents=True)
    edges, indicator, labels, node = [], [], [], 1
    for g in range(12):
        cls = g % 2
        n = 3 + (g % 3)
        ids = list(range(node, node + n))
        pairs = [(ids[i], ids[i + 1]) for i in range(n - 1)] + ([(ids[-1], ids[0])] if cls else [])
        for a, b in pairs:
            edges += [(a, b), (b, a)]
        indicator += [g + 1] * n
        labels.append(cls)
        node += n
    (raw / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (raw / f"{name}_graph_indicator.txt").write_text("".join(f"{i}\n" for i in indicator))
    (raw / f"{name}_graph_labels.txt").write_text("".join(f"{c}\n" for c in labels))


def test_any_tu_name(cfg_factory, tmp_path):
    data = tmp_path / "tu_data"
    _write_tu(data, "TINYCYC")
    cfg = cfg_factory(["dataset=tu", "dataset.name=TINYCYC", "protocol.folds=2",
                       "protocol.val_fraction=0.2", "model.layers=2", "model.hidden=8",
                       "data.batch_size=4", "dataset.degree_cap=4"])
    cfg.paths.data_dir = str(data)
    res = run(cfg)
    assert res["dataset"] == "TINYCYC"
    from histograph.data.tu import load_tu

    loaded = load_tu("TINYCYC", data, degree_cap=4)
    assert loaded.num_features == 5  # one-hot degree 0..4
    assert len(loaded) == 12 and loaded.num_outputs == 2
    x = loaded.dataset[0].x
    assert torch.equal(x.sum(1), torch.ones(x.size(0)))


@needs_mirror("TUDataset/IMDB-BINARY")
def test_social_dataset_gets_degree_features(data_dir):
    from histograph.data.tu import load_tu

    data = load_tu("IMDB-BINARY", data_dir, degree_cap=32)
    assert data.num_features == 33 and len(data) == 1000
    assert np.bincount(data.labels).tolist() == [500, 500]


def test_mirror_is_staged_not_modified(data_dir, tmp_path):
    from histograph.data.mirror import EMBEDDED_MIRROR
    from histograph.data.tu import load_tu

    before = {p: p.stat().st_mtime for p in EMBEDDED_MIRROR.rglob("*")}
    data = load_tu("MUTAG", tmp_path / "fresh", data_mirror=None)
    assert len(data) == 188 and data.num_features == 7 and data.edge_dim == 4
    assert (tmp_path / "fresh" / "TUDataset" / "MUTAG" / "processed").is_dir()
    after = {p: p.stat().st_mtime for p in EMBEDDED_MIRROR.rglob("*")}
    assert before == after


def test_tensorboard_logger_also_keeps_csv(cfg_factory, tmp_path):
    run(cfg_factory(["logger=tensorboard", "trainer.max_epochs=1", "model.layers=1"]))
    out = tmp_path / "run"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert (out / "csv" / "metrics.csv").exists()
