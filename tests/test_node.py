"""Node classification (task=node): Planetoid loading, masks, HISTOGRAPH per node, user errors."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import scatter

from histograph.errors import UserError
from histograph.nn.readouts.histograph import HistographReadout
from histograph.train import run
from tests.conftest import needs_mirror

cora = needs_mirror("Planetoid/Cora")


def test_graph_readout_is_the_mean_of_node_states():
    """HISTOGRAPH's graph output is the per-graph mean of the node states the node task uses."""
    torch.manual_seed(0)
    readout = HistographReadout(8, 4, heads=2).eval()
    history = [torch.randn(9, 8) for _ in range(4)]
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    z = readout.nodes(history, batch, 3)
    assert z.shape == (9, 8)
    assert torch.allclose(readout(history, batch, 3),
                          scatter(z, batch, dim=0, dim_size=3, reduce="mean"), atol=1e-6)


@cora
def test_planetoid_public_split(data_dir):
    from histograph.data.planetoid import load_planetoid

    data = load_planetoid("cora", data_dir)
    assert data.name == "Cora" and data.num_outputs == 7 and data.num_features == 1433
    assert [data.num_nodes(s) for s in ("train", "val", "test")] == [140, 500, 1000]
    assert data.data.num_nodes == 2708


def _accuracy_of_checkpoint(cfg, ckpt: str) -> dict[str, float]:
    """Re-evaluate a saved node model on the masks, independently of Lightning."""
    from tests.conftest import build_parts

    _, dm, net = build_parts(cfg)
    model = net.model
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items()
                           if k.startswith("model.")})
    model.eval()
    graph = dm.data.data
    with torch.no_grad():
        pred = model(graph).argmax(-1)
    return {s: float((pred[graph[f"{s}_mask"]] == graph.y[graph[f"{s}_mask"]]).float().mean())
            for s in ("val", "test")}


@cora
@pytest.mark.parametrize("readout", ["last", "histograph_stage1"])
def test_node_run_selects_on_validation_and_scores_the_masks(readout, cfg_factory):
    cfg = cfg_factory(["task=node", f"readout={readout}", "model.layers=3", "model.hidden=16",
                       "trainer.max_epochs=4"])
    res = run(cfg)
    assert res["task"] == "node" and res["dataset"] == "Cora" and res["fold"] is None
    assert res["protocol"] == "planetoid" and res["nodes"] == {"train": 140, "val": 500,
                                                               "test": 1000}
    h = res["history"]
    assert len(h["val"]) == len(h["test"]) == res["epochs"] == 4
    assert res["val"] == max(h["val"]) and res["selected_epoch"] == h["val"].index(res["val"])
    assert res["test"] == pytest.approx(h["test"][res["selected_epoch"]], abs=1e-6)
    # the logged accuracies are those of the saved best model on the val / test masks
    again = _accuracy_of_checkpoint(cfg, res["checkpoint"])
    assert again["val"] == pytest.approx(res["val"], abs=1e-6)
    assert again["test"] == pytest.approx(res["test"], abs=1e-6)
    # diagnostics: the whole history (input embedding + 3 layers), MAD among the val nodes
    assert len(res["dirichlet_energy"]) == len(res["mad"]) == 4
    assert res["diagnostics_split"] == "val"
    if readout == "last":
        assert res["layer_weights"] is None
    else:  # HISTOGRAPH reads layers 1..3 (include_input=false): 3 signed weights summing to 1
        assert res["readout_history_start"] == 1 and len(res["layer_weights"]) == 3
        assert sum(res["layer_weights"]) == pytest.approx(1.0, abs=1e-4)


@cora
def test_both_histograph_stages_over_all_nodes(cfg_factory):
    res = run(cfg_factory(["task=node", "readout=histograph", "model.layers=2",
                           "model.hidden=16", "trainer.max_epochs=1", "task.include_input=true"]))
    assert res["readout"] == "histograph" and len(res["layer_weights"]) == 3
    assert res["readout_history_start"] == 0


@cora
def test_early_stopping_keeps_best_validation_epoch(cfg_factory):
    res = run(cfg_factory(["task=node", "model.layers=2", "model.hidden=16",
                           "trainer.max_epochs=40", "callbacks.early_stopping.patience=1"]))
    assert res["epochs"] < 40  # stopped after one epoch without a validation improvement
    assert res["selected_epoch"] == res["history"]["val"].index(max(res["history"]["val"]))


@pytest.mark.parametrize("overrides, message", [
    (["task=node", "dataset=mutag"], "needs a node-classification dataset"),
    (["dataset=cora"], "add task=node"),
    (["task=node", "mode=frozen"], "graph classification only"),
    pytest.param(["task=node", "readout=mean"], "cannot classify nodes", marks=cora),
    pytest.param(["task=node", "task.input_dropout=1.5"], "input_dropout", marks=cora),
])
def test_user_errors(overrides, message, cfg_factory):
    with pytest.raises(UserError, match=message):
        run(cfg_factory(overrides + ["model.layers=1", "model.hidden=8"]))
