"""Over-smoothing diagnostics: formulas against brute force, batching, and the results contract."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch_geometric.data import Batch, Data

from histograph.diagnostics import (SmoothingMeter, average_distance, dirichlet_energy,
                                    mean_average_distance, smoothing_diagnostics,
                                    smoothing_metrics)
from histograph.train import run


def _path_graph(x: list[list[float]]) -> Data:
    n = len(x)
    src = list(range(n - 1)) + list(range(1, n))
    dst = list(range(1, n)) + list(range(n - 1))
    return Data(x=torch.tensor(x), edge_index=torch.tensor([src, dst]))


def _brute_mad(x: torch.Tensor) -> torch.Tensor:
    """Per-node mean cosine distance to the other nodes, pairwise (zero vectors: cosine 0)."""
    x = x.double()
    norm = x.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, x / norm.clamp(min=1e-300), torch.zeros_like(x))
    dist = 1 - unit @ unit.t()
    n = x.size(0)
    off = ~torch.eye(n, dtype=torch.bool)
    return (dist * off).sum(1) / (n - 1)


def test_dirichlet_energy_by_hand():
    g = _path_graph([[0.0], [1.0], [3.0]])  # edges 0-1 (diff 1), 1-2 (diff 2), both directions
    assert dirichlet_energy(g.x, g.edge_index).item() == pytest.approx(2 * (1 + 4) / 3)
    flat = _path_graph([[2.0, -1.0]] * 4)
    assert dirichlet_energy(flat.x, flat.edge_index).item() == 0.0


def test_batched_equals_per_graph():
    torch.manual_seed(0)
    graphs = [_path_graph(torch.randn(n, 5).tolist()) for n in (2, 7, 4)]
    graphs.append(Data(x=torch.randn(1, 5), edge_index=torch.empty(2, 0, dtype=torch.long)))
    b = Batch.from_data_list(graphs)
    energy = dirichlet_energy(b.x, b.edge_index, b.batch, b.num_graphs)
    d, valid = average_distance(b.x, b.batch, b.num_graphs)
    for i, g in enumerate(graphs):
        assert energy[i].item() == pytest.approx(dirichlet_energy(g.x, g.edge_index).item())
        nodes = b.batch == i
        if g.num_nodes > 1:
            assert torch.allclose(d[nodes], _brute_mad(g.x), atol=1e-9)
        else:
            assert not valid[nodes].any()  # a singleton graph has no pair


def test_mad_matches_pairwise_with_zero_vector():
    torch.manual_seed(1)
    x = torch.randn(9, 4)
    x[3] = 0.0  # a dead (all-zero) node: distance 1 to everything, as scikit-learn's cosine
    assert mean_average_distance(x) == pytest.approx(_brute_mad(x).mean().item(), abs=1e-9)
    assert mean_average_distance(torch.ones(5, 3)) == pytest.approx(0.0, abs=1e-9)
    assert mean_average_distance(torch.eye(4)) == pytest.approx(1.0)


def test_meter_accumulates_over_batches_and_masks():
    torch.manual_seed(2)
    graphs = [_path_graph(torch.randn(n, 3).tolist()) for n in (3, 5, 6, 2)]
    history = lambda g: [g.x, 2 * g.x.flip(1).relu()]  # noqa: E731 - two node-wise "layers"
    whole = SmoothingMeter()
    b = Batch.from_data_list(graphs)
    whole.update(history(b), b.edge_index, b.batch, b.num_graphs)
    parts = SmoothingMeter()
    for chunk in (graphs[:1], graphs[1:]):
        c = Batch.from_data_list(chunk)
        parts.update(history(c), c.edge_index, c.batch, c.num_graphs)
    a, p = whole.compute(), parts.compute()
    assert len(a["dirichlet_energy"]) == 2
    assert a["dirichlet_energy"] == pytest.approx(p["dirichlet_energy"])
    assert a["mad"] == pytest.approx(p["mad"])
    # energy = mean over graphs; MAD = mean over nodes
    per_graph = [dirichlet_energy(g.x, g.edge_index).item() for g in graphs]
    assert a["dirichlet_energy"][0] == pytest.approx(sum(per_graph) / len(per_graph))
    # a node mask restricts MAD to pairs among the masked nodes
    g = _path_graph(torch.randn(8, 3).tolist())
    mask = torch.tensor([True, False, True, True, False, False, True, False])
    m = SmoothingMeter()
    m.update([g.x], g.edge_index, None, 1, mad_mask=mask)
    assert m.compute()["mad"][0] == pytest.approx(_brute_mad(g.x[mask]).mean().item())
    assert smoothing_metrics(a, "val") == {"val/dirichlet_energy/0": a["dirichlet_energy"][0],
                                           "val/dirichlet_energy/1": a["dirichlet_energy"][1],
                                           "val/mad/0": a["mad"][0], "val/mad/1": a["mad"][1]}


def test_results_hold_diagnostics_of_the_best_checkpoint(cfg_factory, tmp_path):
    """results.json stores one value per history entry, logged to the CSV too, and they are
    the values of the selected (best-validation) checkpoint on the validation graphs."""
    from torch_geometric.loader import DataLoader

    from tests.conftest import build_parts

    cfg = cfg_factory(["model.layers=3", "model.hidden=16", "readout=mean",
                       "trainer.max_epochs=3"])
    res = run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert saved["diagnostics_split"] == "val"
    assert len(saved["dirichlet_energy"]) == len(saved["mad"]) == 4
    assert all(v >= 0 for v in saved["dirichlet_energy"])
    assert all(0 <= v <= 2 for v in saved["mad"])
    with open(out / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("val/dirichlet_energy/0")]
    assert logged and float(logged[-1]["val/mad/3"]) == pytest.approx(saved["mad"][3])

    _, dm, net = build_parts(cfg)
    model = net.model
    state = torch.load(res["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items()
                           if k.startswith("model.")})
    again = smoothing_diagnostics(model, DataLoader(dm.subset("val"), batch_size=7))
    assert again["dirichlet_energy"] == pytest.approx(saved["dirichlet_energy"], rel=1e-5)
    assert again["mad"] == pytest.approx(saved["mad"], rel=1e-5)


def test_gin_protocol_measures_the_test_graphs(cfg_factory):
    res = run(cfg_factory(["protocol=gin", "model.layers=1", "model.hidden=8", "readout=sum",
                           "trainer.max_epochs=1"]))
    assert res["diagnostics_split"] == "test" and len(res["dirichlet_energy"]) == 2
