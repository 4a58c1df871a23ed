"""Config composition: every dataset x model x readout composes; names map to one file."""

from __future__ import annotations

import itertools
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR

DATASETS = ["mutag", "proteins", "nci1", "ptc_mr", "imdb_binary", "imdb_multi", "dd", "enzymes",
            "reddit_binary", "collab", "ogbg_molhiv", "ogbg_molbace", "ogbg_molbbbp",
            "ogbg_moltox21", "ogbg_moltoxcast"]
MODELS = ["gin", "gcn", "gat", "sage", "gine"]
READOUTS = ["mean", "sum", "max", "attention", "set2set", "gmt", "jk_cat", "jk_max", "jk_lstm",
            "histograph"]


def _options(group: str) -> set[str]:
    return {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}


def test_cli_contract_names_exist():
    assert set(DATASETS) | {"tu"} <= _options("dataset")
    assert set(MODELS) <= _options("model")
    assert set(READOUTS) <= _options("readout")
    assert {"holdout", "gin", "ogb"} <= _options("protocol")
    assert {"csv", "wandb", "wandb_offline", "tensorboard"} <= _options("logger")


def _compose_all(pairs):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for dataset, model, readout in pairs:
            cfg = compose("train", overrides=[f"dataset={dataset}", f"model={model}",
                                              f"readout={readout}"])
            assert cfg.model.conv == model
            assert cfg.protocol.name == ("ogb" if dataset.startswith("ogbg") else "holdout")
            # the whole tree resolves (except the hydra-runtime output dir)
            OmegaConf.to_container(cfg.dataset, resolve=True)
            OmegaConf.to_container(cfg.readout, resolve=True)
            OmegaConf.to_container(cfg.head, resolve=True)


def test_datasets_models_readouts_compose():
    """Every dataset, every backbone and every readout at least once (the full product runs
    with `make test-all`: test_every_dataset_model_readout_composes)."""
    pairs = {(d, "gin", "histograph") for d in DATASETS} | {("mutag", m, "mean") for m in MODELS}
    pairs |= {("mutag", "gin", r) for r in READOUTS} | {("ogbg_molhiv", "gine", "histograph")}
    _compose_all(sorted(pairs))


@pytest.mark.slow
def test_every_dataset_model_readout_composes():
    _compose_all(itertools.product(DATASETS, MODELS, READOUTS))


@pytest.mark.parametrize("group", ["dataset", "model", "readout", "head"])
def test_config_target_is_one_importable_class(group):
    """A reader goes from configs/<group>/<name>.yaml to the file implementing it in one hop."""
    import importlib

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in sorted(_options(group)):
            node = compose("train", overrides=[f"{group}={name}"])[group]
            target = node.get("_target_")
            assert target, f"{group}/{name}.yaml composes to no _target_"
            module, attr = target.rsplit(".", 1)
            assert hasattr(importlib.import_module(module), attr), target


def test_ablation_axis_sets_readout_switches():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        expected = {"full": ("signed", True, True), "softmax": ("softmax", True, True),
                    "no_layer_stage": ("signed", False, True),
                    "no_node_stage": ("signed", True, False)}
        for name, (norm, layer, node) in expected.items():
            r = compose("train", overrides=["readout=histograph", f"ablation={name}"]).readout
            assert (r.normalization, r.layer_stage, r.node_stage) == (norm, layer, node)
