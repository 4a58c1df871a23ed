"""The backbone's residual modes (histograph/nn/backbones.py): plain, post- and pre-activation."""

import pytest
import torch

from histograph.nn.backbones import HistoryGNN, residual_mode


def _graph(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (4 * n,), generator=g)
    dst = torch.randint(0, n, (4 * n,), generator=g)
    return torch.randn(n, 7, generator=g), torch.stack([torch.cat([src, dst]),
                                                         torch.cat([dst, src])])


@pytest.mark.parametrize("value,mode", [(False, "none"), (None, "none"), ("none", "none"),
                                        ("false", "none"), (True, "post"), ("true", "post"),
                                        ("post", "post"), ("pre", "pre"), ("PRE", "pre")])
def test_residual_values_resolve(value, mode):
    assert residual_mode(value) == mode


def test_an_unknown_residual_names_the_choices():
    with pytest.raises(ValueError, match=r"residual='res\+' is not one of false, pre, true"):
        HistoryGNN(7, 8, 2, residual="res+")


@pytest.mark.parametrize("conv", ["gin", "gcn"])
def test_pre_activation_history_stays_normalised_with_depth(conv):
    """The post-activation residual adds a non-negative update per layer, so its last state grows
    with depth (the JK-cat collapse of the residual recipe check); the pre-activation stack hands
    the readouts normalised, activated states whose size does not depend on depth."""
    torch.manual_seed(0)
    x, edge_index = _graph()
    last = {}
    for mode in ("none", "post", "pre"):
        net = HistoryGNN(7, 32, 64, conv=conv, residual=mode).train()
        history = net(x, edge_index)
        assert len(history) == 65 and all(h.shape == (40, 32) for h in history)
        last[mode] = float(history[-1].detach().norm(dim=1).mean())
    assert last["post"] > 10 * last["none"]
    assert last["pre"] < 2 * last["none"]
    net = HistoryGNN(7, 32, 4, conv=conv, residual="pre")
    assert len(net.norms) == 5 and "residual=pre" in repr(net)
    assert all((h >= 0).all() for h in net(x, edge_index))  # ReLU after the norm, every entry


def test_pre_activation_stream_carries_the_input():
    """With every conv zeroed, the stream is the encoder's output at every depth: the history is
    the same normalised state repeated, not a smoothed-away one."""
    x, edge_index = _graph()
    net = HistoryGNN(7, 16, 6, conv="gcn", residual="pre").eval()
    for conv in net.convs:
        torch.nn.init.zeros_(conv.lin.weight)
        torch.nn.init.zeros_(conv.bias)
    history = net(x, edge_index)
    for h in history[1:]:
        torch.testing.assert_close(h, history[0])


def test_pre_activation_under_cpu_bf16_autocast():
    x, edge_index = _graph()
    net = HistoryGNN(7, 16, 3, conv="gin", residual="pre")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        history = net(x, edge_index)
    history[-1].float().sum().backward()
    assert all(p.grad is not None for p in net.convs.parameters() if p.requires_grad)
