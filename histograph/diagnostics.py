r"""Over-smoothing diagnostics: how distinct the node states stay, layer by layer.

Two standard measures, computed for every entry :math:`\mathbf{X}^{(l)}` of a model's history
(input embedding and each layer's output, :math:`l = 0..K`) on the evaluation graphs:

**Dirichlet energy** (Cai & Wang, 2020; in the form of Rusch, Bronstein & Mishra, "A Survey on
Oversmoothing in Graph Neural Networks", 2023), per graph :math:`g` and averaged over graphs:

.. math::
    E(\mathbf{X}) = \frac{1}{|V_g|} \sum_{i \in V_g} \sum_{j \in \mathcal{N}(i)}
    \lVert \mathbf{x}_i - \mathbf{x}_j \rVert_2^2

(over the directed edges of ``edge_index``, so each undirected edge counts twice). It tends to 0
when neighbouring states become equal; it also scales with the norm of the states, so read it on
a log axis and next to the scale-free MAD.

**Mean average distance, MAD** (Chen et al., "Measuring and Relieving the Over-Smoothing Problem
for Graph Neural Networks from the Topological View", AAAI 2020), global target mask:

.. math::
    D_{ij} = 1 - \frac{\mathbf{x}_i^\top \mathbf{x}_j}{\lVert \mathbf{x}_i \rVert
    \lVert \mathbf{x}_j \rVert}, \qquad
    \bar{D}_i = \frac{1}{|V_g| - 1} \sum_{j \in V_g, j \ne i} D_{ij}, \qquad
    \mathrm{MAD} = \operatorname{mean}_i \bar{D}_i

over the nodes of graphs with at least two nodes. A zero vector has cosine 0 with everything
(distance 1), as in the reference code (scikit-learn's cosine distance). Chen et al. average only
the non-zero :math:`D_{ij}`; here every pair :math:`j \ne i` counts, which differs only when two
distinct nodes have exactly parallel states. With :math:`\hat{\mathbf{x}} = \mathbf{x}/\lVert
\mathbf{x} \rVert` and :math:`\mathbf{S}_g = \sum_{j \in g} \hat{\mathbf{x}}_j`,
:math:`\sum_{j \ne i} D_{ij} = (|V_g| - 1) - \hat{\mathbf{x}}_i^\top (\mathbf{S}_g -
\hat{\mathbf{x}}_i)`: linear in the number of nodes, one scatter per layer, no pairwise matrix.

Everything is vectorised over the graphs of a batch with scatter; the only Python loop is over the
history entries. :func:`smoothing_diagnostics` runs a model over a loader and returns one value per
history entry; each task's ``diagnose`` (:mod:`histograph.tasks`) picks the evaluation data, and
the training entry point stores the values in ``results.json`` as ``dirichlet_energy`` and ``mad``
and logs ``<split>/dirichlet_energy/<l>`` and ``<split>/mad/<l>`` (:func:`smoothing_metrics`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter


def _graph_index(x: Tensor, batch: Tensor | None, num_graphs: int | None) -> tuple[Tensor, int]:
    if batch is None:
        batch = x.new_zeros(x.size(0), dtype=torch.long)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return batch, num_graphs


def dirichlet_energy(x: Tensor, edge_index: Tensor, batch: Tensor | None = None,
                     num_graphs: int | None = None) -> Tensor:
    r"""Dirichlet energy :math:`E(\mathbf{X})` of each graph, shape ``[num_graphs]``.

    Args:
        x: node states ``[N, D]``.
        edge_index: directed edges ``[2, E]`` (PyG stores both directions of undirected edges).
        batch: graph index of every node ``[N]`` (``None``: one graph).
        num_graphs: number of graphs (inferred from ``batch`` when ``None``).
    """
    batch, num_graphs = _graph_index(x, batch, num_graphs)
    x = x.double()
    src, dst = edge_index
    per_edge = (x[src] - x[dst]).pow(2).sum(dim=-1)  # [E]
    total = scatter(per_edge, batch[src], dim=0, dim_size=num_graphs, reduce="sum")
    nodes = scatter(torch.ones_like(batch, dtype=x.dtype), batch, dim=0, dim_size=num_graphs,
                    reduce="sum")
    return total / nodes.clamp(min=1)


def average_distance(x: Tensor, batch: Tensor | None = None,
                     num_graphs: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Each node's mean cosine distance :math:`\bar{D}_i` to the other nodes of its graph.

    Returns:
        ``(d, valid)``: ``d`` ``[N]`` and a mask ``valid`` ``[N]`` of the nodes whose graph has at
        least two nodes (``d`` is 0 elsewhere).
    """
    batch, num_graphs = _graph_index(x, batch, num_graphs)
    x = x.double()
    unit = torch.nn.functional.normalize(x, dim=-1)  # zero rows stay zero
    sums = scatter(unit, batch, dim=0, dim_size=num_graphs, reduce="sum")  # [B, D]
    sizes = scatter(torch.ones_like(batch, dtype=x.dtype), batch, dim=0, dim_size=num_graphs,
                    reduce="sum")[batch]  # [N]
    self_sim = unit.pow(2).sum(dim=-1)  # 1, or 0 for a zero vector
    cos_others = (unit * sums[batch]).sum(dim=-1) - self_sim
    valid = sizes > 1
    d = ((sizes - 1) - cos_others) / (sizes - 1).clamp(min=1)
    return torch.where(valid, d.clamp(min=0.0), torch.zeros_like(d)), valid


def mean_average_distance(x: Tensor, batch: Tensor | None = None,
                          num_graphs: int | None = None) -> float:
    """MAD over all nodes of graphs with two or more nodes (``nan`` when there are none)."""
    d, valid = average_distance(x, batch, num_graphs)
    return float(d[valid].mean()) if bool(valid.any()) else float("nan")


class SmoothingMeter:
    """Accumulates both measures per history entry over batches.

    The energy is averaged over graphs, MAD over nodes (``mad_mask`` restricts MAD to some nodes,
    e.g. the validation nodes of a node-classification graph: pairs among those nodes only).
    """

    def __init__(self) -> None:
        self.energy_sum: Tensor | None = None  # [L]
        self.graphs = 0
        self.mad_sum: Tensor | None = None  # [L]
        self.mad_nodes = 0

    def update(self, history: Sequence[Tensor], edge_index: Tensor, batch: Tensor | None,
               num_graphs: int | None = None, mad_mask: Tensor | None = None) -> None:
        x0 = history[0]
        batch, num_graphs = _graph_index(x0, batch, num_graphs)
        mad_batch = batch if mad_mask is None else batch[mad_mask]
        energy, mad = [], []
        for x in history:
            energy.append(dirichlet_energy(x, edge_index, batch, num_graphs).sum())
            xs = x if mad_mask is None else x[mad_mask]
            d, valid = average_distance(xs, mad_batch, num_graphs)
            mad.append(d[valid].sum())
        energy_t, mad_t = torch.stack(energy).cpu(), torch.stack(mad).cpu()
        if self.energy_sum is None:
            self.energy_sum, self.mad_sum = energy_t, mad_t
        else:
            self.energy_sum, self.mad_sum = self.energy_sum + energy_t, self.mad_sum + mad_t
        self.graphs += num_graphs
        self.mad_nodes += int(valid.sum())

    def compute(self) -> dict[str, list[float] | None]:
        """``{"dirichlet_energy": [L floats], "mad": [L floats]}`` (``None`` if no data)."""
        if self.energy_sum is None or self.graphs == 0:
            return {"dirichlet_energy": None, "mad": None}
        energy = (self.energy_sum / self.graphs).tolist()
        mad = (self.mad_sum / self.mad_nodes).tolist() if self.mad_nodes else None
        return {"dirichlet_energy": energy, "mad": mad}


@torch.no_grad()
def smoothing_diagnostics(model: torch.nn.Module, batches: Iterable,
                          device: torch.device | str = "cpu",
                          mad_mask_key: str | None = None) -> dict[str, list[float] | None]:
    """Run ``model.history(batch)`` over ``batches`` (eval mode) and measure every entry.

    Args:
        model: anything with ``history(data) -> list[Tensor]`` (the graph and node models).
        batches: PyG batches (or single ``Data`` graphs) with ``edge_index``.
        device: where to run the model.
        mad_mask_key: name of a boolean node mask restricting MAD (e.g. ``"val_mask"``).

    Returns:
        ``{"dirichlet_energy": [...], "mad": [...]}`` with one value per history entry, or
        ``None`` values when the model has no history (e.g. a frozen-backbone cache).
    """
    history_fn = getattr(model, "history", None)
    if history_fn is None:
        return {"dirichlet_energy": None, "mad": None}
    was_training = model.training
    model.eval()
    meter = SmoothingMeter()
    try:
        for data in batches:
            if getattr(data, "edge_index", None) is None or getattr(data, "x", None) is None:
                return {"dirichlet_energy": None, "mad": None}
            data = data.to(device)
            batch = getattr(data, "batch", None)
            num_graphs = int(getattr(data, "num_graphs", 1)) if batch is not None else 1
            mask = data[mad_mask_key] if mad_mask_key else None
            meter.update(history_fn(data), data.edge_index, batch, num_graphs, mask)
    finally:
        model.train(was_training)
    return meter.compute()


def smoothing_metrics(stats: dict[str, list[float] | None], split: str) -> dict[str, float]:
    """Flat logger keys: ``<split>/dirichlet_energy/<l>`` and ``<split>/mad/<l>``."""
    out: dict[str, float] = {}
    for name, values in stats.items():
        if not isinstance(values, (list, tuple)) or not values:
            continue
        width = len(str(len(values) - 1))
        out.update({f"{split}/{name}/{layer:0{width}d}": float(v)
                    for layer, v in enumerate(values)})
    return out
