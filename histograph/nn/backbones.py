"""GNN backbones that return their whole history of node states.

PyG's :class:`~torch_geometric.nn.models.BasicGNN` collects every layer's output for its
jumping-knowledge slot, but it has no input embedding (the history's layer 0) and treats the last
layer differently when ``jk`` is unset; the readouts of this project need the same thing from
every backbone: ``[X^(0), X^(1), ..., X^(K)]``, each ``[num_nodes, hidden]``, where
``X^(0) = Emb_in(F)`` and ``X^(l) = GNN^(l)(X^(l-1))`` stored as passed to the next layer (after
norm, activation, dropout and the optional residual). So the stack is written here, using PyG's
convolutions and its string resolvers for the small choices. PyG's ``DeepGCNLayer`` has the
pre-activation block (``block="res+"``) but returns the raw residual stream, applying the norm
inside the *next* layer; the history here needs the normalised states themselves (what each
layer reads), so ``residual="pre"`` is written here too.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from torch_geometric.nn import MLP, GATConv, GCNConv, GINConv, GINEConv, SAGEConv
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from histograph.errors import invalid_choice
from histograph.nn.precision import autocast_off, fp32

CONVS = ("gin", "gine", "gcn", "gat", "sage")
RESIDUALS = ("none", "post", "pre")
ENCODERS = ("linear", "atom")


def residual_mode(residual: bool | str | None) -> str:
    """Resolve ``model.residual`` to one of :data:`RESIDUALS` (``True`` is ``"post"``)."""
    if residual is None or residual is False:
        return "none"
    if residual is True:
        return "post"
    mode = str(residual).lower()
    mode = {"false": "none", "true": "post"}.get(mode, mode)
    if mode not in RESIDUALS:
        raise invalid_choice("residual", residual, ("false", "true", "pre"))
    return mode


class HistoryGNN(torch.nn.Module):
    r"""A stack of ``num_layers`` message-passing layers that returns its history.

    .. math::
        X^{(0)} = \mathrm{Emb}_{in}(F), \qquad
        X^{(l)} = \mathrm{drop}(\sigma(\mathrm{norm}(\mathrm{conv}^{(l)}(X^{(l-1)}))))
                  \; [+\, X^{(l-1)}], \quad l = 1..K

    or, with ``residual="pre"`` (DeeperGCN's ``res+``, Li et al., 2020),

    .. math::
        H^{(0)} = \mathrm{Emb}_{in}(F), \qquad
        H^{(l)} = H^{(l-1)} + \mathrm{conv}^{(l)}(\mathrm{drop}(X^{(l-1)})), \qquad
        X^{(l)} = \sigma(\mathrm{norm}_l(H^{(l)})), \quad l = 0..K

    Args:
        in_channels (int): input node-feature width.
        hidden (int): width of every history entry (``model.hidden``).
        layers (int): number of message-passing layers ``K`` (``model.layers``; the history
            has ``K + 1`` entries).
        conv (str): ``"gin"``, ``"gine"`` (uses edge features), ``"gcn"``, ``"gat"``, ``"sage"``.
            (default: :obj:`"gin"`)
        norm (str, optional): a PyG normalization name (``"batch"``, ``"layer"``, ``"graph"``,
            ``"instance"``, ``"pair"``, ...) or ``None``/``"none"``. (default: :obj:`"batch"`)
        act (str): activation name for PyG's resolver. (default: :obj:`"relu"`)
        dropout (float): dropout after each layer. The plain and post-activation stacks store
            the dropped-out output as the history entry (as the GIN code base's JK readout
            sees it); the pre-activation stack drops out only what the next conv reads, as
            DeeperGCN does, so its history entries are never dropped. (default: :obj:`0.0`)
        residual (bool or str): ``False`` (or ``"none"``) for the plain stack above; ``True`` (or
            ``"post"``) adds ``X^(l-1)`` to each layer's output (PyG ``DeepGCNLayer``'s ``res``
            block); ``"pre"`` is the pre-activation residual of DeeperGCN (Li et al., 2020,
            ``res+``): a residual stream ``H^(l) = H^(l-1) + conv^(l)(X^(l-1))`` whose history
            entries are its normalised, activated states ``X^(l) = sigma(norm_l(H^(l)))``
            (what the next layer reads; ``K + 1`` norms). The post-activation form adds a
            non-negative update per layer, so its states grow with depth (a last-layer norm
            of 162-165 at depth 64 against the plain stack's 4.1-4.7, docs/training.md); the
            pre-activation history stays normalised. (default: :obj:`False`)
        encoder (str): ``"linear"`` for dense features, ``"atom"`` for OGB's categorical atom
            features (``AtomEncoder``). (default: :obj:`"linear"`)
        edge_dim (int, optional): edge-feature width (dense) — needed by ``gine``; with
            ``encoder="atom"`` OGB's ``BondEncoder`` embeds the categorical bond features.
        gat_heads (int): attention heads of ``gat`` layers. (default: :obj:`4`)
    """

    def __init__(self, in_channels: int, hidden: int, layers: int, conv: str = "gin",
                 norm: str | None = "batch", act: str = "relu", dropout: float = 0.0,
                 residual: bool | str = False, encoder: str = "linear", edge_dim: int | None = None,
                 gat_heads: int = 4) -> None:
        super().__init__()
        if conv not in CONVS:
            raise invalid_choice("conv", conv, CONVS)
        if encoder not in ENCODERS:
            raise invalid_choice("encoder", encoder, ENCODERS)
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            raise ValueError(f"layers must be a positive integer, got {layers!r}.")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if conv == "gine" and edge_dim is None:
            raise ValueError("conv='gine' needs edge features and this dataset has none; use "
                             "model=gin (or a dataset with edge features).")
        if conv == "gat" and (gat_heads < 1 or hidden % gat_heads):
            raise ValueError(f"gat_heads={gat_heads} must divide hidden={hidden}.")
        self.in_channels, self.hidden_channels, self.num_layers = in_channels, hidden, layers
        num_layers = layers
        self.residual = residual_mode(residual)
        self.conv_name, self.dropout = conv, float(dropout)
        self.encoder_name, self.gat_heads, self.act_name = encoder, gat_heads, act
        self.norm_name = None if norm in (None, "none", "None") else norm
        h = hidden
        if encoder == "atom":
            from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder

            self.encoder = AtomEncoder(h)
            self.edge_encoders = torch.nn.ModuleList(
                [BondEncoder(h) for _ in range(num_layers)] if conv == "gine" else [])
        else:
            self.encoder = torch.nn.Linear(in_channels, h)
            self.edge_encoders = torch.nn.ModuleList(
                [torch.nn.Linear(edge_dim, h) for _ in range(num_layers)] if conv == "gine" else [])
        self.convs = torch.nn.ModuleList([self._conv(conv, h) for _ in range(num_layers)])
        # the pre-activation stack normalises H^(0..K) (K + 1 norms), the others conv outputs
        num_norms = num_layers + (self.residual == "pre")
        self.norms = torch.nn.ModuleList(
            [normalization_resolver(self.norm_name, h) if self.norm_name else torch.nn.Identity()
             for _ in range(num_norms)])
        self._norm_takes_batch = [
            "batch" in inspect.signature(n.forward).parameters for n in self.norms]
        self.act = activation_resolver(act)

    def _conv(self, conv: str, h: int) -> torch.nn.Module:
        if conv == "gin":
            return GINConv(MLP([h, h, h], act=self.act_name, norm=None), train_eps=True)
        if conv == "gine":
            return GINEConv(MLP([h, h, h], act=self.act_name, norm=None), train_eps=True,
                            edge_dim=h)
        # Known CUDA cost left as is (only a GPU shows it): GCNConv's and GATConv's self-loop
        # handling (PyG's add_remaining_self_loops / remove_self_loops) indexes with boolean
        # masks, one host sync per layer per step and a torch.compile graph break per layer.
        # Pre-adding self-loops in the dataset would avoid it but changes GAT's and GCN's
        # normalisation for graphs that already carry self-loops, hence not done silently.
        if conv == "gcn":
            return GCNConv(h, h)
        if conv == "gat":
            return GATConv(h, h // self.gat_heads, heads=self.gat_heads)
        return SAGEConv(h, h)

    def reset_parameters(self) -> None:
        for module in [self.encoder, *self.edge_encoders, *self.convs, *self.norms]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:  # OGB encoders
                for emb in getattr(module, "atom_embedding_list",
                                   getattr(module, "bond_embedding_list", [])):
                    torch.nn.init.xavier_uniform_(emb.weight.data)

    def _message(self, i: int, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> Tensor:
        """Layer ``i``'s convolution of ``h``, aggregating in fp32 under autocast
        (histograph/nn/precision.py)."""
        conv = self.convs[i]
        if self.conv_name == "gine":
            e = self.edge_encoders[i](edge_attr if self.encoder_name == "atom"
                                      else edge_attr.float())
            return conv(fp32(h), edge_index, fp32(e))
        if self.conv_name == "gin":
            return conv(fp32(h), edge_index)  # the sum in fp32, the MLP under autocast
        with autocast_off(h):  # GCN, SAGE, GAT aggregate after their linear layer: all in fp32
            return conv(fp32(h), edge_index)

    def _activate(self, i: int, h: Tensor, batch: Tensor | None) -> Tensor:
        """``sigma(norm_i(h))`` with the norm's ``batch`` argument where it takes one."""
        norm = self.norms[i]
        return self.act(norm(h, batch) if self._norm_takes_batch[i] else norm(h))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                batch: Tensor | None = None) -> list[Tensor]:
        """Return the history ``[X^(0), ..., X^(K)]`` (``K + 1`` tensors ``[num_nodes, hidden]``)."""
        h = self.encoder(x if self.encoder_name == "atom" else x.float())
        if self.residual == "pre":
            # DeeperGCN's res+: the stream H adds each layer's conv of the activated state X
            x_l = self._activate(0, h, batch)
            history = [x_l]
            for i in range(self.num_layers):
                x_l = torch.nn.functional.dropout(x_l, p=self.dropout, training=self.training)
                h = h + self._message(i, x_l, edge_index, edge_attr)
                x_l = self._activate(i + 1, h, batch)
                history.append(x_l)
            return history
        history = [h]
        for i in range(self.num_layers):
            out = self._activate(i, self._message(i, h, edge_index, edge_attr), batch)
            out = torch.nn.functional.dropout(out, p=self.dropout, training=self.training)
            h = out + h if self.residual == "post" else out
            history.append(h)
        return history

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.hidden_channels}, "
                f"num_layers={self.num_layers}, conv={self.conv_name}, norm={self.norm_name}, "
                f"residual={self.residual})")
