"""Nothing is lost to a crash: exact resume after SIGKILL, atomic writes, untouched data mirror,
safe checkpoint loading, a network guard that works, and W&B that never blocks a run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from histograph.train import run
from tests.conftest import ROOT, guarded_env

# Everything that must be identical between an uninterrupted and a resumed run.
SAME = ("selected_epoch", "epochs", "val", "test", "history", "layer_weights")


# 6 epochs of 19 small batches with dropout (head 0.5, backbone 0.2): the shuffle order and the
# dropout masks both come from the global RNG, so a resume that lost it would diverge
OVERRIDES = ["trainer.max_epochs=6", "model.layers=2", "model.hidden=16", "model.dropout=0.2",
             "data.batch_size=8", "logger=csv", "trainer.accelerator=cpu",
             "trainer.enable_progress_bar=false", "threads=1"]


def test_sigkill_mid_training_then_same_command_resumes_exactly(cfg_factory, data_dir,
                                                                tmp_path):
    # uninterrupted reference, in-process (saves an interpreter start)
    run(cfg_factory(OVERRIDES, output_dir=tmp_path / "a"))
    # `python train.py ...`, killed (SIGKILL: no handler, no clean-up) as soon as the first
    # epoch's checkpoint is on disk, i.e. early in the second epoch
    log = tmp_path / "netlog"
    env = guarded_env(log)
    cmd = [sys.executable, str(ROOT / "train.py"), *OVERRIDES, f"paths.data_dir={data_dir}",
           f"hydra.run.dir={tmp_path / 'b'}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run ended before writing its first checkpoint"
    assert not (tmp_path / "b" / "results.json").exists(), "the kill came after the run ended"
    assert torch.load(last, weights_only=True)["epoch"] < 5
    # re-run the very same command: it resumes and must end exactly where the reference ended
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout + again.stderr
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert Path(a["checkpoint"]).name == Path(b["checkpoint"]).name
    # the CSV log keeps the epochs before the crash: the same rows as the reference
    rows = [sorted((tmp_path / d / "csv" / "metrics.csv").read_text().splitlines())
            for d in ("a", "b")]
    assert rows[0] == rows[1]
    # checkpoints load with weights_only=True and carry the RNG states and run settings
    ckpt = torch.load(last, weights_only=True)
    assert "RNGStateCheckpoint" in ckpt["callbacks"]
    assert ckpt["histograph_run_config"]["model.layers"] == 2
    assert log.read_text() == ""


def test_rng_states_round_trip(tmp_path):
    from histograph.training.rng_state import collect_rng_states, set_rng_states

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    states = collect_rng_states()
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    set_rng_states(states)
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2]
    # what goes into a checkpoint survives the weights-only unpickler
    torch.save(states, tmp_path / "rng.pt")
    assert torch.load(tmp_path / "rng.pt", weights_only=True)["numpy"]["pos"] == \
        states["numpy"]["pos"]


def test_csv_logger_keeps_rows_up_to_the_resumed_epoch(tmp_path):
    from histograph.training.csv_logger import ResumableCSVLogger

    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    # epochs 0-2, then a row logged after training (no epoch), e.g. the smoothing diagnostics
    metrics.write_text("epoch,step,val/acc\n0,4,0.5\n1,9,0.6\n2,14,0.7\n,14,0.9\n")
    logger = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
    logger.resume_after(1)  # resumed from the checkpoint of epoch 1: epoch 2 will be re-run
    logger.log_metrics({"val/acc": 0.8, "epoch": 2}, step=14)  # written at once (no buffering)
    assert metrics.read_text().splitlines() == ["epoch,step,val/acc", "0,4,0.5", "1,9,0.6",
                                                "2,14,0.8"]
    # without a resume an old file is replaced, as with Lightning's CSVLogger
    fresh = ResumableCSVLogger(save_dir=tmp_path, name="csv", version="")
    with pytest.warns(UserWarning, match="will be deleted"):
        fresh.log_metrics({"val/acc": 0.1, "epoch": 0}, step=4)
    assert metrics.read_text().splitlines() == ["epoch,step,val/acc", "0,4,0.1"]


def test_results_and_split_caches_are_written_atomically(tmp_path, monkeypatch):
    from histograph.data.splits import load_or_make_folds
    from histograph.utils import atomic_write_json

    target = tmp_path / "results.json"
    atomic_write_json(target, {"test": 0.5})
    with pytest.raises(TypeError):  # fails while serialising: the old file must survive
        atomic_write_json(target, {"test": object()})
    assert json.loads(target.read_text()) == {"test": 0.5}

    def crash(*args, **kwargs):  # a kill between writing and renaming
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        load_or_make_folds(tmp_path / "splits", "TOY", np.array([0, 1] * 10), 2, 0, 0.0)
    monkeypatch.undo()
    # no split file, whole or half-written (the folder holds only the lock: histograph/data/locks)
    assert not [p.name for p in (tmp_path / "splits").glob("*") if p.name != ".locks"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "splits"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_data_mirror_is_never_modified(tmp_path):
    from histograph.data.mirror import EMBEDDED_MIRROR
    from histograph.data.tu import load_tu

    mirror = tmp_path / "mirror"
    shutil.copytree(EMBEDDED_MIRROR / "TUDataset" / "MUTAG", mirror / "TUDataset" / "MUTAG")
    before = _tree_digest(mirror)
    data = load_tu("MUTAG", tmp_path / "data", data_mirror=str(mirror))
    load_tu("MUTAG", tmp_path / "data", data_mirror=str(mirror))  # processed: read again
    assert len(data) == 188
    assert _tree_digest(mirror) == before  # nothing added, changed or processed in the mirror
    assert (tmp_path / "data" / "TUDataset" / "MUTAG" / "processed").is_dir()


@pytest.mark.network_attempt_expected
def test_network_guard_blocks_and_is_shared_by_both_conftest_copies():
    import conftest as loaded_by_pytest

    from tests import conftest

    assert conftest.NETWORK_ATTEMPTS is loaded_by_pytest.NETWORK_ATTEMPTS
    for attempt in (lambda: socket.create_connection(("192.0.2.1", 80), timeout=1),
                    lambda: socket.getaddrinfo("example.org", 443)):
        with pytest.raises(OSError, match="network access is disabled in tests"):
            attempt()
    assert conftest.NETWORK_ATTEMPTS == ["192.0.2.1", "example.org"]
    local = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:  # a local connection is allowed (refused, since nothing listens there)
        assert local.connect_ex(("127.0.0.1", 9)) != 0
    finally:
        local.close()


def test_wandb_without_credentials_logs_offline_and_never_blocks(cfg_factory, tmp_path,
                                                                 monkeypatch):
    from histograph.training.wandb_auth import wandb_online_possible

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert not wandb_online_possible()
    start = time.time()
    res = run(cfg_factory(["logger=wandb", "model.layers=2", "model.hidden=8",
                           "trainer.max_epochs=1"]))
    assert time.time() - start < 120
    assert res["test"] is not None
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # a key in the environment or in .netrc counts as credentials
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_online_possible()
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'y' * 40}\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_online_possible()


def test_framework_loads_checkpoints_weights_only():
    """Every ``torch.load`` in histograph/ and the Trainer's fit/test in train.py pass
    ``weights_only=True`` (a full unpickle of a shared checkpoint can run arbitrary code)."""
    import ast

    unsafe, checked = [], []
    for path in sorted((ROOT / "histograph").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            func = node.func
            is_torch_load = func.attr == "load" and getattr(func.value, "id", None) == "torch"
            is_trainer_call = (path.name == "train.py" and func.attr in ("fit", "test")
                               and getattr(func.value, "id", None) == "trainer")
            if is_torch_load or is_trainer_call:
                checked.append(f"{path.name}:{func.attr}")
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert {"train.py:fit", "train.py:test", "checkpoints.py:load"} <= set(checked)
    assert not unsafe, f"checkpoint loads without weights_only=True: {unsafe}"
