#!/usr/bin/env python
"""Instrumented first epochs of a training run: why do lr-0.01 runs collapse to one class?

Builds the real model from the Hydra configs (``configs/train.yaml``) the way
``histograph.tasks.graph.build_graph_model`` does, loads one fold with the project's
``GraphDataModule`` and trains it with a plain PyTorch loop (Adam from ``cfg.optimizer``,
cross-entropy, the datamodule's train loader), recording **per training step**:

* loss, batch accuracy, share of the batch's predictions in the most-predicted class, logit spread;
* per module group (encoder, groups of convs, groups of norms, readout projection, layer-stage
  query/key, node-stage attention, stage-2 LayerNorm, head): gradient norm (before any clipping)
  and the actual update size ``||dtheta|| / ||theta||`` of the optimizer step;
* HISTOGRAPH layer stage, recomputed from the readout's own parameters in a forward pre-hook
  (the readout's outputs and attributes are not used): ``|s_{v,l}|`` (mean, max), ``|c_{g,l}|``
  max, the signed denominator ``sum_l c_{g,l}`` and its ratio to ``sum_l |c_{g,l}|`` (0: total
  cancellation), alpha min / max, the share of graphs whose denominator the guard clamps;
* HISTOGRAPH node stage: ``q.k/sqrt(d_h)`` logits (max |.|, RMS), the attention entropy over
  each graph's nodes divided by ``log N_g`` (1 = uniform), ``||MHSA(H)|| / ||H||`` and the
  across-graph spread of the pooled MHSA output;
* BatchNorm: batch variance of each norm's input and the running_var / running_mean ranges;
  the history entries' mean norm and dead-unit share (channels that are zero on every node);
* the head: across-graph spread of its input (std across graphs / RMS; 0 = all graphs equal) and
  the share of its hidden ReLU units that are off for every graph of the batch.

Per step because the collapse happens within the first epoch (NCI1: complete ~50 of its 105
steps in): an epoch average would hide which quantity moves first. Per epoch (eval mode, running
BN statistics) it records train / val / test accuracy, loss and majority-class share, plus
per-layer BatchNorm / history arrays. Test is recorded, never used for a choice.

Runs (``--run``) are ``preset:variant,...`` (``PRESETS``, variants listed above ``parse_run``),
each written as ``<out>/<name>.json`` (config, per-epoch records, per-layer arrays, summary with
the collapse rule) and, unless ``--no-steps``, ``<out>/<name>.steps.csv``. Report modes (no
training): ``--plot`` (figure), ``--table`` (per-run table), ``--grid`` (readout sweep),
``--thresholds`` (collapse-rule evidence), ``--show`` (per-step columns at chosen steps),
``--rewrite`` (re-apply the collapse rule to stored records). ``scripts/diagnose_training.sh``
runs everything behind docs/training.md.

    PYTHONPATH=. OMP_NUM_THREADS=1 HISTOGRAPH_DATA_MIRROR=/work/shared/data \
      python scripts/diagnose_training.py --run nci1_gin4_hg:lr0.01 nci1_gin4_hg:lr0.001 --epochs 6
    python scripts/diagnose_training.py --plot
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HISTOGRAPH_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "results" / "training" / "diagnosis"

# ----------------------------------------------------------------------------- presets
# Configuration = Hydra overrides of configs/train.yaml (fold 0, holdout protocol, seed 0).
PRESETS: dict[str, list[str]] = {
    "nci1_gin4_hg": ["dataset=nci1", "model=gin", "model.layers=4", "readout=histograph",
                     "head.dropout=0.5"],
    "nci1_gin4_mean": ["dataset=nci1", "model=gin", "model.layers=4", "readout=mean",
                       "head.dropout=0.5"],
    "proteins_gcn32_hg": ["dataset=proteins", "model=gcn", "model.layers=32",
                          "model.residual=false", "readout=histograph"],
    "proteins_gcn32_mean": ["dataset=proteins", "model=gcn", "model.layers=32",
                            "model.residual=false", "readout=mean"],
    "mutag_gin4_hg": ["dataset=mutag", "model=gin", "model.layers=4", "readout=histograph"],
    "imdbb_gin4_hg": ["dataset=imdb_binary", "model=gin", "model.layers=4", "readout=histograph"],
}
# The readout sweep: proteins_<gin|gcn><2|32>_<readout>
for _conv in ("gin", "gcn"):
    for _depth in (2, 32):
        for _ro in ("mean", "sum", "max", "attention", "set2set", "gmt", "jk_cat", "jk_max",
                    "jk_lstm", "histograph"):
            PRESETS[f"proteins_{_conv}{_depth}_{_ro}"] = [
                "dataset=proteins", f"model={_conv}", f"model.layers={_depth}",
                "model.residual=false", f"readout={_ro}"]
# JK-cat over 64 layers, plain, against the ``:res`` and ``:pre`` variants (the residual recipe
# checks, docs/training.md): how large the head's input gets when each layer adds to the last
for _conv in ("gin", "gcn"):
    PRESETS[f"mutag_{_conv}64_jk_cat"] = ["dataset=mutag", f"model={_conv}", "model.layers=64",
                                          "model.residual=false", "readout=jk_cat"]

# Training-recipe variants, ``preset:variant[,variant...]``; lrX sets the base lr.
#   warmupN    linear warm-up from lr/100 to lr over N epochs (per step)
#   rolrX      readout parameters (and only those) at lr X
#   clipX      clip the global gradient norm at X
#   qknorm     layer stage: L2-normalised q and k, scores = tau * cos, tau learned (init sqrt(D))
#   epsX       relative guard eps X (|alpha| <= 1/X) instead of 0.01
#   softmax / nolayer / nonode: the readout ablations
#   bnnone     model.norm=none; ln: model.norm=layer
#   wdX        Adam weight decay X
#   rhlrX      readout AND head parameters at lr X
#   hdlrX      head parameters (only) at lr X
#   gbn        BatchNorm1d on the graph embedding before the head (centres it across graphs)
OVERRIDE_VARIANTS = {
    "softmax": ["readout.normalization=softmax"],
    "nolayer": ["readout.layer_stage=false"],
    "nonode": ["readout.node_stage=false"],
    "bnnone": ["model.norm=none"],
    "ln": ["model.norm=layer"],
    "res": ["model.residual=true"],
    "pre": ["model.residual=pre"],
}


def parse_run(spec: str) -> tuple[str, str, dict]:
    """``preset:lr0.01,warmup5`` -> (preset, name, options)."""
    preset, _, var = spec.partition(":")
    if preset not in PRESETS:
        raise SystemExit(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
    opts: dict = {"lr": 0.01, "warmup": 0, "rolr": None, "rhlr": None, "hdlr": None, "clip": None,
                  "qknorm": False, "gbn": False, "eps": None, "wd": None, "overrides": []}
    for v in filter(None, var.split(",")):
        if v.startswith("lr"):
            opts["lr"] = float(v[2:])
        elif v.startswith("warmup"):
            opts["warmup"] = int(v[6:])
        elif v.startswith("rolr"):
            opts["rolr"] = float(v[4:])
        elif v.startswith("rhlr"):
            opts["rhlr"] = float(v[4:])
        elif v.startswith("hdlr"):
            opts["hdlr"] = float(v[4:])
        elif v == "gbn":
            opts["gbn"] = True
        elif v.startswith("clip"):
            opts["clip"] = float(v[4:])
        elif v == "qknorm":
            opts["qknorm"] = True
        elif v.startswith("eps"):
            opts["eps"] = float(v[3:])
        elif v.startswith("wd"):
            opts["wd"] = float(v[2:])
        elif v in OVERRIDE_VARIANTS:
            opts["overrides"] += OVERRIDE_VARIANTS[v]
        else:
            raise SystemExit(f"unknown variant {v!r} in {spec!r}")
    name = preset + "__" + (var.replace(",", "_") if var else "lr0.01")
    return preset, name, opts


# ----------------------------------------------------------------------------- building
def compose_cfg(overrides: list[str], data_dir: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=none"] + overrides)
    with open_dict(cfg):
        cfg.paths.data_dir = data_dir
    return cfg


def build_datamodule(cfg):
    """The graph task's DataModule, built with explicit arguments (``configs/data/graph.yaml``
    wires the same ones)."""
    from hydra.utils import instantiate

    from histograph.data.datamodule import GraphDataModule

    return GraphDataModule(
        dataset=instantiate(cfg.dataset), data_dir=cfg.paths.data_dir,
        data_mirror=cfg.paths.get("data_mirror") or os.environ.get("HISTOGRAPH_DATA_MIRROR"),
        protocol=cfg.protocol.name, fold=cfg.fold,
        folds=cfg.protocol.folds, val_fraction=cfg.protocol.val_fraction,
        split_seed=cfg.protocol.split_seed, batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.get("eval_batch_size"), num_workers=cfg.data.num_workers,
        offline=True, loader=cfg.data.get("loader", "auto"),
        bucket_by_size=cfg.data.get("bucket_by_size", False),
        bucket_window=cfg.data.get("bucket_window", 64))


class Net(torch.nn.Module):
    """``head(readout(backbone(graph)))``, as ``GraphClassifier`` wires it."""

    def __init__(self, backbone, readout, head):
        super().__init__()
        self.backbone, self.readout, self.head = backbone, readout, head

    def forward(self, data):
        hist = self.backbone(data.x, data.edge_index, getattr(data, "edge_attr", None),
                             data.batch)
        g = self.readout(hist, data.batch, data.num_graphs)
        if isinstance(g, tuple):  # a readout may return (embedding, extras)
            g = g[0]
        return self.head(g)


def qknorm_class():
    """HISTOGRAPH with a normalised layer stage (a screening variant, not library code):
    ``s_{v,l} = tau * cos(q_v, W_K x~_{v,l})`` with a learned scalar ``tau`` (init sqrt(D)),
    everything else unchanged (signed normalisation, guard, node stage)."""
    from torch_geometric.utils import scatter

    from histograph.nn.readouts.histograph import (MIN_DENOMINATOR, HistographReadout,
                                                   signed_guard)

    class QKNormHistograph(HistographReadout):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.log_tau = torch.nn.Parameter(torch.tensor(0.5 * math.log(self.in_channels)))

        def node_states(self, history, batch, num_graphs=None):
            xs = torch.stack(list(history), 0) if isinstance(history, (list, tuple)) \
                else history.transpose(0, 1)
            L = self.history_len
            xt = self._project(xs, 0)
            q = F.normalize(self.layer_query(xt[L - 1]), dim=-1)
            k = F.normalize(self.layer_key(xt), dim=-1)  # [L, N, D]
            s = (k * q).sum(-1).t() * self.log_tau.exp()  # [N, L]
            c = scatter(s, batch, dim=0, dim_size=num_graphs, reduce="mean")
            if self.normalization == "signed":
                total = c.sum(-1, keepdim=True)
                floor = (self.eps * c.abs().sum(-1, keepdim=True)).clamp(min=MIN_DENOMINATOR)
                alpha = c / signed_guard(total, floor)
            else:
                alpha = torch.softmax(c, -1)
            h = (alpha[batch].t().unsqueeze(-1) * xt).sum(0)
            z = self._node_attention(h, batch, num_graphs) if self.node_stage else h
            return z, alpha.detach().expand(num_graphs, L)  # the readout contract's pair

    return QKNormHistograph


def build_net(cfg, dm, qknorm: bool = False, gbn: bool = False) -> Net:
    """As ``histograph.tasks.graph.build_graph_model``: instantiate the partials, finish with the
    data's sizes."""
    from hydra.utils import instantiate

    d = dm.data
    backbone = instantiate(cfg.model)(in_channels=d.num_features, edge_dim=d.edge_dim,
                                      encoder=d.encoder)
    readout_factory = instantiate(cfg.readout)
    if qknorm:
        kw = dict(readout_factory.keywords)
        readout_factory = lambda **a: qknorm_class()(**a, **kw)  # noqa: E731
    readout = readout_factory(in_channels=backbone.hidden_channels,
                              history_len=backbone.num_layers + 1)
    head = instantiate(cfg.head)(in_channels=readout.out_channels, out_channels=d.num_outputs)
    if gbn:  # screening variant: BatchNorm1d on the head's input
        bn = torch.nn.BatchNorm1d(readout.out_channels)
        inner = head

        class GbnHead(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.bn, self.mlp = bn, inner.mlp

            def forward(self, g):
                if self.training and g.size(0) < 2:  # a 1-graph last batch: running stats
                    return self.mlp(F.batch_norm(g, self.bn.running_mean, self.bn.running_var,
                                                 self.bn.weight, self.bn.bias, False))
                return self.mlp(self.bn(g))

        head = GbnHead()
    return Net(backbone, readout, head)


# ----------------------------------------------------------------------------- instrumentation
def module_groups(net: Net) -> dict[str, list[torch.nn.Parameter]]:
    """Parameter groups: encoder, convs and norms in (at most) 4 depth groups, readout parts,
    head."""
    K = net.backbone.num_layers
    width = max(1, math.ceil(K / 4))
    groups: dict[str, list] = {}

    def depth_group(kind: str, i: int) -> str:
        a = (i // width) * width
        b = min(a + width, K) - 1
        return f"{kind}{a}" if a == b else f"{kind}{a}-{b}"

    for name, p in net.named_parameters():
        parts = name.split(".")
        if parts[0] == "backbone":
            if parts[1] == "convs":
                g = depth_group("conv", int(parts[2]))
            elif parts[1] == "norms":
                g = depth_group("bn", int(parts[2]))
            elif parts[1] == "encoder":
                g = "encoder"
            else:
                g = "backbone.other"
        elif parts[0] == "readout":
            r = parts[1]
            if r in ("proj_weight", "proj_bias", "proj"):
                g = "ro.proj"
            elif r == "layer_query":
                g = "ro.layer_q"
            elif r == "layer_key":
                g = "ro.layer_k"
            elif r == "log_tau":
                g = "ro.tau"
            elif r.startswith("node_"):
                g = "ro.node_attn"
            elif r == "norm":
                g = "ro.ln"
            else:
                g = "readout"
        else:
            g = "head"
        groups.setdefault(g, []).append(p)
    return groups


def rel_spread(p: torch.Tensor) -> float:
    """Spread of graph vectors ``[B, D]`` across graphs relative to their size:
    mean over channels of the std across graphs / root-mean-square entry (0: all graphs equal)."""
    if p.size(0) < 2:
        return float("nan")
    return float(p.std(0, unbiased=False).mean() / p.pow(2).mean().sqrt().clamp(min=1e-30))


def group_norm(tensors) -> float:
    return float(torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors)))


class Probe:
    """Forward pre-hooks that recompute HISTOGRAPH's internals and read BatchNorm inputs."""

    def __init__(self, net: Net):
        from histograph.nn.readouts.histograph import HistographReadout

        self.net = net
        self.rec: dict = {}
        self.bn_in: list = [None] * len(net.backbone.norms)
        self.hist: list | None = None
        self.is_hg = isinstance(net.readout, HistographReadout)
        self.enabled = True
        self.handles = [net.readout.register_forward_pre_hook(self._readout_hook),
                        net.head.register_forward_pre_hook(self._head_hook)]
        for i, norm in enumerate(net.backbone.norms):
            if isinstance(norm, torch.nn.Module) and not isinstance(norm, torch.nn.Identity):
                self.handles.append(norm.register_forward_pre_hook(self._bn_hook(i)))

    def _bn_hook(self, i):
        def hook(module, args):
            if self.enabled and module.training:
                x = args[0].detach()
                self.bn_in[i] = (x.mean(0), x.var(0, unbiased=False))
        return hook

    @torch.no_grad()
    def _head_hook(self, module, args):
        """The graph embeddings entering the head: their spread across graphs, and the share of
        the head's hidden ReLU units that are off for every graph of the batch."""
        if not self.enabled or not module.training:
            return
        g = args[0].detach()
        if g.size(0) < 2:  # a 1-graph last batch: no spread to measure
            return
        if isinstance(getattr(module, "bn", None), torch.nn.BatchNorm1d):  # the gbn variant
            g = F.batch_norm(g, None, None, module.bn.weight, module.bn.bias, training=True)
        self.rec["g_norm_mean"] = float(g.norm(dim=-1).mean())
        self.rec["g_std_across_graphs"] = float(g.std(0, unbiased=False).mean())
        self.rec["g_rel_spread"] = rel_spread(g)
        lins = getattr(getattr(module, "mlp", None), "lins", None)
        if lins is not None and len(lins) > 1:
            z = lins[0](g)
            self.rec["head_dead_units"] = float((z <= 0).all(0).float().mean())
            self.rec["head_off_share"] = float((z <= 0).float().mean())

    @torch.no_grad()
    def _readout_hook(self, module, args):
        from torch_geometric.utils import scatter

        if not self.enabled:
            return
        history, batch = args[0], args[1]
        num_graphs = args[2] if len(args) > 2 and args[2] is not None else int(batch.max()) + 1
        xs = torch.stack([h.detach() for h in history], 0) \
            if isinstance(history, (list, tuple)) else history.detach().transpose(0, 1)
        self.hist = xs
        if module.training:
            self.rec["last_pool_rel_spread"] = rel_spread(
                scatter(xs[-1], batch, dim=0, dim_size=num_graphs, reduce="mean"))
        if self.is_hg:
            self.rec.update(layer_and_node_stage(module, xs, batch, num_graphs))


@torch.no_grad()
def layer_and_node_stage(ro, xs, batch, num_graphs) -> dict:
    """Recompute stage 1 (scores, per-graph means, signed denominator, alpha, guard) and the
    stage-2 attention logits / entropy from the readout's parameters, as
    ``HistographReadout.node_states`` computes them."""
    from torch_geometric.utils import scatter

    from histograph.nn.readouts.histograph import MIN_DENOMINATOR, signed_guard

    L, D = ro.history_len, ro.in_channels
    r: dict = {}
    if ro.layer_stage:
        xt = ro._project(xs, 0)
        if hasattr(ro, "log_tau"):  # the qknorm screening variant
            q = F.normalize(ro.layer_query(xt[L - 1]), dim=-1)
            k = F.normalize(ro.layer_key(xt), dim=-1)
            s = (k * q).sum(-1).t() * ro.log_tau.exp()
        else:
            q = ro.layer_query(ro._project(xs[L - 1:], L - 1)[0])
            qk = (q @ ro.layer_key.weight) * (1.0 / math.sqrt(D))
            s = (xt * qk).sum(-1).t()  # [N, L]
        if ro.scope == "graph":
            c = scatter(s, batch, dim=0, dim_size=num_graphs, reduce="mean")
        else:
            c = s.mean(0, keepdim=True)
        total = c.sum(-1, keepdim=True)
        abs_sum = c.abs().sum(-1, keepdim=True)
        if ro.normalization == "signed":
            floor = ro.eps if ro.guard == "absolute" else \
                (ro.eps * abs_sum).clamp(min=MIN_DENOMINATOR)
            alpha = c / signed_guard(total, floor)
            clamped = (total.abs() < floor).float().mean()
        else:
            alpha = torch.softmax(c, -1)
            clamped = torch.zeros(())
        ratio = total.abs() / abs_sum.clamp(min=1e-30)  # 1: all same sign; 0: cancellation
        r.update({
            "s_abs_mean": s.abs().mean(), "s_abs_max": s.abs().max(),
            "c_abs_max": c.abs().max(), "c_abs_mean": c.abs().mean(),
            "denom_abs_min": total.abs().min(), "denom_abs_median": total.abs().median(),
            "denom_neg_share": (total < 0).float().mean(),
            "cancel_ratio_min": ratio.min(), "cancel_ratio_median": ratio.median(),
            "alpha_min": alpha.min(), "alpha_max": alpha.max(),
            "alpha_absmax_median": alpha.abs().max(-1).values.median(),
            "alpha_last_mean": alpha[:, -1].mean(),
            "guard_clamped_share": clamped,
        })
        h = (alpha[batch].t().unsqueeze(-1) * xt).sum(0) if ro.scope == "graph" else \
            (alpha.t().unsqueeze(-1) * xt).sum(0)
    else:
        h = ro._project(xs[L - 1:], L - 1)[0]
    r["h_norm_mean"] = h.norm(dim=-1).mean()
    r["h_pool_rel_spread"] = rel_spread(scatter(h, batch, dim=0, dim_size=num_graphs,
                                                reduce="mean"))
    if ro.node_stage:
        H = ro.heads
        dh = D // H
        q = ro.node_query(h).view(-1, H, dh)
        k = ro.node_key(h).view(-1, H, dh)
        v = ro.node_value(h).view(-1, H, dh)
        att = torch.zeros_like(h).view(-1, H, dh)
        counts = torch.bincount(batch, minlength=num_graphs).tolist()
        start, lmax, lsq, lcnt, ent = 0, 0.0, 0.0, 0, []
        for n in counts:  # diagnostic only: a loop over the batch's graphs
            if n == 0:
                continue
            qg, kg = q[start:start + n].transpose(0, 1), k[start:start + n].transpose(0, 1)
            logits = qg @ kg.transpose(1, 2) / math.sqrt(dh)  # [H, n, n]
            lmax = max(lmax, float(logits.abs().max()))
            lsq += float((logits ** 2).sum())
            lcnt += logits.numel()
            p = torch.softmax(logits, -1)
            att[start:start + n] = (p @ v[start:start + n].transpose(0, 1)).transpose(0, 1)
            if n > 1:
                e = -(p * torch.log(p.clamp(min=1e-30))).sum(-1).mean() / math.log(n)
                ent.append(float(e))
            start += n
        r["node_logit_absmax"] = lmax
        r["node_logit_rms"] = math.sqrt(lsq / max(lcnt, 1))
        r["node_entropy_norm"] = sum(ent) / max(len(ent), 1)
        out = ro.node_out(att.reshape(-1, D))  # the MHSA output added to h (residual)
        r["attn_out_over_h"] = out.norm(dim=-1).mean() / h.norm(dim=-1).mean().clamp(min=1e-30)
        r["attn_out_pool_rel_spread"] = rel_spread(scatter(out, batch, dim=0,
                                                           dim_size=num_graphs, reduce="mean"))
    return {k: float(v) for k, v in r.items()}


def bn_arrays(net: Net, probe: Probe) -> dict:
    """Per norm layer: batch variance of its input (last training batch), running stats."""
    out = {"batch_var_mean": [], "batch_var_max": [], "batch_mean_absmax": [],
           "run_var_min": [], "run_var_max": [], "run_var_mean": [], "run_mean_absmax": []}
    for i, norm in enumerate(net.backbone.norms):
        bn = getattr(norm, "module", norm)  # PyG's BatchNorm wraps torch's
        if not hasattr(bn, "running_var") or bn.running_var is None:
            continue
        mu, var = probe.bn_in[i] if probe.bn_in[i] is not None else (torch.zeros(1),
                                                                        torch.zeros(1))
        out["batch_var_mean"].append(float(var.mean()))
        out["batch_var_max"].append(float(var.max()))
        out["batch_mean_absmax"].append(float(mu.abs().max()))
        out["run_var_min"].append(float(bn.running_var.min()))
        out["run_var_max"].append(float(bn.running_var.max()))
        out["run_var_mean"].append(float(bn.running_var.mean()))
        out["run_mean_absmax"].append(float(bn.running_mean.abs().max()))
    return out


def history_arrays(xs: torch.Tensor) -> dict:
    """Per history entry: mean node-state norm, share of dead channels (zero on every node of
    the batch), share of zero entries, spread of node states across nodes (mean per-channel
    std)."""
    return {"norm": [float(x.norm(dim=-1).mean()) for x in xs],
            "dead_channels": [float((x.abs().amax(0) == 0).float().mean()) for x in xs],
            "zero_share": [float((x == 0).float().mean()) for x in xs],
            "node_std": [float(x.std(0).mean()) for x in xs]}


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(net, loader) -> dict:
    net.eval()
    correct = total = 0
    loss = 0.0
    counts = None
    for batch in loader:
        logits = net(batch)
        y = batch.y.view(-1)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(-1)
        correct += int((pred == y).sum())
        total += y.numel()
        c = torch.bincount(pred, minlength=logits.size(-1))
        counts = c if counts is None else counts + c
    net.train()
    return {"acc": correct / total, "loss": loss / total,
            "majority_share": float(counts.max()) / total,
            "pred_share": [float(v) / total for v in counts]}


def run_one(spec: str, epochs: int, data_dir: str, out: Path, per_step: bool = True,
            seed: int = 0, skip_train_eval: bool = False) -> dict:
    from lightning import seed_everything

    preset, name, opts = parse_run(spec)
    overrides = PRESETS[preset] + opts["overrides"] + [f"optimizer.lr={opts['lr']}",
                                                       f"seed={seed}", "fold=0"]
    if opts["eps"] is not None:
        overrides.append(f"readout.eps={opts['eps']}")
    if opts["wd"] is not None:
        overrides.append(f"optimizer.weight_decay={opts['wd']}")
    cfg = compose_cfg(overrides, data_dir)
    torch.set_num_threads(1)
    t0 = time.time()
    seed_everything(cfg.seed, workers=True, verbose=False)  # as histograph.train.run
    dm = build_datamodule(cfg)
    dm.setup("fit")
    net = build_net(cfg, dm, qknorm=opts["qknorm"], gbn=opts["gbn"])
    net.train()
    from hydra.utils import instantiate

    ro_params = [p for p in net.readout.parameters()]
    ro_ids = {id(p) for p in ro_params}
    if opts["hdlr"] is not None:  # the head alone
        ro_params = list(net.head.parameters())
        ro_ids = {id(p) for p in ro_params}
    if opts["rhlr"] is not None:
        ro_ids |= {id(p) for p in net.head.parameters()}
        ro_params += list(net.head.parameters())
    low = next((opts[k] for k in ("rolr", "rhlr", "hdlr") if opts[k] is not None), None)
    if low is not None:
        params = [{"params": [p for p in net.parameters() if id(p) not in ro_ids]},
                  {"params": ro_params, "lr": low}]
    else:
        params = list(net.parameters())
    opt = instantiate(cfg.optimizer)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt) if cfg.get("scheduler") else None
    base_lrs = [g["lr"] for g in opt.param_groups]
    groups = module_groups(net)
    probe = Probe(net)
    probe.enabled = per_step  # screening runs (--no-steps) skip the per-step probes
    train_loader, (val_loader, test_loader) = dm.train_dataloader(), dm.val_dataloader()
    steps_per_epoch = len(train_loader)
    train_eval_loader = dm._loader("train", shuffle=False)  # eval mode, fixed order
    labels = torch.as_tensor(dm.data.labels[dm.split["train"].numpy()]).long().view(-1)
    prior = torch.bincount(labels).float() / labels.numel()
    prior_entropy = float(-(prior * prior.clamp(min=1e-30).log()).sum())
    warm_steps = opts["warmup"] * steps_per_epoch

    steps: list[dict] = []
    epochs_rec: list[dict] = []
    layer_arrays: list[dict] = []
    step = 0
    e0 = {"epoch": 0, **{f"train_{k}": v for k, v in evaluate(net, train_eval_loader).items()},
          **{f"val_{k}": v for k, v in evaluate(net, val_loader).items()},
          **{f"test_{k}": v for k, v in evaluate(net, test_loader).items()}}
    epochs_rec.append(e0)
    nonfinite = False
    for epoch in range(1, epochs + 1):
        ep_loss = ep_correct = ep_n = 0.0
        ep_counts = torch.zeros(dm.data.num_outputs, dtype=torch.long)
        for batch in train_loader:
            if warm_steps:
                f = min(1.0, 0.01 + 0.99 * step / warm_steps)
                for g, lr0 in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr0 * f
            probe.rec = {}
            logits = net(batch)
            y = batch.y.view(-1)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"],
                   "loss": loss.item()}
            pred = logits.detach().argmax(-1)
            row["batch_acc"] = float((pred == y).float().mean())
            row["batch_majority_share"] = float(torch.bincount(pred).max()) / pred.numel()
            lg = logits.detach()  # spread of the logits across the batch's graphs
            row["logit_diff_std"] = float((lg[:, 1] - lg[:, 0]).std(unbiased=False)) \
                if lg.size(-1) == 2 else float(lg.std(0, unbiased=False).mean())
            grads = {g: group_norm([p.grad for p in ps if p.grad is not None])
                     for g, ps in groups.items()}
            total_grad = math.sqrt(sum(v ** 2 for v in grads.values()))
            row["grad_total"] = total_grad
            if not math.isfinite(total_grad):
                nonfinite = True
            if opts["clip"] is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), opts["clip"])
            before = {g: [p.detach().clone() for p in ps] for g, ps in groups.items()}
            opt.step()
            for g, ps in groups.items():
                row[f"grad/{g}"] = grads[g]
                w = group_norm(before[g])
                d = group_norm([p.detach() - b for p, b in zip(ps, before[g])])
                row[f"upd/{g}"] = d / max(w, 1e-12)
                row[f"wnorm/{g}"] = w
            row.update(probe.rec)
            if per_step:
                bn = bn_arrays(net, probe)
                if bn["run_var_max"]:
                    row["bn_batch_var_max"] = max(bn["batch_var_max"])
                    row["bn_batch_var_min_mean"] = min(bn["batch_var_mean"])
                    row["bn_run_var_max"] = max(bn["run_var_max"])
                    row["bn_run_var_min"] = min(bn["run_var_min"])
                    row["bn_run_mean_absmax"] = max(bn["run_mean_absmax"])
                if probe.hist is not None:
                    ha = history_arrays(probe.hist)
                    row["hist_norm_last"] = ha["norm"][-1]
                    row["hist_norm_max"] = max(ha["norm"])
                    row["hist_dead_channels_last"] = ha["dead_channels"][-1]
                    row["hist_dead_channels_max"] = max(ha["dead_channels"][1:] or [0])
                    row["hist_node_std_last"] = ha["node_std"][-1]
            steps.append(row)
            ep_loss += loss.item() * y.numel()
            ep_correct += float((pred == y).sum())
            ep_counts += torch.bincount(pred, minlength=ep_counts.numel())
            ep_n += y.numel()
            step += 1
        if sched is not None:
            sched.step()
        probe.enabled = False
        rec = {"epoch": epoch, "train_running_loss": ep_loss / ep_n,
               "train_running_acc": ep_correct / ep_n,
               "train_running_majority_share": float(ep_counts.max()) / ep_n,
               **({} if skip_train_eval and epoch < epochs else
                  {f"train_{k}": v for k, v in evaluate(net, train_eval_loader).items()}),
               **{f"val_{k}": v for k, v in evaluate(net, val_loader).items()},
               **{f"test_{k}": v for k, v in evaluate(net, test_loader).items()},
               "seconds": time.time() - t0}
        probe.enabled = per_step
        epochs_rec.append(rec)
        arr = {"epoch": epoch, "bn": bn_arrays(net, probe)}
        if probe.hist is not None:
            arr["history"] = history_arrays(probe.hist)
        layer_arrays.append(arr)
        print(f"[{name}] ep {epoch} loss {rec['train_running_loss']:.4f} "
              f"train {rec.get('train_acc', rec['train_running_acc']):.3f} "
              f"(maj {rec.get('train_majority_share', rec['train_running_majority_share']):.2f}) "
              f"val {rec['val_acc']:.3f} (maj {rec['val_majority_share']:.2f}) "
              f"{rec['seconds']:.0f}s", flush=True)
        if nonfinite:
            print(f"[{name}] non-finite gradient; stopping", flush=True)
            break
    result = {"name": name, "spec": spec, "preset": preset, "options": opts,
              "overrides": overrides, "epochs": epochs, "seed": seed,
              "steps_per_epoch": steps_per_epoch, "train_class_prior": prior.tolist(),
              "prior_entropy": prior_entropy, "seconds": time.time() - t0,
              "num_params": sum(p.numel() for p in net.parameters()),
              "per_epoch": epochs_rec, "layer_arrays": layer_arrays,
              "summary": summarize(epochs_rec, prior, prior_entropy)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(dump_json(result))
    if per_step:
        keys = list(dict.fromkeys(k for r in steps for k in r))
        with open(out / f"{name}.steps.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in steps:
                w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in r.items()})
    for h in probe.handles:
        h.remove()
    return result


# Collapse rule (thresholds read off the records; docs/training.md): over each of the last 3
# epochs, the mean training loss stays at or above 99% of the class-prior entropy (nothing
# learnt), or >= 95% of the (eval-mode) training predictions fall in one class while no class
# has a 95% prior. One epoch is not enough: single epochs flip (BatchNorm running statistics lag
# the weights early on; lr-0.01 losses spike).
LOSS_REL = 0.99      # train loss / H(prior) at or above this: nothing learnt
MAJORITY_MAX = 0.95  # share of predictions in one class
LAST_EPOCHS = 3      # ... sustained over this many final epochs


def collapse_indicators(epochs_rec, prior_max: float, prior_entropy: float) -> dict:
    tail = epochs_rec[-LAST_EPOCHS:] if len(epochs_rec) > LAST_EPOCHS else epochs_rec[1:]
    loss_ratio = epochs_rec[-1]["train_running_loss"] / prior_entropy
    loss_min = min(e["train_running_loss"] for e in tail) / prior_entropy
    # eval-mode training predictions; runs with --skip-train-eval: the training-mode
    # predictions of the epoch's steps
    maj_min = min(e.get("train_majority_share", e.get("train_running_majority_share", 0.0))
                  for e in tail)
    collapsed = loss_min >= LOSS_REL or (maj_min >= MAJORITY_MAX and prior_max < MAJORITY_MAX)
    return {"loss_over_prior_entropy": loss_ratio, "loss_over_prior_entropy_min_last3": loss_min,
            "majority_share_min_last3": maj_min, "collapsed": bool(collapsed)}


def summarize(epochs_rec, prior, prior_entropy) -> dict:
    last = epochs_rec[-1]
    best = max(range(1, len(epochs_rec)), key=lambda e: (epochs_rec[e]["val_acc"], -e))
    return {"final_train_acc": last["train_acc"],
            "final_train_majority_share": last["train_majority_share"],
            "final_val_majority_share": last["val_majority_share"],
            "final_val_acc": last["val_acc"], "best_val_acc": epochs_rec[best]["val_acc"],
            "best_val_epoch": best, "test_acc_at_best_val": epochs_rec[best]["test_acc"],
            **collapse_indicators(epochs_rec, float(prior.max()), prior_entropy)}


# ----------------------------------------------------------------------------- report
SHOW_COLS = ["loss", "batch_majority_share", "logit_diff_std", "upd/conv0", "upd/ro.proj",
             "upd/ro.node_attn", "upd/head", "wnorm/ro.node_attn", "wnorm/head",
             "grad/ro.node_attn", "last_pool_rel_spread", "h_pool_rel_spread",
             "attn_out_over_h", "attn_out_pool_rel_spread", "g_rel_spread", "head_dead_units",
             "c_abs_max", "cancel_ratio_min", "alpha_min", "alpha_max", "guard_clamped_share",
             "node_logit_absmax", "node_entropy_norm", "bn_run_var_max", "bn_batch_var_max",
             "hist_dead_channels_max"]
def rounded(x):
    """Floats to 5 significant digits (the records stay small)."""
    if isinstance(x, float):
        return float(f"{x:.5g}")
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    return x


def dump_json(result: dict) -> str:
    return json.dumps(rounded(result), separators=(",", ":")) + "\n"


def load_runs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def table(out: Path, prefix: str = "") -> str:
    """One row per run whose name starts with ``prefix`` (the collapse rule is re-applied from
    the per-epoch records; test accuracy is not shown: selection reads validation only)."""
    rows = ["| run | epochs | final train acc | final train maj. share | min maj. share, last 3 "
            "| train loss / H(prior): final, min last 3 | collapsed | best val acc (epoch) "
            "| final val acc "
            "| s/epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in load_runs(out).items():
        if not name.startswith(prefix):
            continue
        ep = r["per_epoch"]
        n = len(ep) - 1
        ind = collapse_indicators(ep, max(r["train_class_prior"]), r["prior_entropy"])
        best = max(range(1, len(ep)), key=lambda e: (ep[e]["val_acc"], -e))
        rows.append(f"| {name} | {n} | {ep[-1]['train_acc']:.3f} | "
                    f"{ep[-1]['train_majority_share']:.2f} | "
                    f"{ind['majority_share_min_last3']:.2f} | "
                    f"{ind['loss_over_prior_entropy']:.3f}, "
                    f"{ind['loss_over_prior_entropy_min_last3']:.3f} | "
                    f"{'YES' if ind['collapsed'] else 'no'} | "
                    f"{ep[best]['val_acc']:.3f} ({best}) | {ep[-1]['val_acc']:.3f} | "
                    f"{r['seconds'] / max(n, 1):.1f} |")
    return "\n".join(rows)


def readout_grid(dirs: list[Path]) -> str:
    """PROTEINS fold 0: best validation accuracy per readout / backbone / lr; COLLAPSED where the
    collapse rule fires (``hg`` presets count as ``histograph``; plain ``lrX`` runs only)."""
    cells: dict = {}
    for d in dirs:
        for name, r in load_runs(d).items():
            preset, _, var = name.partition("__")
            if not preset.startswith("proteins_") or not var.startswith("lr") or "_" in var:
                continue
            bb, ro = preset[len("proteins_"):].split("_", 1)
            ro = "histograph" if ro == "hg" else ro
            ep = r["per_epoch"]
            ind = collapse_indicators(ep, max(r["train_class_prior"]), r["prior_entropy"])
            best = max(ep[e]["val_acc"] for e in range(1, len(ep)))
            txt = f"{best:.3f}" + (" **COLLAPSED**" if ind["collapsed"] else "")
            cells[(ro, bb, var[2:])] = f"{txt} ({len(ep) - 1} ep)"
    cols = sorted({(bb, lr) for _, bb, lr in cells}, key=lambda c: (c[0][:3], int(c[0][3:]),
                                                                      -float(c[1])))
    ros = list(dict.fromkeys(ro for ro, _, _ in sorted(cells)))
    out = ["| readout | " + " | ".join(f"{bb} lr {lr}" for bb, lr in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for ro in ros:
        out.append(f"| {ro} | " + " | ".join(cells.get((ro, bb, lr), "not run")
                                             for bb, lr in cols) + " |")
    return "\n".join(out)


def read_steps(path: Path) -> dict[str, list[float]]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list[float]] = {}
    for k in rows[0]:
        cols[k] = [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]
    return cols


def plot(out: Path, pairs: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("loss", "train loss per step (dashed: class-prior entropy)"),
        ("collapse", "collapse indicators (batch): majority share, dead head units,\n"
                     "across-graph spread of head input / of pooled last layer"),
        ("upd", "Adam update ||dθ||/||θ|| per module (log)"),
        ("grad", "gradient norm per module (log)"),
        ("stage1", "layer stage: max|c|, min |Σc|/Σ|c|, max|α|, guard-clamped share (log)"),
        ("stage2", "node stage: max |q·k/√d|, entropy / log N (log)"),
        ("bn", "BatchNorm: max running_var, max batch var; last-layer node norm (log)"),
    ]
    runs = load_runs(out)
    fig, axes = plt.subplots(len(panels), 2 * len(pairs), figsize=(4.8 * 2 * len(pairs),
                                                                   2.5 * len(panels)),
                             squeeze=False)
    for j, (a, b) in enumerate(pairs):
        for k, name in enumerate((a, b)):
            col = 2 * j + k
            cols = read_steps(out / f"{name}.steps.csv")
            x = cols["step"]
            spe = runs[name]["steps_per_epoch"]

            def line(ax, key, label=None, floor=None):
                if key in cols:
                    y = cols[key] if floor is None else [max(v, floor) for v in cols[key]]
                    ax.plot(x, y, lw=0.6, label=label or key)
                    return True
                return False

            for i, (key, title) in enumerate(panels):
                ax = axes[i, col]
                if key == "loss":
                    line(ax, "loss")
                    ax.axhline(runs[name]["prior_entropy"], color="k", ls="--", lw=0.8)
                elif key == "collapse":
                    line(ax, "batch_majority_share", "majority share")
                    line(ax, "head_dead_units", "dead head units")
                    line(ax, "g_rel_spread", "spread(head input)")
                    line(ax, "last_pool_rel_spread", "spread(mean of X^K)")
                    ax.set_ylim(-0.02, 1.05)
                    ax.legend(fontsize=5, loc="center right")
                elif key in ("upd", "grad"):
                    for c in [c for c in cols if c.startswith(key + "/")]:
                        line(ax, c, c[len(key) + 1:], floor=1e-12)
                    ax.set_yscale("log")
                    ax.legend(fontsize=4.5, ncol=3)
                elif key == "stage1":
                    if line(ax, "c_abs_max", "max|c|", 1e-6):
                        line(ax, "cancel_ratio_min", "min |Σc|/Σ|c|", 1e-6)
                        ax.plot(x, [max(abs(u), abs(v), 1e-6) for u, v in
                                    zip(cols["alpha_min"], cols["alpha_max"])], lw=0.6,
                                label="max|α|")
                        line(ax, "guard_clamped_share", "clamped (1e-6 = none)", 1e-6)
                        ax.set_yscale("log")
                        ax.legend(fontsize=5)
                    else:
                        ax.text(0.5, 0.5, "no layer stage", ha="center", transform=ax.transAxes)
                elif key == "stage2":
                    if line(ax, "node_logit_absmax", "max|logit|", 1e-6):
                        line(ax, "node_entropy_norm", "entropy/log N", 1e-6)
                        ax.set_yscale("log")
                        ax.legend(fontsize=5)
                    else:
                        ax.text(0.5, 0.5, "no node stage", ha="center", transform=ax.transAxes)
                elif key == "bn":
                    for c in ("bn_run_var_max", "bn_batch_var_max", "hist_norm_last"):
                        line(ax, c, floor=1e-12)
                    ax.set_yscale("log")
                    ax.legend(fontsize=5)
                for e in range(spe, int(max(x)) + 1, spe):
                    ax.axvline(e, color="0.85", lw=0.5, zorder=0)
                ax.set_title(f"{name}\n{title}" if i == 0 else title, fontsize=7)
                ax.tick_params(labelsize=6)
                if i == len(panels) - 1:
                    ax.set_xlabel("training step (grey lines: epochs)", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", nargs="*", default=[], help="preset:variants, e.g. "
                    "nci1_gin4_hg:lr0.01 proteins_gcn32_hg:lr0.001,warmup5")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-steps", action="store_true", help="no per-step CSV (screening)")
    ap.add_argument("--skip-train-eval", action="store_true", help="evaluate the training set "
                    "(eval mode) after the last epoch only (the readout sweep)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--data-dir", default=os.environ.get("HISTOGRAPH_DATA_DIR", "/tmp/diag-data"))
    ap.add_argument("--rewrite", action="store_true", help="re-apply the collapse rule to the "
                    "records in --out (summary field) and store them compactly")
    ap.add_argument("--show", nargs="*", default=[], help="print key per-step columns of these "
                    "records (names as in --out) at the steps --at")
    ap.add_argument("--at", default="0,3,6,8,12,25,50,100,200,400,600")
    ap.add_argument("--cols", default=",".join(SHOW_COLS))
    ap.add_argument("--thresholds", nargs="*", default=None, help="list every run of these "
                    "record folders by train loss / H(prior) with its majority shares")
    ap.add_argument("--grid", nargs="*", default=None, help="readout x backbone x lr grid of "
                    "the proteins_* runs in these record folders")
    ap.add_argument("--plot", action="store_true", help="draw the figure from the records")
    ap.add_argument("--pairs", nargs="*", default=[
        "nci1_gin4_hg__lr0.01/nci1_gin4_hg__lr0.001",
        "proteins_gcn32_hg__lr0.01/proteins_gcn32_hg__lr0.001"])
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--table", default=None, help="print the table of runs whose name starts "
                    "with this prefix ('' for all)")
    args = ap.parse_args()
    for spec in args.run:
        run_one(spec, args.epochs, args.data_dir, args.out, per_step=not args.no_steps,
                seed=args.seed, skip_train_eval=args.skip_train_eval)
    for name in args.show:
        cols = read_steps(args.out / f"{name}.steps.csv")
        keys = [k for k in args.cols.split(",") if k in cols]
        at = [int(a) for a in args.at.split(",") if int(a) < len(cols["step"])]
        print(f"## {name}")
        print("| column | " + " | ".join(f"step {a}" for a in at) + " | max | min |")
        print("|---|" + "---|" * (len(at) + 2))
        for k in keys:
            v = cols[k]
            fin = [x for x in v if math.isfinite(x)]
            print(f"| {k} | " + " | ".join(f"{v[a]:.3g}" for a in at) +
                  f" | {max(fin):.3g} | {min(fin):.3g} |")
    if args.thresholds is not None:
        rows = []
        for d in args.thresholds or [str(args.out)]:
            for name, r in load_runs(Path(d)).items():
                ep = r["per_epoch"]
                ind = collapse_indicators(ep, max(r["train_class_prior"]), r["prior_entropy"])
                rows.append((ind["loss_over_prior_entropy_min_last3"],
                             ind["loss_over_prior_entropy"], f"{Path(d).name}/{name}",
                             ep[-1]["train_majority_share"], ind["majority_share_min_last3"],
                             max(r["train_class_prior"]), ind["collapsed"]))
        print("| train loss / H(prior), min last 3 | final | run | final maj. share "
              "| min maj. share, last 3 | largest class prior | collapsed |\n"
              "|---|---|---|---|---|---|---|")
        for row in sorted(rows, reverse=True):
            print(f"| {row[0]:.3f} | {row[1]:.3f} | {row[2]} | {row[3]:.2f} | {row[4]:.2f} | "
                  f"{row[5]:.3f} | {'YES' if row[6] else 'no'} |")
    if args.grid is not None:
        print(readout_grid([Path(d) for d in args.grid]))
    if args.rewrite:
        for name, r in load_runs(args.out).items():
            prior = torch.tensor(r["train_class_prior"])
            r["summary"] = summarize(r["per_epoch"], prior, r["prior_entropy"])
            (args.out / f"{name}.json").write_text(dump_json(r))
    if args.plot:
        pairs = [tuple(p.split("/")) for p in args.pairs]
        plot(args.out, pairs, args.figure or args.out / "diagnosis.png")
    if args.table is not None:
        print(table(args.out, args.table))


if __name__ == "__main__":
    main()
