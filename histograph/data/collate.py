"""Cached collation: mini-batches of an in-memory graph set without per-graph Python work.

PyG's :class:`~torch_geometric.loader.DataLoader` builds every mini-batch from a list of
:class:`~torch_geometric.data.Data` objects (one ``dataset[i]`` and one Python-level collate per
graph and attribute, every step). For the small in-memory sets of graph classification
(hundreds to tens of thousands of graphs of 10..500 nodes) that bookkeeping costs as much as the
arithmetic of a small GNN. An :class:`~torch_geometric.data.InMemoryDataset` already keeps all
graphs collated as flat tensors plus per-attribute offsets (``slices``), so a batch is a set of
contiguous ranges of those tensors. :class:`CachedGraphLoader` exploits that:

* once per epoch, the graphs are put in this epoch's order with one vectorised gather per
  attribute group (``repeat_interleave`` over the ranges; no loop over graphs), and the node
  indices of ``edge_index`` are shifted to that order;
* every step then slices one contiguous block: ``x``, ``edge_attr`` and ``y`` are views, and
  ``edge_index``, ``batch`` and ``ptr`` need one subtraction each.

Evaluation loaders keep their (fixed-order) flat tensors across epochs. The result is a
:class:`~torch_geometric.data.Batch` equal to PyG's collation of the same graphs (the tests check
this attribute by attribute). ``bucket_by_size=True`` groups graphs of similar size into the same
batch (sorted within windows of ``bucket_window`` batches, batch order shuffled), which cuts the
padding of dense per-graph stages such as HISTOGRAPH's node attention on DD/REDDIT-sized sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, InMemoryDataset


def _exclusive_cumsum(counts: Tensor) -> Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def _ranges(starts: Tensor, counts: Tensor, total: int) -> Tensor:
    """Concatenated ``arange(starts[i], starts[i] + counts[i])`` for all ``i`` (vectorised)."""
    shift = starts - _exclusive_cumsum(counts)[:-1]
    return torch.repeat_interleave(shift, counts, output_size=total) + torch.arange(total)


# the per-graph node counts PyG's collate keeps when graphs set num_nodes explicitly
_COUNT_KEYS = ("num_nodes", "_num_nodes")


def unsupported_reason(dataset) -> str | None:
    """Why ``dataset`` cannot be served by :class:`CachedGraphLoader` (``None``: it can)."""
    if not isinstance(dataset, InMemoryDataset):
        return f"{type(dataset).__name__} is not an InMemoryDataset"
    if dataset.transform is not None:
        return "the dataset has a per-access transform"
    data = dataset._data
    if type(data) is not Data:
        return f"the graphs are {type(data).__name__}, not Data"
    if dataset.slices is None:
        return "the dataset holds a single graph"
    for key, value in data.to_dict().items():
        if key in _COUNT_KEYS:  # read by _node_counts
            continue
        if key not in dataset.slices or not isinstance(value, Tensor) or value.is_sparse:
            return f"attribute {key!r} is not a dense per-graph tensor"
        if "batch" in key or data.__cat_dim__(key, value) is None:
            return f"attribute {key!r} is not concatenated along a dimension"
    if _node_counts(dataset) is None:
        return "the number of nodes per graph is unknown (no x, pos or num_nodes)"
    return None


def _node_counts(dataset: InMemoryDataset) -> Tensor | None:
    """Nodes of every graph of the full dataset: explicit counts, else the rows of x or pos."""
    data, slices = dataset._data, dataset.slices
    num_nodes = getattr(data, "_num_nodes", None)
    total_graphs = len(next(iter(slices.values()))) - 1
    if isinstance(num_nodes, (list, tuple)) and len(num_nodes) == total_graphs:
        return torch.as_tensor(num_nodes, dtype=torch.long)
    for key in ("x", "pos"):
        if key in slices and data.__cat_dim__(key, data[key]) == 0:
            return torch.diff(slices[key]).long()
    return None


@dataclass
class _Group:
    """Attributes that share one slice vector (e.g. ``edge_index`` and ``edge_attr``)."""

    keys: list[str]
    slices: Tensor  # [num_graphs + 1] offsets into the flat tensors


class CollatedGraphs:
    """The flat tensors of an :class:`~torch_geometric.data.InMemoryDataset` (or of a subset
    ``dataset[idx]``) and the vectorised gathers that put its graphs in any order.

    :param dataset: an in-memory dataset without ``transform`` (see :func:`unsupported_reason`).
    """

    def __init__(self, dataset: InMemoryDataset) -> None:
        reason = unsupported_reason(dataset)
        if reason is not None:
            raise ValueError(f"cached collation does not apply: {reason}")
        data, slices = dataset._data, dataset.slices
        indices = dataset.indices()
        self.graph_ids = (torch.arange(indices.start, indices.stop, indices.step)
                          if isinstance(indices, range)
                          else torch.as_tensor(indices, dtype=torch.long).view(-1))
        self.num_graphs = self.graph_ids.numel()
        self.node_counts = _node_counts(dataset)[self.graph_ids]
        self.values: dict[str, Tensor] = {}
        self.cat_dims: dict[str, int] = {}
        self.increment: dict[str, bool] = {}
        self.groups: list[_Group] = []
        for key, value in data.to_dict().items():
            if key in _COUNT_KEYS:
                continue
            self.values[key] = value
            self.cat_dims[key] = data.__cat_dim__(key, value) % max(value.dim(), 1)
            self.increment[key] = "index" in key or key == "face"
            for group in self.groups:
                if group.slices is slices[key] or torch.equal(group.slices, slices[key]):
                    group.keys.append(key)
                    break
            else:
                self.groups.append(_Group([key], slices[key]))

    def __len__(self) -> int:
        return self.num_graphs

    def arrange(self, order: Tensor, batch_size: int) -> "ArrangedGraphs":
        """Put the graphs at positions ``order`` (of this set) one after the other; batches are
        consecutive blocks of ``batch_size`` graphs."""
        order = order.long()
        ids = self.graph_ids[order]
        nodes = self.node_counts[order]
        node_ptr = _exclusive_cumsum(nodes)
        tensors: dict[str, Tensor] = {}
        group_ptr: dict[str, Tensor] = {}
        for group in self.groups:
            counts = (group.slices[ids + 1] - group.slices[ids]).long()
            ptr = _exclusive_cumsum(counts)
            total = int(ptr[-1])
            index = _ranges(group.slices[ids].long(), counts, total)
            owner = None
            for key in group.keys:
                dim = self.cat_dims[key]
                value = self.values[key].index_select(dim, index)
                if self.increment[key]:  # node indices are stored per graph: shift to the order
                    if owner is None:
                        owner = torch.repeat_interleave(torch.arange(len(ids)), counts,
                                                        output_size=total)
                    shape = [1] * value.dim()
                    shape[dim] = -1
                    value = value + node_ptr[owner].view(shape).to(value.dtype)
                tensors[key] = value
                group_ptr[key] = ptr
        batch = torch.repeat_interleave(torch.arange(len(ids)), nodes,
                                        output_size=int(node_ptr[-1]))
        return ArrangedGraphs(tensors, group_ptr, self.cat_dims, self.increment, node_ptr, batch,
                              len(ids), int(batch_size))


class ArrangedGraphs:
    """Graphs laid out in one epoch's order; :meth:`batch` slices out mini-batch ``i``."""

    def __init__(self, tensors: dict[str, Tensor], ptrs: dict[str, Tensor],
                 cat_dims: dict[str, int], increment: dict[str, bool], node_ptr: Tensor,
                 batch: Tensor, num_graphs: int, batch_size: int) -> None:
        self.tensors, self.cat_dims, self.increment = tensors, cat_dims, increment
        self.node_ptr, self.batch_vec = node_ptr, batch
        self.num_graphs, self.batch_size = num_graphs, batch_size
        # Python ints once per epoch, so that each step needs no host round trip
        self._ptr_lists = {k: p.tolist() for k, p in ptrs.items()}
        self._node_list = node_ptr.tolist()
        self._ptrs = ptrs

    def __len__(self) -> int:
        return math.ceil(self.num_graphs / self.batch_size)

    def to(self, device: torch.device | str) -> "ArrangedGraphs":
        """The same graphs with their tensors on ``device`` (one copy for the whole epoch, so
        that no step copies its batch); the offsets stay host integers."""
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        self.node_ptr, self.batch_vec = self.node_ptr.to(device), self.batch_vec.to(device)
        self._ptrs = {k: p.to(device) for k, p in self._ptrs.items()}
        return self

    def batch(self, i: int) -> Batch:
        """Mini-batch ``i``: graphs ``i * batch_size`` up to the next block (PyG layout)."""
        g0 = i * self.batch_size
        g1 = min(g0 + self.batch_size, self.num_graphs)
        n0, n1 = self._node_list[g0], self._node_list[g1]
        out = Batch(_base_cls=Data)
        slice_dict, inc_dict = {}, {}
        for key, value in self.tensors.items():
            p = self._ptr_lists[key]
            part = value.narrow(self.cat_dims[key], p[g0], p[g1] - p[g0])
            if self.increment[key]:
                part = part - n0
                inc_dict[key] = self.node_ptr[g0:g1] - n0
            else:
                inc_dict[key] = torch.zeros(g1 - g0, dtype=torch.long,
                                            device=self.node_ptr.device)
            out[key] = part
            slice_dict[key] = self._ptrs[key][g0:g1 + 1] - p[g0]
        out.batch = self.batch_vec[n0:n1] - g0
        out.ptr = self.node_ptr[g0:g1 + 1] - n0
        out._num_graphs = g1 - g0
        out._slice_dict, out._inc_dict = slice_dict, inc_dict
        if "x" not in self.tensors and "pos" not in self.tensors:
            out.num_nodes = n1 - n0
            # per graph, as PyG's collate keeps them (get_example / to_data_list read it); from
            # the host copy of the offsets (no device read per step)
            out._store._num_nodes = [b - a for a, b in zip(self._node_list[g0:g1],
                                                            self._node_list[g0 + 1:g1 + 1])]
        return out


def size_bucketed_order(sizes: Tensor, batch_size: int, window: int,
                        generator: torch.Generator) -> Tensor:
    """A shuffled order whose consecutive blocks of ``batch_size`` hold graphs of similar size.

    Graphs are shuffled, sorted by size within windows of ``window * batch_size`` graphs (so the
    batch composition still varies between epochs), cut into batches, and the batches are
    shuffled. Everything is one sort; no loop over graphs.
    """
    n = sizes.numel()
    perm = torch.randperm(n, generator=generator)
    span = max(1, window) * batch_size
    chunk = torch.arange(n) // span
    key = chunk * (int(sizes.max()) + 1 if n else 1) + sizes[perm]
    perm = perm[torch.sort(key, stable=True).indices]
    block = torch.arange(n) // batch_size
    num_blocks = int(block[-1]) + 1 if n else 0
    shuffled = torch.randperm(num_blocks, generator=generator)[block]
    return perm[torch.sort(shuffled * n + torch.arange(n)).indices]


class CachedGraphLoader:
    """An iterable of mini-batches over an in-memory graph set, with cached collation.

    A drop-in for :class:`torch_geometric.loader.DataLoader` with ``num_workers=0`` on
    :class:`~torch_geometric.data.InMemoryDataset` subsets (see the module docstring). Each
    iteration draws from torch's global generator exactly what ``DataLoader`` +
    :class:`~torch.utils.data.RandomSampler` draw (a base seed, then the sampler's seed, from
    which the permutation comes), so for the same generator state it yields the same graphs in
    the same order as PyG's loader, and seeding and checkpointed RNG states govern it alike.

    :param dataset: the graphs (an ``InMemoryDataset`` or a subset of one, without transform).
    :param batch_size: graphs per batch.
    :param shuffle: new random order every epoch (else dataset order, arranged once).
    :param bucket_by_size: batch graphs of similar size together (training option).
    :param bucket_window: batches per sorting window when ``bucket_by_size``.
    :param rank: this process's rank when data-parallel: each rank gets a disjoint share; a
        shuffled (training) loader pads the shares to equal length by wrapping around like
        :class:`~torch.utils.data.DistributedSampler` (every rank must step together), an
        evaluation loader does not (every graph is evaluated exactly once).
    :param world_size: number of data-parallel processes.
    :param device: keep the arranged tensors there (e.g. the GPU): one copy per epoch, or once
        for an evaluation loader, instead of one per step (``None``: on the CPU, copied per batch
        by the trainer).
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int = 32, shuffle: bool = False,
                 bucket_by_size: bool = False, bucket_window: int = 64, rank: int = 0,
                 world_size: int = 1, device: torch.device | str | None = None) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.graphs = CollatedGraphs(dataset)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle, self.bucket_by_size = shuffle, bucket_by_size
        self.bucket_window = int(bucket_window)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = device
        self._fixed: ArrangedGraphs | None = None

    def _positions(self) -> Tensor:
        """This epoch's order of the graphs (positions in ``dataset``), sharded by rank."""
        n = len(self.graphs)
        per_rank = math.ceil(n / self.world_size)
        if not (self.shuffle or self.bucket_by_size):
            order = torch.arange(n)
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator().manual_seed(seed)
            if self.bucket_by_size:
                sizes = self.graphs.node_counts
                if self.world_size > 1:  # bucket within each rank's share
                    mine = self._shard(torch.randperm(n, generator=generator), per_rank)
                    return mine[size_bucketed_order(sizes[mine], self.batch_size,
                                                    self.bucket_window, generator)]
                return size_bucketed_order(sizes, self.batch_size, self.bucket_window,
                                           generator)
            order = torch.randperm(n, generator=generator)
        return self._shard(order, per_rank) if self.world_size > 1 else order

    def _shard(self, order: Tensor, per_rank: int) -> Tensor:
        if not (self.shuffle or self.bucket_by_size):  # evaluation: no duplicates
            return order[self.rank::self.world_size]
        total = per_rank * self.world_size
        padded = order.repeat(math.ceil(total / max(order.numel(), 1)))[:total]
        return padded[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.graphs)
        mine = math.ceil(n / self.world_size) if self.shuffle or self.bucket_by_size \
            else len(range(self.rank, n, self.world_size))
        return math.ceil(mine / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        # A generator: nothing is drawn until the first batch is requested (Lightning calls
        # iter() once on any non-DataLoader iterable just to check it). Then draw what torch's
        # DataLoader draws from the global generator for an iteration (its base seed; then the
        # sampler's seed in _positions), so that the random stream (dropout, later epochs) is
        # the one PyG's loader leaves: a run gives the same numbers with data.loader=cached/pyg.
        torch.empty((), dtype=torch.int64).random_()
        if self.shuffle or self.bucket_by_size:
            arranged = self.graphs.arrange(self._positions(), self.batch_size)
            if self.device is not None:
                arranged.to(self.device)
        else:
            if self._fixed is None:
                self._fixed = self.graphs.arrange(self._positions(), self.batch_size)
                if self.device is not None:
                    self._fixed.to(self.device)
            arranged = self._fixed
        for i in range(len(arranged)):
            yield arranged.batch(i)
