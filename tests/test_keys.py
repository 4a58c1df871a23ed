"""One table of non-result keys (histograph/keys.py), and its four readers agree on it:
Hydra's job folder name, the sweep's config hash, the aggregator's axes and the resume check."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from histograph.analysis.aggregate import is_axis_key
from histograph.checkpoints import RUN_CONFIG_KEY, check_resume, run_config
from histograph.errors import UserError
from histograph.keys import NON_RESULT_KEYS, config_hash, is_result_key
from tests.conftest import make_cfg

#: One override per table entry that changes that key (a sub-tree entry: one key below it).
NON_RESULT_EXAMPLES = {
    "paths": "paths.log_dir=/elsewhere", "hydra": "hydra.job.chdir=false",
    "logger": "logger=none", "sweep_name": "sweep_name=other", "task_name": "task_name=other",
    "tags": "tags=[a]", "cluster": "+cluster.partition=gpu",
    "data.data_dir": "data.data_dir=/d", "data.data_mirror": "data.data_mirror=/m",
    "threads": "threads=2", "data.num_workers": "data.num_workers=2",
    "data.loader": "data.loader=pyg", "task.cache": "+task.cache=disk",
    "data.device_resident": "data.device_resident=false",
    "trainer.accelerator": "trainer.accelerator=cpu", "trainer.devices": "trainer.devices=2",
    "trainer.num_nodes": "+trainer.num_nodes=2", "trainer.strategy": "+trainer.strategy=ddp",
    "trainer.matmul_precision": "trainer.matmul_precision=highest",
    "trainer.enable_progress_bar": "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary": "trainer.enable_model_summary=true",
    "trainer.log_every_n_steps": "trainer.log_every_n_steps=1", "resume": "resume=false",
    "protocol.grid": "+protocol.grid=['model.hidden=8']",
    "protocol.retrain": "+protocol.retrain=5",
    "protocol.outer_folds": "+protocol.outer_folds=[0]",
    "protocol.exit_zero": "+protocol.exit_zero=true",
}
RESULT_EXAMPLES = ["model.layers=3", "readout=mean", "optimizer.lr=0.005", "seed=3",
                   "data.batch_size=16", "data.eval_batch_size=64", "trainer.max_epochs=7",
                   "trainer.gradient_clip_val=1.0", "task.param_budget=20000"]
BASE = ["experiment=depth_sweep_smoke", "model.layers=2"]


def _cfg(tmp_path, data_dir, extra):
    return make_cfg(BASE + list(extra), tmp_path / "job", data_dir, fast=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The base job, composed once: (override_dirname, config hash, resume settings)."""
    folder = tmp_path_factory.mktemp("keys")
    cfg = make_cfg(BASE, folder / "job", folder / "data", fast=False)
    return str(cfg.hydra.job.override_dirname), config_hash(cfg), run_config(cfg)


def test_every_table_entry_has_an_example():
    assert set(NON_RESULT_EXAMPLES) == set(NON_RESULT_KEYS)


@pytest.mark.parametrize("override", list(NON_RESULT_EXAMPLES.values()))
def test_a_non_result_override_changes_nothing_that_identifies_a_job(override, base, tmp_path):
    dirname, digest, settings = base
    other = make_cfg(BASE + [override], tmp_path / "job", tmp_path / "data", fast=False)
    key = override.split("=", 1)[0].lstrip("+")
    assert not is_result_key(key)
    # 1. the job folder (Hydra's override_dirname, through ${hg.non_result_overrides:})
    assert other.hydra.job.override_dirname == dirname
    # 2. the sweep's config hash
    assert config_hash(other) == digest
    # 3. the aggregator's axes
    assert not is_axis_key(key)
    # 4. the resume check
    assert run_config(other) == settings


@pytest.mark.parametrize("override", RESULT_EXAMPLES)
def test_a_result_override_changes_all_four(override, base, tmp_path):
    _, digest, settings = base
    other = make_cfg(BASE + [override], tmp_path / "job", tmp_path / "data", fast=False)
    key = override.split("=", 1)[0]
    assert is_result_key(key)
    assert override in other.hydra.job.override_dirname.split(",")
    assert config_hash(other) != digest
    assert is_axis_key(key) or key == "seed"  # seeds and folds are replicates, not axes
    changed = {k for k in run_config(other) if run_config(other)[k] != settings.get(k)}
    assert changed, override
    module = torch.nn.Linear(1, 1)
    ckpt = {RUN_CONFIG_KEY: settings, "state_dict": module.state_dict()}
    with pytest.raises(UserError, match="belongs to a different run"):
        check_resume(ckpt, "last.ckpt", run_config(other), module)


def test_exclude_keys_is_the_table_expanded_against_the_overrides(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["paths.data_dir=/x", "threads=1", "model.hidden=8"])
    excluded = OmegaConf.to_container(cfg.hydra.job.config.override_dirname, resolve=True)[
        "exclude_keys"]
    assert "paths.data_dir" in excluded and "threads" in excluded
    assert "model.hidden" not in excluded
    assert cfg.hydra.job.override_dirname == "experiment=depth_sweep_smoke,model.hidden=8," \
                                             "model.layers=2"
