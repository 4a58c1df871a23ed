"""Frozen-backbone mode: the backbone stays bit-identical, the cache equals a fresh pass."""

from __future__ import annotations

import json

import pytest
import torch

from histograph.errors import UserError
from histograph.train import run
from histograph.training import frozen

SMALL = ["model.layers=3", "model.hidden=16", "trainer.max_epochs=2"]


@pytest.fixture
def source_run(cfg_factory, tmp_path):
    res = run(cfg_factory(SMALL + ["readout=mean"], output_dir=tmp_path / "src"))
    return tmp_path / "src" / "checkpoints" / "last.ckpt", res


def test_frozen_head_trains_and_backbone_is_untouched(source_run, cfg_factory, tmp_path):
    ckpt, _ = source_run
    before = frozen.read_source(ckpt).backbone_state
    cfg = cfg_factory(["mode=frozen", f"backbone_ckpt={ckpt}", "readout=histograph",
                       "readout.heads=2", "trainer.max_epochs=3"], output_dir=tmp_path / "ft")
    res = run(cfg)
    assert res["mode"] == "frozen" and res["backbone_ckpt"] == str(ckpt)
    assert res["layers"] == 3 and res["hidden"] == 16  # from the checkpoint, not model.*
    assert res["layer_weights"] is not None and len(res["layer_weights"]) == 4
    assert 0 < res["num_trainable_params"] < res["num_params"]
    on_disk = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert on_disk["mode"] == "frozen"
    after = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)
    state = {k[len("model.backbone."):]: v for k, v in after["state_dict"].items()
             if k.startswith("model.backbone.")}
    assert state.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(state[key], value), key  # bit-identical, BN statistics included


def test_cached_history_equals_fresh_forward(source_run, data_dir, tmp_path):
    ckpt, _ = source_run
    source = frozen.read_source(ckpt)
    backbone = frozen.build_frozen_backbone(source)
    from histograph.data.tu import load_tu

    data = load_tu("MUTAG", data_dir)
    history, ptr = frozen.cached_history(source, backbone, data.dataset, cache="disk",
                                         cache_dir=tmp_path / "cache")
    assert history.shape == (int(ptr[-1]), 4, 16)
    again, ptr2 = frozen.cached_history(source, backbone, data.dataset, cache="disk",
                                        cache_dir=tmp_path / "cache")  # read back from disk
    assert torch.equal(again, history) and torch.equal(ptr2, ptr)
    with torch.no_grad():
        for i in (0, 17, len(data) - 1):
            g = data.dataset[i]
            fresh = torch.stack(backbone(g.x, g.edge_index, g.edge_attr,
                                         torch.zeros(g.num_nodes, dtype=torch.long)), dim=1)
            torch.testing.assert_close(history[ptr[i]:ptr[i + 1]], fresh, rtol=1e-5, atol=1e-6)


def test_frozen_refuses_another_fold(source_run, cfg_factory, tmp_path):
    ckpt, _ = source_run
    cfg = cfg_factory(["mode=frozen", f"backbone_ckpt={ckpt}", "fold=1"],
                      output_dir=tmp_path / "bad")
    with pytest.raises(UserError, match="fold=0"):
        run(cfg)
    assert not (tmp_path / "bad" / "results.json").exists()
