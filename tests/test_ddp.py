"""trainer=ddp: 2 CPU processes (gloo) write one results.json with the single-process schema;
in a sweep the ranks are started by submitit (tasks_per_node), never by re-running the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from histograph.errors import UserError
from histograph.sweeps import jobs
from histograph.train import run
from tests.conftest import ROOT, make_cfg

SMALL = ["model.layers=2", "model.hidden=16", "trainer.max_epochs=2", "readout=mean",
         "logger=csv", "threads=1", "trainer.enable_progress_bar=false"]


@pytest.fixture
def restore_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _submitit_task(monkeypatch, tasks: int, rank: int) -> None:
    """The environment submitit's local executor gives task ``rank`` of ``tasks``."""
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242",
                       "SUBMITIT_LOCAL_NTASKS": str(tasks), "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                       "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": str(rank),
                       "SUBMITIT_LOCAL_LOCALID": str(rank)}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)


def test_submitit_tasks_become_ddp_ranks(tmp_path, data_dir, monkeypatch, restore_env):
    _submitit_task(monkeypatch, tasks=2, rank=1)
    cfg = make_cfg(["trainer=ddp", "trainer.devices=2"], tmp_path, data_dir)
    assert jobs.setup_distributed(cfg) == 2
    assert os.environ["RANK"] == "1" and os.environ["LOCAL_RANK"] == "1"
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["MASTER_PORT"]
    assert jobs.global_rank() == 1  # so this task writes no marker

    with pytest.raises(UserError, match="trainer.devices=3 must equal"):
        jobs.setup_distributed(make_cfg(["trainer=ddp", "trainer.devices=3"], tmp_path,
                                        data_dir))
    with pytest.raises(UserError, match="not DDP"):
        jobs.setup_distributed(make_cfg([], tmp_path, data_dir))


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_results_json(tmp_path, data_dir):
    """~35 s: Lightning re-launches train.py for rank 1 (gloo); only rank 0 writes."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "train.py", "trainer=ddp", "trainer.devices=2",
           "trainer.accelerator=cpu", *SMALL, f"hydra.run.dir={out}", f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count("results.json") == 1, "rank 1 must not write (or announce) results"
    assert "GLOBAL_RANK: 1" in log
    ddp = json.loads((out / "results.json").read_text())
    assert ddp["world_size"] == 2 and len(ddp["history"]["val"]) == 2

    single = run(make_cfg(SMALL + ["trainer.accelerator=cpu"], tmp_path / "single", data_dir,
                          fast=False))
    assert single["world_size"] == 1
    assert set(ddp) == set(single)
    assert set(ddp["history"]) == set(single["history"])
    for key in ("dataset", "model", "readout", "layers", "hidden", "protocol", "metric"):
        assert ddp[key] == single[key], key
    # the collapse check counts every rank's training predictions: the labels it counted are
    # the whole training split's (up to the sampler's padding to equal shards), not rank 0's half
    n_train = ddp["split_sizes"]["train"]
    for d, s in zip(ddp["history"]["label_majority"], single["history"]["label_majority"]):
        assert abs(d - s) <= 1.0 / n_train, (d, s)
    # every epoch-level value is logged as synced (they are reduced over the ranks first), so
    # Lightning has nothing to warn about
    assert "sync_dist=True)` when logging on epoch level" not in log
    assert log.count("collapsed: from epoch") == int(bool(ddp["collapsed"])), "rank 0 warns"


@pytest.mark.slow
def test_ddp_sweep_through_submitit_local(tmp_path, data_dir):
    """~35 s: a DDP job in a sweep: submitit starts 2 tasks, they are the 2 DDP ranks."""
    cmd = [sys.executable, "train.py", "-m", "experiment=depth_sweep_smoke",
           "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "model.layers=1", "readout=mean",
           f"paths.log_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = tmp_path / "sweeps" / "depth_sweep_smoke"
    job = sweep / "experiment=depth_sweep_smoke,model.layers=1,readout=mean,trainer=ddp"
    res = json.loads((job / "results.json").read_text())
    assert res["world_size"] == 2 and (job / "done.json").exists()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".") == [
        job.name], "no stray sweep or job dirs from a re-launched rank"
