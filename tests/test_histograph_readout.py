"""Tests for the HISTOGRAPH readout (histograph/nn/readouts/histograph.py).

Long file: one float64 per-graph reference implementation that every test compares against.
"""

from __future__ import annotations

import math

import pytest
import torch

from histograph.nn.readouts.histograph import HistographReadout, signed_guard

D, L, HEADS = 8, 4, 2
SIZES = [3, 5, 1, 4]


def make_data(sizes: list[int], history_len: int = L, channels: int = D, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), history_len, channels, generator=gen, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return x, batch


def make_module(seed: int = 0, channels: int = D, history_len: int = L,
                **kwargs) -> HistographReadout:
    torch.manual_seed(seed)
    kwargs.setdefault("heads", HEADS)
    return HistographReadout(channels, history_len, **kwargs).double().eval()


def reference(mod: HistographReadout, x: torch.Tensor, batch: torch.Tensor,
              num_graphs: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Slow per-graph HISTOGRAPH (loops over layers and graphs); returns (G, alpha, c)."""
    n, length, dim = x.shape
    pe = torch.zeros(length, dim, dtype=x.dtype)
    for l in range(length):
        for i in range(dim):
            angle = l / 10000 ** ((i - i % 2) / dim)
            pe[l, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    if mod.projection == "per_layer":
        xp = torch.stack([x[:, l] @ mod.proj_weight[l].T + mod.proj_bias[l]
                          for l in range(length)], dim=1)
    else:
        xp = x @ mod.proj.weight.T + mod.proj.bias
    xt = xp + pe
    if mod.layer_stage:
        q = xt[:, length - 1] @ mod.layer_query.weight.T
        k = xt @ mod.layer_key.weight.T
        s = (q[:, None, :] * k).sum(-1) / math.sqrt(dim)
    outs, alphas, cs = [], [], []
    for g in range(num_graphs):
        idx = (batch == g).nonzero().view(-1)
        if mod.layer_stage:
            c = s[idx].mean(0) if mod.scope == "graph" else s.mean(0)
            if mod.normalization == "signed":
                tot = c.sum()
                floor = mod.eps if mod.guard == "absolute" else \
                    max(mod.eps * c.abs().sum(), 1e-6)
                alpha = c / (tot.abs().clamp(min=floor) * (1.0 if tot.item() >= 0 else -1.0))
            else:
                e = torch.exp(c - c.max())
                alpha = e / e.sum()
            h = (alpha[None, :, None] * xt[idx]).sum(1)
            alphas.append(alpha)
            cs.append(c)
        else:
            h = xt[idx, length - 1]
        z = h
        if mod.node_stage:
            m, dh = len(idx), dim // mod.heads

            def heads(lin: torch.nn.Linear) -> torch.Tensor:
                return (h @ lin.weight.T + lin.bias).view(m, mod.heads, dh).transpose(0, 1)

            qq, kk, vv = heads(mod.node_query), heads(mod.node_key), heads(mod.node_value)
            att = qq @ kk.transpose(-1, -2) / math.sqrt(dh)
            att = torch.exp(att - att.max(-1, keepdim=True).values)
            att = att / att.sum(-1, keepdim=True)
            o = (att @ vv).transpose(0, 1).reshape(m, dim)
            o = o @ mod.node_out.weight.T + mod.node_out.bias
            z = h + o if mod.residual else o
            if mod.layer_norm:
                mu = z.mean(-1, keepdim=True)
                var = ((z - mu) ** 2).mean(-1, keepdim=True)
                z = (z - mu) / torch.sqrt(var + mod.norm.eps) * mod.norm.weight + mod.norm.bias
        outs.append(z.mean(0))
    if not mod.layer_stage:
        return torch.stack(outs), None, None
    return torch.stack(outs), torch.stack(alphas), torch.stack(cs)


CONFIGS = [dict(normalization=nm, scope=sc) for nm in ("signed", "softmax")
           for sc in ("graph", "batch")] + [
    dict(projection="shared"),
    dict(layer_stage=False),
    dict(node_stage=False),
    dict(layer_stage=False, node_stage=False),
    dict(residual=False, layer_norm=False, heads=4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_per_graph_reference(cfg: dict) -> None:
    mod = make_module(seed=1, **cfg)
    x, batch = make_data(SIZES, seed=2)
    x.requires_grad_(True)
    params = list(mod.parameters())
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(len(SIZES), D, dtype=torch.float64, generator=gen)

    out, w = mod(x, batch, num_graphs=len(SIZES), return_layer_weights=True)
    ref, alpha, _ = reference(mod, x, batch, len(SIZES))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if alpha is None:
        assert w is None
    else:
        torch.testing.assert_close(w, alpha.detach(), atol=1e-5, rtol=1e-5)

    grads = torch.autograd.grad((out * weights).sum(), [x, *params], allow_unused=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, *params], allow_unused=True)
    names = ["x", *(name for name, _ in mod.named_parameters())]
    for name, g, rg in zip(names, grads, ref_grads):
        assert g is not None and rg is not None, name
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-5, msg=f"gradient of {name}")
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("scope", ["graph", "batch"])
def test_node_permutation_invariance(scope: str) -> None:
    mod = make_module(scope=scope)
    x, batch = make_data(SIZES)
    gen = torch.Generator().manual_seed(5)
    starts = [0, *torch.tensor(SIZES).cumsum(0).tolist()]
    perm = torch.cat([a + torch.randperm(b - a, generator=gen)
                      for a, b in zip(starts, starts[1:])])
    assert not torch.equal(perm, torch.arange(len(perm)))
    torch.testing.assert_close(mod(x[perm], batch), mod(x, batch), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("scope", ["graph", "batch"])
def test_graph_independent_of_batch_mates_only_with_graph_scope(scope: str) -> None:
    mod = make_module(scope=scope)
    x, batch = make_data(SIZES)
    together = mod(x, batch)
    idx = (batch == 1).nonzero().view(-1)
    alone = mod(x[idx], torch.zeros(len(idx), dtype=torch.long))[0]
    if scope == "graph":
        torch.testing.assert_close(alone, together[1], atol=1e-10, rtol=1e-10)
    else:
        assert (alone - together[1]).abs().max() > 1e-6


@pytest.mark.parametrize("normalization", ["signed", "softmax"])
@pytest.mark.parametrize("scope", ["graph", "batch"])
def test_layer_weights_sum_to_one(normalization: str, scope: str) -> None:
    # The weights sum to one wherever the guard is inactive, |sum c| >= eps * sum |c|: checked
    # here with the default relative guard (eps = 0.01, loose enough for these random scores)
    # and with the guard made negligible.
    for guard, eps in (("relative", 0.01), ("absolute", 1e-12)):
        mod = make_module(normalization=normalization, scope=scope, guard=guard, eps=eps)
        x, batch = make_data(SIZES)
        w = mod(x, batch, return_layer_weights=True)[1]
        assert w.shape == (len(SIZES), L) and not w.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(len(SIZES), dtype=w.dtype))
    if normalization == "softmax":
        assert (w > 0).all()
    if scope == "batch":
        assert torch.equal(w, w[:1].expand_as(w))


def test_signed_weights_can_be_negative() -> None:
    x, batch = make_data(SIZES)
    for seed in range(20):
        mod = make_module(seed=seed)
        if (mod(x, batch, return_layer_weights=True)[1] < 0).any():
            return
    pytest.fail("no negative signed layer weight in 20 seeds")


def test_signed_guard_keeps_sign() -> None:
    z = torch.tensor([0.0, 1e-9, -1e-9, 2.0, -2.0], dtype=torch.float64, requires_grad=True)
    out = signed_guard(z, 1e-6)
    torch.testing.assert_close(out.detach(), torch.tensor([1e-6, 1e-6, -1e-6, 2.0, -2.0],
                                                          dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), z)
    assert torch.equal(grad, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("eps", [1e-6, 1e3])
def test_signed_weights_invariant_to_negating_scores(eps: float) -> None:
    # alpha = c / guard(sum c) must not change when every score flips sign; with eps = 1e3 the
    # guard is active for every graph, so this checks that it keeps the sign of the sum.
    mod = make_module(eps=eps, guard="absolute")
    x, batch = make_data(SIZES)
    out, w = mod(x, batch, return_layer_weights=True)
    _, alpha, c = reference(mod, x, batch, len(SIZES))
    torch.testing.assert_close(w, alpha, atol=1e-5, rtol=1e-5)  # pos_enc is float32-exact only
    if eps > 1:
        assert (c.sum(-1).abs() < eps).all()
        torch.testing.assert_close(w.sum(-1), c.sum(-1).abs() / eps, atol=1e-8, rtol=1e-5)
    with torch.no_grad():
        mod.layer_key.weight.neg_()
    out_neg, w_neg = mod(x, batch, return_layer_weights=True)
    assert (c.sum(-1) < 0).any() or eps < 1  # both signs of the sum are exercised
    torch.testing.assert_close(w_neg, w)
    torch.testing.assert_close(out_neg, out)


def _assert_finite_forward_backward(mod: HistographReadout, x: torch.Tensor, batch: torch.Tensor,
                                    num_graphs: int | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The readout's output and layer weights, after checking both passes are finite."""
    x = x.detach().requires_grad_(True)
    out, layer_weights = mod(x, batch, num_graphs, return_layer_weights=True)
    assert torch.isfinite(out).all()
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad((out * weights).sum(), [x, *mod.parameters()], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    return out, layer_weights


def _cancel_scores(mod: HistographReadout, offset: float = 0.0) -> HistographReadout:
    """Make the layer scores cancel: X~ = P, W_Q = I, W_K = P_{L-1} b^T (+ offset), with b
    orthogonal to sum_l P_l, so that sum_l c_l = 0 (nearly, with a small offset)."""
    with torch.no_grad():
        mod.proj_weight.zero_()
        mod.proj_bias.zero_()
        pe = mod.pos_enc.double()
        total = pe.sum(0)
        b = torch.eye(D, dtype=torch.float64)[0] - total[0] / total.dot(total) * total
        mod.layer_query.weight.copy_(torch.eye(D))
        mod.layer_key.weight.copy_(torch.outer(pe[L - 1], b) + offset)
    return mod


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_score_sum_is_finite(dtype: torch.dtype) -> None:
    x, batch = make_data(SIZES, dtype=dtype)
    # (a) every score exactly zero: W_Q = 0.
    mod = make_module().to(dtype)
    with torch.no_grad():
        mod.layer_query.weight.zero_()
    _, w = _assert_finite_forward_backward(mod, x, batch)
    assert torch.equal(w, torch.zeros_like(w))
    # (b) nonzero scores that cancel: X~ = P, W_Q = I, W_K = P_{L-1} b^T, b orthogonal to sum P.
    mod = _cancel_scores(make_module().to(dtype))
    _, w = _assert_finite_forward_backward(mod, x, batch)
    assert torch.isfinite(w).all() and w.abs().max() > 1.0
    if dtype == torch.float64:
        assert (w.sum(-1).abs() < 0.5).all()  # |sum c| < eps: the guard was hit


@pytest.mark.parametrize("history_len", [1, 65])
def test_history_lengths(history_len: int) -> None:
    mod = make_module(history_len=history_len)
    x, batch = make_data(SIZES, history_len=history_len)
    out, w = _assert_finite_forward_backward(mod, x, batch)
    assert out.shape == (len(SIZES), D)
    assert w.shape == (len(SIZES), history_len)


def test_tiny_and_large_graph_in_one_batch() -> None:
    torch.manual_seed(0)
    mod = HistographReadout(D, L, heads=HEADS).eval()
    x, batch = make_data([1, 2000], dtype=torch.float32)
    out, _ = _assert_finite_forward_backward(mod, x, batch, num_graphs=2)
    alone = mod(x[:1], torch.zeros(1, dtype=torch.long), 1)
    torch.testing.assert_close(out[:1], alone, atol=1e-5, rtol=1e-5)


def _naive_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
                dropout_p: float = 0.0) -> torch.Tensor:
    # Plain masked softmax attention: a fully masked row gives NaN (some fused kernels return 0).
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).masked_fill(~attn_mask, -math.inf)
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("naive_attention", [False, True])
@pytest.mark.parametrize("scope", ["graph", "batch"])
def test_empty_graph_gives_zero_row(scope: str, naive_attention: bool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if naive_attention:
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", _naive_sdpa)
    mod = make_module(scope=scope)
    x, batch = make_data([2, 0, 3])
    out, w = _assert_finite_forward_backward(mod, x, batch, num_graphs=3)
    assert torch.equal(out[1], torch.zeros(D, dtype=out.dtype))
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("normalization", ["signed", "softmax"])
def test_gradient_reaches_input_embedding(normalization: str) -> None:
    mod = make_module(normalization=normalization)
    x, batch = make_data(SIZES)
    history = [x[:, l].clone().requires_grad_(True) for l in range(L)]
    out = mod(history, batch)
    (out * torch.randn_like(out)).sum().backward()
    assert history[0].grad is not None and history[0].grad.abs().sum() > 0


def test_list_and_stacked_inputs_agree() -> None:
    mod = make_module()
    x, batch = make_data(SIZES)
    out_stacked = mod(x, batch, len(SIZES))
    out_list = mod([x[:, l] for l in range(L)], batch)
    assert torch.equal(out_stacked, out_list)


def test_wrong_history_length_raises() -> None:
    mod = make_module()
    x, batch = make_data(SIZES, history_len=L - 1)
    with pytest.raises(ValueError, match="4 entries"):
        mod(x, batch)
    with pytest.raises(ValueError, match="4 entries"):
        mod([x[:, l] for l in range(L - 1)], batch)


def test_dropout_only_in_training() -> None:
    mod = make_module(dropout=0.5)
    x, batch = make_data(SIZES)
    assert torch.equal(mod(x, batch), mod(x, batch))
    mod.train()
    torch.manual_seed(0)
    assert not torch.allclose(mod(x, batch), mod.eval()(x, batch))


def test_reset_parameters_changes_every_parameter() -> None:
    mod = make_module()
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_()
    before = {name: p.detach().clone() for name, p in mod.named_parameters()}
    mod.reset_parameters()
    for name, p in mod.named_parameters():
        assert not torch.equal(p, before[name]), name
    assert torch.equal(mod.norm.weight, torch.ones(D, dtype=torch.float64))


def test_positional_encoding_is_a_buffer_and_parameter_count() -> None:
    mod = HistographReadout(5, 3, heads=1)  # odd width
    assert "pos_enc" in dict(mod.named_buffers())
    assert all("pos_enc" not in name for name, _ in mod.named_parameters())
    assert mod.out_channels == mod.in_channels == 5
    per_layer = 3 * (5 * 5 + 5) + 2 * 5 * 5 + 4 * (5 * 5 + 5) + 2 * 5
    assert sum(p.numel() for p in mod.parameters()) == per_layer
    shared = HistographReadout(5, 3, heads=1, projection="shared", layer_stage=False,
                               node_stage=False)
    assert sum(p.numel() for p in shared.parameters()) == 5 * 5 + 5


def test_repr() -> None:
    assert repr(HistographReadout(64, 6)) == (
        "HistographReadout(64, history_len=6, normalization=signed, scope=graph, heads=4)")
    assert repr(HistographReadout(8, 3, normalization="softmax", scope="batch", heads=2)) == (
        "HistographReadout(8, history_len=3, normalization=softmax, scope=batch, heads=2)")


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads=3), "divisor"),
    (dict(normalization="sum"), "signed, softmax"),
    (dict(scope="node"), "batch, graph"),
    (dict(projection="per_node"), "per_layer, shared"),
    (dict(history_len=0), "history_len"),
    (dict(eps=0.0), "eps"),
])
def test_constructor_errors(kwargs: dict, match: str) -> None:
    args = dict(in_channels=D, history_len=L)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HistographReadout(args.pop("in_channels"), args.pop("history_len"), **args)


def test_relative_guard_bounds_the_weights() -> None:
    """Scores that nearly cancel: the relative guard keeps |alpha| <= 1/eps (the absolute one
    does not), and the gradients stay finite and bounded."""
    x, batch = make_data(SIZES, dtype=torch.float64)
    for guard, eps in (("relative", 0.01), ("absolute", 1e-9)):
        mod = _cancel_scores(make_module(guard=guard, eps=eps).double(), offset=1e-7)
        _, w = _assert_finite_forward_backward(mod, x, batch)
        if guard == "relative":
            assert w.abs().max() <= 1 / eps + 1e-6
        else:  # unguarded in practice: the weights still sum to one, but explode
            torch.testing.assert_close(w.sum(-1), torch.ones(len(SIZES), dtype=w.dtype))
            assert w.abs().max() > 1 / 0.01
