"""HISTOGRAPH readout, from "Learning from Historical Activations in Graph Neural Networks".

Galron, Sinai, Maron, Eliasof, ICLR 2026 (https://arxiv.org/abs/2601.01123); see the class.

Long file: one concept, the readout with its formula docstring, and the two pieces its node
attention needs on every batch (``size_groups``' padding by size class and the kernel pin for
CUDA), which have no other user.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_geometric.utils import scatter

from histograph.errors import invalid_choice
from histograph.nn.precision import autocast_off, fp32
from histograph.nn.readouts.base import History, Readout

NORMALIZATIONS = ("signed", "softmax")
SCOPES = ("graph", "batch")
PROJECTIONS = ("per_layer", "shared")
GUARDS = ("relative", "absolute")
# Smallest magnitude of the signed denominator under the relative guard (all scores ~ 0).
MIN_DENOMINATOR = 1e-6


def sinusoidal_encoding(length: int, channels: int) -> Tensor:
    r"""Transformer-style encoding :math:`P \in \mathbb{R}^{length \times channels}`:
    :math:`P_{l,2i} = \sin(l / 10000^{2i/D})`, :math:`P_{l,2i+1} = \cos(l / 10000^{2i/D})`."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.pow(10000.0, -torch.arange(0, channels, 2, dtype=torch.float64) / channels)
    enc = torch.zeros(length, channels, dtype=torch.float64)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: channels // 2])
    return enc.to(torch.get_default_dtype())


def signed_guard(z: Tensor, eps: float | Tensor) -> Tensor:
    r""":math:`\mathrm{sign}(z)\max(|z|, \epsilon)` with :math:`\mathrm{sign}(0) = +1`; finite
    value and gradient everywhere (the clamped branch has zero gradient). ``eps`` may be a
    tensor broadcastable to ``z`` (the relative guard's per-graph floor)."""
    return torch.where(z >= 0, z.clamp(min=eps), z.clamp(max=-eps))


#: ``scaled_dot_product_attention`` kernels the node attention may use on CUDA: every one but
#: cuDNN's. cuDNN's attention builds an execution plan for each new input shape; the node
#: attention's block shapes (graphs per size class, largest graph) change with every batch, so
#: PyTorch's choice of it for bf16 on Hopper made HISTOGRAPH train up to 27x slower in bf16-mixed
#: than in fp32 (scripts/gpu_check.py and scripts/bench_attention.py, docs/benchmarks.md).
NODE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Padded slots a size class may add to the next-larger one before the two are padded
# together: one attention call costs about as much as this many extra padded slots on a CPU
MERGE_SLOTS = 2048


def size_groups(batch: Tensor, num_graphs: int, merge_slots: int | None = None
                ) -> tuple[Tensor, list[tuple[int, int, int]], int]:
    r"""Where every node goes when graphs are padded by size class instead of to the largest.

    Graphs fall into power-of-two size classes (:math:`2^{b-1} < N_g \le 2^b`); adjacent
    classes are merged while the extra padding, :math:`B_b (M_{b'}^2 - M_b^2)`, stays below
    ``merge_slots``. Group :math:`j` becomes a dense block of :math:`B_j` graphs padded to its
    largest graph :math:`M_j`, stored row-major in one flat buffer.

    Args:
        batch (torch.Tensor): Sorted graph index of every node, shape :obj:`[N]`.
        num_graphs (int): Number of graphs :obj:`B` (empty graphs take no slot).
        merge_slots (int, optional): Merge threshold in padded slots (``0``: never merge;
            default: the module constant :data:`MERGE_SLOTS`).

    Returns:
        (dest, blocks, total): every node's row in the flat buffer :obj:`[N]`; per block
        ``(offset, B_j, M_j)``; the buffer length :math:`\sum_j B_j M_j`. Exactly one
        device-to-host copy (the graph sizes, ``B`` integers: the block shapes must be known
        on the host); the per-graph bookkeeping runs on the host in NumPy and comes back in
        one non-blocking copy; vectorised over nodes and graphs.
    """
    merge_slots = MERGE_SLOTS if merge_slots is None else merge_slots
    device = batch.device
    counts_dev = torch.zeros(num_graphs, dtype=torch.long, device=device)
    counts_dev.scatter_add_(0, batch, torch.ones_like(batch))  # no host round trip
    counts = counts_dev.cpu().numpy()  # the one sync; the rest is host bookkeeping (numpy)
    # size class = bit length of N_g - 1 (1 node: class 0, 2: 1, 3-4: 2, 5-8: 3, ...)
    cls = np.frexp(np.maximum(counts - 1, 0).astype(np.float64))[1].astype(np.int64)
    top = max(int(batch.numel()), 1).bit_length() + 1
    nonempty = counts > 0
    cls = np.where(nonempty, cls, top)  # empty graphs: an extra, ignored class
    largest = np.zeros(top + 1, dtype=np.int64)
    np.maximum.at(largest, cls, counts)  # largest graph per class
    members = np.bincount(cls, weights=nonempty, minlength=top + 1).astype(np.int64)
    group_of = [0] * (top + 1)
    groups: list[list[int]] = []  # [graphs, largest]
    for b in range(top):  # over size classes (at most ~log2(N) + 1), never over graphs
        if not members[b]:
            continue
        size = int(largest[b])
        if groups and groups[-1][0] * (size ** 2 - groups[-1][1] ** 2) < merge_slots:
            groups[-1] = [groups[-1][0] + int(members[b]), size]
        else:
            groups.append([int(members[b]), size])
        group_of[b] = len(groups) - 1
    blocks, offset = [], 0
    for num, size in groups:
        blocks.append((offset, num, size))
        offset += num * size
    group_of[top] = len(groups)  # empty graphs
    group = np.asarray(group_of)[cls]  # [B]
    one_hot = np.eye(len(groups) + 1, dtype=np.int64)[group]  # [B, G + 1]
    slot = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # rank of each graph within its group
    info = np.asarray([[o, m] for o, _, m in blocks] + [[0, 0]], dtype=np.int64)  # [G+1, 2]
    graph_row = info[group, 0] + slot * info[group, 1]  # first row of each graph's block
    start = np.cumsum(counts) - counts  # first node of each graph
    shift = torch.from_numpy(graph_row - start)  # [B]: a node's row = its index + this
    if device.type == "cuda":  # back without blocking the host
        shift = shift.pin_memory().to(device, non_blocking=True)
    else:
        shift = shift.to(device)
    dest = shift[batch] + torch.arange(batch.numel(), device=device)
    return dest, blocks, offset


class HistographReadout(Readout):
    r"""The HISTOGRAPH readout from the `"Learning from Historical Activations in Graph Neural
    Networks" <https://arxiv.org/abs/2601.01123>`_ paper (Galron, Sinai, Maron, Eliasof,
    ICLR 2026).

    It pools the whole history :math:`\mathcal{X} = [\mathbf{X}^{(0)}, \ldots, \mathbf{X}^{(K)}]
    \in \mathbb{R}^{N \times L \times D}` (input embedding and every layer's output,
    :math:`L = K + 1`) instead of the last layer only:

    .. math::
        \tilde{\mathcal{X}}_{v,l} &= \mathcal{X}_{v,l} \mathbf{W}^{(l)} + \mathbf{b}^{(l)}
        + \mathbf{P}_l

        s_{v,l} &= \langle \tilde{\mathcal{X}}_{v,L-1} \mathbf{W}_Q,
        \tilde{\mathcal{X}}_{v,l} \mathbf{W}_K \rangle / \sqrt{D}, \qquad
        c_{g,l} = \frac{1}{|g|} \sum_{v \in g} s_{v,l}

        \alpha_{g,l} &= \frac{c_{g,l}}{\mathrm{guard}(\sum_{l'} c_{g,l'})}, \qquad
        \mathbf{H}_v = \sum_{l} \alpha_{g(v),l} \, \tilde{\mathcal{X}}_{v,l}

        \mathbf{Z} &= \mathrm{LayerNorm}(\mathbf{H} + \mathrm{MHSA}_g(\mathbf{H})), \qquad
        \mathbf{G}_g = \frac{1}{|g|} \sum_{v \in g} \mathbf{Z}_v

    with :math:`\mathbf{P}` the fixed sinusoidal encoding of the layer index (base 10000, sine on
    even and cosine on odd channels), :math:`\mathrm{guard}(z) = \mathrm{sign}(z)\max(|z|,
    \epsilon)` (:math:`\mathrm{sign}(0) = +1`) and :math:`\mathrm{MHSA}_g` multi-head
    self-attention among the nodes of graph :math:`g` (no positional encoding, no adjacency mask).
    The signed weights sum to one but may be negative: a finite-impulse-response filter over the
    layer trajectory. The classifier MLP on :math:`\mathbf{G}` is not part of this module.

    Decisions of METHOD.md and their switches: per-layer projection :math:`\mathbf{W}^{(l)}`
    (:obj:`projection="shared"`: one linear for all layers); scores averaged per graph
    (:obj:`scope="batch"`: over all nodes of the mini-batch, as the paper's text reads); signed
    normalisation with a sign-keeping :math:`\epsilon` guard (:obj:`normalization="softmax"`);
    residual and LayerNorm in stage 2 (:obj:`residual`, :obj:`layer_norm`). Ablations:
    :obj:`layer_stage=False` uses :math:`\mathbf{H}_v = \tilde{\mathcal{X}}_{v,L-1}`,
    :obj:`node_stage=False` uses :math:`\mathbf{Z} = \mathbf{H}`. :math:`\mathbf{W}_Q,
    \mathbf{W}_K` have no bias, as in the formulas.

    Cost: :math:`O(N \cdot L \cdot D^2)` for stage 1 (the per-layer projection; the scores use
    :math:`\langle q, W_K x\rangle = \langle W_K^\top q, x\rangle`, so no key is computed per
    layer) plus :math:`O(\sum_g N_g^2 \cdot D)` for stage 2 (graphs grouped into power-of-two
    size buckets, each padded to its largest graph with a key mask; no loop over graphs).

    Args:
        in_channels (int): Node feature size :math:`D` of every history entry.
        history_len (int): Number of history entries :math:`L` (message-passing layers + 1).
        normalization (str, optional): :obj:`"signed"` or :obj:`"softmax"` layer weights.
            (default: :obj:`"signed"`)
        scope (str, optional): Average layer scores per :obj:`"graph"` or over the whole
            :obj:`"batch"`. (default: :obj:`"graph"`)
        layer_stage (bool, optional): Use the layer-wise attention (stage 1).
            (default: :obj:`True`)
        node_stage (bool, optional): Use the node-wise attention (stage 2).
            (default: :obj:`True`)
        projection (str, optional): :obj:`"per_layer"` or :obj:`"shared"` input projection.
            (default: :obj:`"per_layer"`)
        heads (int, optional): Attention heads of stage 2; must divide :obj:`in_channels`.
            (default: :obj:`4`)
        residual (bool, optional): Add :math:`\mathbf{H}` to the stage-2 output.
            (default: :obj:`True`)
        layer_norm (bool, optional): Apply LayerNorm after stage 2. (default: :obj:`True`)
        guard (str, optional): How the signed denominator is kept away from zero:
            :obj:`"relative"` floors :math:`|\sum_l c_{g,l}|` at
            :math:`\epsilon \sum_l |c_{g,l}|` (so :math:`|\alpha_{g,l}| \le 1/\epsilon`: the
            weights and their gradients stay bounded when the scores nearly cancel, which with an
            absolute floor made training diverge to NaN gradients on OGB and MUTAG runs);
            :obj:`"absolute"` floors it at :math:`\epsilon`. Both keep the sign.
            (default: :obj:`"relative"`)
        eps (float, optional): The guard's floor (relative: a fraction of
            :math:`\sum_l |c_{g,l}|`; absolute: a magnitude). (default: :obj:`0.01`)
        dropout (float, optional): Dropout on the stage-2 attention weights (training only).
            (default: :obj:`0.0`)
    """

    #: its projection and node attention may run in bf16; the layer weights are computed in fp32
    full_precision = False
    #: the attention kernels allowed on CUDA (:data:`NODE_SDPA_BACKENDS`; ``None``: PyTorch's
    #: choice, which scripts/bench_attention.py sets to compare)
    sdpa_backends: list | None = NODE_SDPA_BACKENDS

    def __init__(self, in_channels: int, history_len: int, *, normalization: str = "signed",
                 scope: str = "graph", layer_stage: bool = True, node_stage: bool = True,
                 projection: str = "per_layer", heads: int = 4, residual: bool = True,
                 layer_norm: bool = True, guard: str = "relative", eps: float = 0.01,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, history_len)
        if normalization not in NORMALIZATIONS:
            raise invalid_choice("normalization", normalization, NORMALIZATIONS)
        if scope not in SCOPES:
            raise invalid_choice("scope", scope, SCOPES)
        if projection not in PROJECTIONS:
            raise invalid_choice("projection", projection, PROJECTIONS)
        if heads < 1 or in_channels % heads != 0:
            raise ValueError(f"heads={heads} must be a positive divisor of in_channels="
                             f"{in_channels}; choose heads that divides it.")
        if guard not in GUARDS:
            raise invalid_choice("guard", guard, GUARDS)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}; use a small positive value like 1e-6.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.normalization, self.scope, self.projection = normalization, scope, projection
        self.layer_stage, self.node_stage = layer_stage, node_stage
        self.heads, self.residual, self.layer_norm = heads, residual, layer_norm
        self.guard, self.eps, self.dropout = guard, eps, dropout
        D, L = in_channels, history_len

        self.proj_weight = self.proj_bias = self.proj = None
        if projection == "per_layer":  # [L, out, in], one batched einsum in forward
            self.proj_weight = torch.nn.Parameter(torch.empty(L, D, D))
            self.proj_bias = torch.nn.Parameter(torch.empty(L, D))
        else:
            self.proj = torch.nn.Linear(D, D)
        self.register_buffer("pos_enc", sinusoidal_encoding(L, D), persistent=False)

        self.layer_query = self.layer_key = None
        if layer_stage:
            self.layer_query = torch.nn.Linear(D, D, bias=False)
            self.layer_key = torch.nn.Linear(D, D, bias=False)

        self.node_query = self.node_key = self.node_value = self.node_out = self.norm = None
        if node_stage:
            self.node_query = torch.nn.Linear(D, D)
            self.node_key = torch.nn.Linear(D, D)
            self.node_value = torch.nn.Linear(D, D)
            self.node_out = torch.nn.Linear(D, D)
            if layer_norm:
                self.norm = torch.nn.LayerNorm(D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        if self.proj_weight is not None:
            bound = 1.0 / math.sqrt(self.in_channels)  # same as torch.nn.Linear's default
            torch.nn.init.uniform_(self.proj_weight, -bound, bound)
            torch.nn.init.uniform_(self.proj_bias, -bound, bound)
        for module in (self.proj, self.layer_query, self.layer_key, self.node_query,
                       self.node_key, self.node_value, self.node_out, self.norm):
            if module is not None:
                module.reset_parameters()

    def _project(self, xs: Tensor, start: int) -> Tensor:
        """Projects the history entries ``start..L-1`` given layer-major as ``xs``
        [L - start, N, D] and adds P (one batched matmul with the bias and P fused in)."""
        shift = self.pos_enc[start:].unsqueeze(1)  # [L - start, 1, D]
        if self.proj_weight is not None:
            return torch.baddbmm((self.proj_bias[start:].unsqueeze(1) + shift), xs,
                                 self.proj_weight[start:].transpose(1, 2))
        return self.proj(xs) + shift

    def forward(self, history: History, batch: Tensor, num_graphs: int
                ) -> tuple[Tensor, Tensor | None]:
        r"""Graph embeddings :math:`\mathbf{G}` ``[B, D]`` and the layer weights
        :math:`\alpha` ``[B, L]`` (``None`` without the layer stage); called through
        :class:`~histograph.nn.readouts.base.Readout`'s ``__call__``, which checks the history
        and returns the weights only when asked (``return_layer_weights=True``)."""
        z, alpha = self.node_states(history, batch, num_graphs)
        return scatter(z, batch, dim=0, dim_size=num_graphs, reduce="mean"), alpha

    def node_states(self, history: History, batch: Tensor, num_graphs: int
                    ) -> tuple[Tensor, Tensor | None]:
        r"""Stages 1 and 2 without the final mean: :math:`\mathbf{Z}` ``[N, D]`` and
        :math:`\alpha` ``[B, L]`` (or ``None``).

        Node classification reads these per-node states with the whole graph as one "graph"
        (``batch`` all zeros, through :meth:`~histograph.nn.readouts.base.Readout.nodes`), so
        stage 1 learns one layer weighting shared by all nodes and stage 2 attends across all
        nodes.
        """
        # Layer-major [L, N, D] throughout: the list is concatenated without interleaving, the
        # projection is one batched matmul over layers, and a stacked input takes the same path.
        xs = (torch.stack(list(history), dim=0) if not isinstance(history, Tensor)
              else history.transpose(0, 1).contiguous())  # [L, N, D]
        L, D = self.history_len, self.in_channels

        if self.layer_stage:
            xt = self._project(xs, 0)  # [L, N, D]
            # the query's input X~_{L-1} is projected once more (N x D x D) instead of sliced
            # from xt: the backward of a slice writes a zero gradient as large as all of xt
            q = self.layer_query(self._project(xs[L - 1:], L - 1)[0])  # [N, D]
            # <q, W_K x> = <W_K^T q, x>: one [N, D] x [D, D] product instead of keys for
            # all L layers ([N, L, D] x [D, D]); the 1/sqrt(D) scale rides along
            qk = (q @ self.layer_key.weight) * (1.0 / math.sqrt(D))
            # the layer weighting in fp32 under autocast: per-graph means of the scores, the
            # signed division and its guard (histograph/nn/precision.py)
            with autocast_off(xt):
                xt, qk = fp32(xt), fp32(qk)
                s = (xt * qk).sum(dim=-1).t()  # [N, L]
                if self.scope == "graph":
                    c = scatter(s, batch, dim=0, dim_size=num_graphs, reduce="mean")  # [B, L]
                else:
                    c = s.mean(dim=0, keepdim=True)  # [1, L]
                if self.normalization == "signed":
                    total = c.sum(dim=-1, keepdim=True)
                    floor = self.eps if self.guard == "absolute" else \
                        (self.eps * c.abs().sum(dim=-1, keepdim=True)).clamp(min=MIN_DENOMINATOR)
                    alpha = c / signed_guard(total, floor)
                else:
                    alpha = torch.softmax(c, dim=-1)
                node_alpha = alpha[batch] if self.scope == "graph" else alpha  # [N or 1, L]
                h = (node_alpha.t().unsqueeze(-1) * xt).sum(dim=0)  # [N, D]
            weights = alpha.detach().expand(num_graphs, L)
        else:  # ablation: last layer only (project just that entry)
            h = self._project(xs[L - 1:], L - 1)[0]
            weights = None
        z = self._node_attention(h, batch, num_graphs) if self.node_stage else h
        return z, weights

    @torch.compiler.disable  # block shapes change with every batch: eager, not recompiled
    def _node_attention(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Multi-head self-attention among the nodes of each graph, then residual + LayerNorm.

        Graphs are padded into dense ``[B, M, D]`` blocks with a key mask for PyTorch's fused
        attention. Padding every graph to the largest one of the batch costs ``B * max N_g^2``
        instead of ``sum N_g^2`` (an order of magnitude more on PROTEINS/DD/REDDIT batches,
        whose sizes are heavy-tailed), so graphs are grouped by size (:func:`size_groups`) and each group is
        padded to its own largest graph: one scatter puts every node into its group's block,
        one attention call runs per occupied group (a handful), one gather brings the nodes
        back; there is no loop over graphs. Empty graphs take no slot (their row stays zero).
        """
        N, D = h.shape
        if N == 0:
            return h
        qkv = F.linear(h, torch.cat([self.node_query.weight, self.node_key.weight,
                                     self.node_value.weight]),
                       torch.cat([self.node_query.bias, self.node_key.bias,
                                  self.node_value.bias]))  # [N, 3D]
        dest, blocks, total = size_groups(batch, num_graphs)
        flat = qkv.new_zeros(total, 3 * D).index_copy(0, dest, qkv)  # all blocks, row-major
        key_mask = torch.zeros(total, dtype=torch.bool, device=h.device).index_fill_(0, dest,
                                                                                    True)
        H, dh = self.heads, D // self.heads
        outs = []
        with self._attention_kernels(h.device):
            for offset, B, M in blocks:
                q, k, v = flat[offset:offset + B * M].view(B, M, 3, H, dh).permute(
                    2, 0, 3, 1, 4)
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=key_mask[offset:offset + B * M].view(B, 1, 1, M),
                    dropout_p=self.dropout if self.training else 0.0)  # [B, H, M, dh]
                outs.append(out.transpose(1, 2).reshape(B * M, D))
        out = self.node_out(torch.cat(outs).index_select(0, dest))  # [N, D]
        z = h + out if self.residual else out
        return self.norm(z) if self.norm is not None else z

    def _attention_kernels(self, device: torch.device):
        """The context that pins the attention kernels on CUDA (:data:`NODE_SDPA_BACKENDS`)."""
        if device.type == "cuda" and self.sdpa_backends:
            return sdpa_kernel(self.sdpa_backends)
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, history_len={self.history_len}, "
                f"normalization={self.normalization}, scope={self.scope}, heads={self.heads})")
