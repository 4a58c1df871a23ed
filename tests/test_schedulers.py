"""scheduler=warmup: the learning rate each epoch, its checkpointed state and its user errors."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from histograph.errors import UserError
from histograph.training.schedulers import linear_warmup
from tests.conftest import CONFIG_DIR


def _scheduler(overrides: list[str], lr: float = 1e-3):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["scheduler=warmup", f"optimizer.lr={lr}", *overrides])
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return optimizer, instantiate(cfg.scheduler)(optimizer=optimizer)


def _rates(optimizer, scheduler, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_ramps_linearly_then_follows_the_step_schedule_from_its_end():
    optimizer, scheduler = _scheduler(["scheduler.epochs=4", "scheduler.then.step_size=3"])
    rates = _rates(optimizer, scheduler, 10)
    assert rates[:4] == pytest.approx([1e-5, 2.575e-4, 5.05e-4, 7.525e-4])
    # full rate for the step schedule's first 3 epochs (4, 5, 6), halved from epoch 7
    assert rates[4:] == pytest.approx([1e-3] * 3 + [5e-4] * 3)


def test_warmup_without_a_following_schedule_stays_constant():
    optimizer, scheduler = _scheduler(["scheduler.then=null", "scheduler.epochs=2",
                                       "scheduler.start_factor=0.5"], lr=0.01)
    assert _rates(optimizer, scheduler, 6) == pytest.approx([0.005, 0.0075] + [0.01] * 4)


def test_warmup_state_survives_a_checkpoint_mid_ramp():
    optimizer, scheduler = _scheduler([])
    _rates(optimizer, scheduler, 2)
    state = scheduler.state_dict()
    expected = _rates(optimizer, scheduler, 6)
    optimizer2, scheduler2 = _scheduler([])
    scheduler2.load_state_dict(state)
    for group in optimizer2.param_groups:  # Lightning restores the optimizer's lr with it
        group["lr"] = state["_last_lr"][0]
    assert _rates(optimizer2, scheduler2, 6) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, words", [({"epochs": 0}, "scheduler.epochs=0"),
                                           ({"epochs": 2.5}, "whole number"),
                                           ({"start_factor": 0.0}, "scheduler.start_factor=0.0")])
def test_bad_warmup_settings_are_one_sentence_user_errors(kwargs, words):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(UserError, match=words):
        linear_warmup(optimizer, **kwargs)


def test_a_run_with_warmup_trains_and_checkpoints_its_schedule(cfg_factory, tmp_path):
    from histograph.train import run

    res = run(cfg_factory(["scheduler=warmup", "scheduler.epochs=4", "trainer.max_epochs=3",
                           "optimizer.lr=0.002"]))
    assert res["epochs"] == 3 and 0.0 <= res["test"] <= 1.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = ckpt["lr_schedulers"]
    # three epochs stepped: the fourth would run at 0.002 * (0.01 + 0.99 * 3/4)
    assert state["_last_lr"][0] == pytest.approx(0.002 * (0.01 + 0.99 * 0.75))
    # and the CSV log holds the rate each epoch ran at
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    logged = metrics.dropna(subset=["train/lr"]).set_index("epoch")["train/lr"]
    assert logged.index.tolist() == [0, 1, 2]
    assert logged.tolist() == pytest.approx([0.002 * (0.01 + 0.99 * e / 4) for e in range(3)])
