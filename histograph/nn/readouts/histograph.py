"""HISTOGRAPH readout, from "Learning from Historical Activations in Graph Neural Networks".

Galron, Sinai, Maron, Eliasof, ICLR 2026 (https://arxiv.org/abs/2601.01123); see the class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import scatter, to_dense_batch

NORMALIZATIONS = ("signed", "softmax")
SCOPES = ("graph", "batch")
PROJECTIONS = ("per_layer", "shared")


def sinusoidal_encoding(length: int, channels: int) -> Tensor:
    r"""Transformer-style encoding :math:`P \in \mathbb{R}^{length \times channels}`:
    :math:`P_{l,2i} = \sin(l / 10000^{2i/D})`, :math:`P_{l,2i+1} = \cos(l / 10000^{2i/D})`."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.pow(10000.0, -torch.arange(0, channels, 2, dtype=torch.float64) / channels)
    enc = torch.zeros(length, channels, dtype=torch.float64)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: channels // 2])
    return enc.to(torch.get_default_dtype())


def signed_guard(z: Tensor, eps: float) -> Tensor:
    r""":math:`\mathrm{sign}(z)\max(|z|, \epsilon)` with :math:`\mathrm{sign}(0) = +1`; finite
    value and gradient everywhere (the clamped branch has zero gradient)."""
    return torch.where(z >= 0, z.clamp(min=eps), z.clamp(max=-eps))


class HistographReadout(torch.nn.Module):
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

    Cost: :math:`O(N \cdot L \cdot D)` for stage 1 plus :math:`O(\sum_g N_g^2 \cdot D)` for
    stage 2 (graphs padded to the largest one, with a key mask; no loop over graphs).

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
        eps (float, optional): Minimum magnitude of the signed denominator.
            (default: :obj:`1e-6`)
        dropout (float, optional): Dropout on the stage-2 attention weights (training only).
            (default: :obj:`0.0`)
    """

    def __init__(self, in_channels: int, history_len: int, *, normalization: str = "signed",
                 scope: str = "graph", layer_stage: bool = True, node_stage: bool = True,
                 projection: str = "per_layer", heads: int = 4, residual: bool = True,
                 layer_norm: bool = True, eps: float = 1e-6, dropout: float = 0.0) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"Unknown normalization {normalization!r}; use one of "
                             f"{', '.join(NORMALIZATIONS)}.")
        if scope not in SCOPES:
            raise ValueError(f"Unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")
        if projection not in PROJECTIONS:
            raise ValueError(f"Unknown projection {projection!r}; use one of "
                             f"{', '.join(PROJECTIONS)}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}; pass the node width.")
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1 (number of layers + 1), got "
                             f"{history_len}.")
        if heads < 1 or in_channels % heads != 0:
            raise ValueError(f"heads={heads} must be a positive divisor of in_channels="
                             f"{in_channels}; choose heads that divides it.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}; use a small positive value like 1e-6.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.in_channels = self.out_channels = in_channels
        self.history_len = history_len
        self.normalization, self.scope, self.projection = normalization, scope, projection
        self.layer_stage, self.node_stage = layer_stage, node_stage
        self.heads, self.residual, self.layer_norm = heads, residual, layer_norm
        self.eps, self.dropout = eps, dropout
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
        self.last_layer_weights: Tensor | None = None
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

    def _project(self, x: Tensor, start: int) -> Tensor:
        """Projects the history entries ``start..L-1`` of ``x`` [N, L - start, D] and adds P."""
        if self.proj_weight is not None:
            x = (torch.einsum("nli,loi->nlo", x, self.proj_weight[start:])
                 + self.proj_bias[start:])
        else:
            x = self.proj(x)
        return x + self.pos_enc[start:]

    def forward(self, history: Tensor | list[Tensor], batch: Tensor,
                num_graphs: int | None = None) -> Tensor:
        r"""Forward pass.

        Args:
            history (torch.Tensor or list[torch.Tensor]): :obj:`L` node states of shape
                :obj:`[N, D]`, or the stacked tensor :obj:`[N, L, D]`.
            batch (torch.Tensor): Sorted graph index of every node, shape :obj:`[N]`.
            num_graphs (int, optional): Number of graphs :obj:`B`; inferred from :obj:`batch`
                (a host sync) if not given. (default: :obj:`None`)

        Returns:
            torch.Tensor: Graph embeddings of shape :obj:`[B, out_channels]`.
        """
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 0
        z = self.node_states(history, batch, num_graphs)
        return scatter(z, batch, dim=0, dim_size=num_graphs, reduce="mean")

    def node_states(self, history: Tensor | list[Tensor], batch: Tensor,
                    num_graphs: int | None = None) -> Tensor:
        r"""Stages 1 and 2 without the final mean: :math:`\mathbf{Z}` of shape :obj:`[N, D]`.

        Node classification (:mod:`histograph.nn.node_model`) reads these per-node states with
        the whole graph as one "graph" (``batch`` all zeros), so stage 1 learns one layer
        weighting shared by all nodes and stage 2 attends across all nodes.
        """
        x = torch.stack(list(history), dim=1) if isinstance(history, (list, tuple)) else history
        if x.dim() != 3 or x.size(1) != self.history_len or x.size(2) != self.in_channels:
            raise ValueError(f"history must have {self.history_len} entries of width "
                             f"{self.in_channels} (shape [N, {self.history_len}, "
                             f"{self.in_channels}]), got shape {list(x.shape)}; pass the input "
                             f"embedding plus every layer's output.")
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 0
        L, D = self.history_len, self.in_channels

        if self.layer_stage:
            x = self._project(x, 0)  # [N, L, D]
            q = self.layer_query(x[:, L - 1])  # [N, D]
            k = self.layer_key(x)  # [N, L, D]
            s = torch.einsum("nd,nld->nl", q, k) / math.sqrt(D)  # [N, L]
            if self.scope == "graph":
                c = scatter(s, batch, dim=0, dim_size=num_graphs, reduce="mean")  # [B, L]
            else:
                c = s.mean(dim=0, keepdim=True)  # [1, L]
            if self.normalization == "signed":
                alpha = c / signed_guard(c.sum(dim=-1, keepdim=True), self.eps)
            else:
                alpha = torch.softmax(c, dim=-1)
            node_alpha = alpha[batch] if self.scope == "graph" else alpha
            h = (node_alpha.unsqueeze(-1) * x).sum(dim=1)  # [N, D]
            self.last_layer_weights = alpha.detach().expand(num_graphs, L).clone()
        else:  # ablation: last layer only (project just that entry)
            h = self._project(x[:, L - 1:], L - 1)[:, 0]
            self.last_layer_weights = None

        return self._node_attention(h, batch, num_graphs) if self.node_stage else h

    def _node_attention(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Multi-head self-attention among the nodes of each graph (padded), then unpadded."""
        dense, mask = to_dense_batch(h, batch, batch_size=num_graphs)  # [B, M, D], [B, M]
        B, M, D = dense.shape
        key_mask = mask.clone()
        if M > 0:  # an empty graph attends to (padding) position 0 instead of producing NaN
            key_mask[:, 0] = True

        def split(t: Tensor) -> Tensor:
            return t.view(B, M, self.heads, D // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.node_query(dense)), split(self.node_key(dense)),
            split(self.node_value(dense)), attn_mask=key_mask.view(B, 1, 1, M),
            dropout_p=self.dropout if self.training else 0.0)  # [B, heads, M, D / heads]
        out = self.node_out(out.transpose(1, 2).reshape(B, M, D))[mask]  # [N, D]
        z = h + out if self.residual else out
        return self.norm(z) if self.norm is not None else z

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, history_len={self.history_len}, "
                f"normalization={self.normalization}, scope={self.scope}, heads={self.heads})")
