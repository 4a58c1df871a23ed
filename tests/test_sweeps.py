"""Idempotent sweeps: job folders from overrides, done/failure markers, skip-if-done, resume,
launchers (joblib, submitit_local), and the parameter budget.

Long file: one behaviour per test; the launcher tests share the sweep fixtures defined here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import histograph.train as train_mod
from histograph.errors import UserError
from histograph.nn.budget import fit_width, width_step
from histograph.sweeps import jobs
from histograph.sweeps.names import MAX_NAME, job_dir_name
from tests.conftest import ROOT, make_cfg

SMOKE = ["experiment=depth_sweep_smoke"]


# ---------------------------------------------------------------------- job folder names
def test_job_dir_name_is_safe_stable_and_unique():
    assert job_dir_name("model.layers=4,readout=mean") == "model.layers=4,readout=mean"
    assert job_dir_name("") == "default" and job_dir_name(None) == "default"
    assert job_dir_name("dataset.name=a/b c") == "dataset.name=a_b_c"  # no sub-folders
    assert not job_dir_name(".hidden=1").startswith(".")
    a = job_dir_name("x=" + "1" * 300)
    b = job_dir_name("x=" + "1" * 299 + "2")
    assert len(a) <= MAX_NAME and len(b) <= MAX_NAME and a != b


def test_sweep_and_job_dirs_come_from_overrides_not_time(tmp_path, data_dir):
    cfg = make_cfg(SMOKE + ["readout=mean", "model.layers=4", "logger=csv", "threads=1",
                            "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}"],
                   tmp_path / "unused", data_dir, fast=False)
    assert OmegaConf.select(cfg, "hydra.sweep.dir") == f"{tmp_path}/sweeps/depth_sweep_smoke"
    # sorted overrides; logger/threads/progress bar/paths do not change results: left out
    assert OmegaConf.select(cfg, "hydra.sweep.subdir") == \
        "experiment=depth_sweep_smoke,model.layers=4,readout=mean"


def test_slurm_launcher_with_the_local_example_makes_a_valid_sbatch_script(tmp_path,
                                                                          monkeypatch):
    """docs/local.example.yaml fills hydra/launcher=slurm; submitit accepts every field."""
    import shutil

    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs, ignore=shutil.ignore_patterns("local"))
    (configs / "local").mkdir()
    shutil.copy(ROOT / "docs" / "local.example.yaml", configs / "local" / "default.yaml")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "experiment=depth_sweep",
                                          f"paths.log_dir={tmp_path}"],
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["partition"] == "gpu" and params["account"] == "my-project"
    assert params["submitit_folder"] == f"{tmp_path}/sweeps/depth_sweep/.submitit/%j"
    # the translation hydra-submitit-launcher's launch() does, then submitit's own checks
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "s"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("_target_"), params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                  for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in ("--partition=gpu", "--account=my-project", "--time=240", "--gpus-per-node=1",
                 "--cpus-per-task=4", "--mem=32GB", "--signal=USR2@120",
                 "--job-name=depth_sweep", "export OMP_NUM_THREADS=1"):
        assert line in script, line


# ---------------------------------------------------------------------- markers (no training)
class FakeRun:
    """Stands in for ``histograph.train.run``: counts calls, writes results.json, may fail."""

    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    def __call__(self, cfg) -> dict:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom in the forward pass")
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        res = {"metric": "acc", "val": 0.75, "test": 0.5, "selected_epoch": 0, "epochs": 1}
        (out / "results.json").write_text(json.dumps(res))
        return res


def test_done_job_is_skipped_failed_job_is_marked(tmp_path, data_dir):
    job = tmp_path / "job"
    cfg = make_cfg(SMOKE + ["model.layers=1", "readout=mean"], job, data_dir)
    first = FakeRun()
    assert jobs.run_idempotent(cfg, first) == 0.75 and first.calls == 1
    done = json.loads((job / "done.json").read_text())
    assert done["test"] == 0.5 and done["objective"] == 0.75
    assert "model.layers=1" in done["overrides"] and done["config_hash"]

    again = FakeRun()
    assert jobs.run_idempotent(cfg, again) == 0.75
    assert again.calls == 0, "a finished job must not train again"

    broken = make_cfg(SMOKE + ["model.layers=1", "readout=mean"], tmp_path / "bad", data_dir)
    failing = FakeRun(fail=True)
    assert jobs.run_idempotent(broken, failing) is None  # no exception: the sweep goes on
    failed = json.loads((tmp_path / "bad" / "failed.json").read_text())
    assert failed["error"] == "RuntimeError: boom in the forward pass"
    assert "Traceback" in failed["traceback"] and "boom" in failed["traceback"]
    assert "readout=mean" in failed["overrides"]
    # a later successful attempt clears the stale failure marker
    jobs.run_idempotent(broken, FakeRun())
    assert not (tmp_path / "bad" / "failed.json").exists()
    assert (tmp_path / "bad" / "done.json").exists()


def test_done_job_with_a_changed_config_is_superseded_not_kept(tmp_path, data_dir):
    job = tmp_path / "job"
    jobs.run_idempotent(make_cfg(SMOKE + ["model.layers=1"], job, data_dir), FakeRun())
    # same folder, different preset value (e.g. an edited experiment file)
    changed = make_cfg(SMOKE + ["model.layers=1", "optimizer.lr=0.5"], job, data_dir)
    rerun = FakeRun()
    jobs.run_idempotent(changed, rerun)
    assert rerun.calls == 1
    old = list((job / "superseded").glob("*/results.json"))
    assert len(old) == 1 and (old[0].parent / "done.json").exists()
    assert json.loads((job / "done.json").read_text())["config"]["optimizer"]["lr"] == 0.5


def test_ddp_in_a_sweep_needs_launcher_started_ranks(tmp_path, data_dir):
    cfg = make_cfg(SMOKE + ["trainer=ddp", "trainer.devices=2"], tmp_path / "job", data_dir)
    with pytest.raises(UserError, match="tasks_per_node"):
        jobs.setup_distributed(cfg)
    assert jobs.run_idempotent(cfg, FakeRun()) is None
    assert "tasks_per_node" in json.loads((tmp_path / "job" / "failed.json").read_text())[
        "error"]


# ---------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


_REAL_BUILD_TRAINER = train_mod.build_trainer


def _trainer_with(monkeypatch, callback) -> None:
    """Make ``run`` build its trainer with one more callback."""
    real = _REAL_BUILD_TRAINER

    def build(cfg, callbacks, loggers, output_dir):
        return real(cfg, [*callbacks, callback], loggers, output_dir)

    monkeypatch.setattr(train_mod, "build_trainer", build)


def test_killed_job_resumes_from_last_checkpoint(tmp_path, data_dir, monkeypatch):
    import lightning.pytorch as pl

    class CrashAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # epoch 0 is done and checkpointed
                raise _Crash("killed")

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.epochs.append(trainer.current_epoch)

    job = tmp_path / "job"
    cfg = make_cfg(SMOKE + ["model.layers=1", "readout=mean", "trainer.max_epochs=3"], job,
                   data_dir)
    _trainer_with(monkeypatch, CrashAtEpoch())
    assert jobs.run_idempotent(cfg, train_mod.run) is None
    assert (job / "checkpoints" / "last.ckpt").exists() and (job / "failed.json").exists()
    killed = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
    first_epoch = killed["histograph_history"]["train_loss"]
    assert len(first_epoch) == 1

    record = Record()
    _trainer_with(monkeypatch, record)  # the requeued attempt, same folder
    cfg = make_cfg(SMOKE + ["model.layers=1", "readout=mean", "trainer.max_epochs=3"], job,
                   data_dir)
    assert jobs.run_idempotent(cfg, train_mod.run) is not None
    assert record.epochs == [1, 2], "the second attempt must continue, not start over"
    res = json.loads((job / "results.json").read_text())
    assert res["epochs"] == 3 and res["history"]["train_loss"][0] == first_epoch[0]
    assert (job / "done.json").exists() and not (job / "failed.json").exists()


def test_unfinished_job_with_a_changed_config_starts_over(tmp_path, data_dir, monkeypatch):
    """A failed/killed attempt whose last.ckpt came from another config (e.g. a changed default)
    is moved aside and retrained, instead of failing on the resume check."""
    import lightning.pytorch as pl

    class CrashAtEpoch(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise _Crash("killed")

    job = tmp_path / "job"
    base = SMOKE + ["model.layers=1", "readout=mean", "trainer.max_epochs=2"]
    _trainer_with(monkeypatch, CrashAtEpoch())
    assert jobs.run_idempotent(make_cfg(base, job, data_dir), train_mod.run) is None
    assert (job / "checkpoints" / "last.ckpt").exists() and (job / "failed.json").exists()
    monkeypatch.undo()
    changed = make_cfg(base + ["optimizer.lr=0.005"], job, data_dir)
    assert jobs.run_idempotent(changed, train_mod.run) is not None
    assert (job / "done.json").exists() and not (job / "failed.json").exists()
    moved = list((job / "superseded").glob("*/failed.json"))
    assert len(moved) == 1 and (moved[0].parent / "checkpoints" / "last.ckpt").exists()
    assert json.loads((job / "results.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------------- real sweeps
def _sweep(args: list[str], log_dir: Path, data_dir: Path, timeout: int = 600,
           expect: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", "-m", *SMOKE, f"paths.log_dir={log_dir}",
           f"paths.data_dir={data_dir}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _job_files(sweep: Path) -> dict[str, float]:
    """mtime of every results.json / checkpoint under the sweep (what a re-run must not touch)."""
    return {str(p.relative_to(sweep)): p.stat().st_mtime_ns for p in sweep.rglob("*")
            if p.name == "results.json" or p.suffix == ".ckpt"}


def test_joblib_sweep_one_failing_job_then_rerun_trains_nothing(tmp_path, data_dir):
    """4 jobs through joblib, one forced to fail (hidden 18 is not a multiple of HISTOGRAPH's 4
    heads): 3 results + 1 failure; the aggregated table lists both. The re-run goes through the
    basic launcher (cheaper here than joblib's worker start-up): job folders do not depend on
    the launcher, so it finds the 3 finished jobs and skips them."""
    args = ["model.layers=1", "model.hidden=16,18"]
    # a job failed: the sweep writes its summary, then exits 1 (not 0)
    proc = _sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *args], tmp_path,
                  data_dir, expect=1)
    assert "the sweep did not finish (1 of 4 jobs): exit status 1" in proc.stdout
    sweep = tmp_path / "sweeps" / "depth_sweep_smoke"
    done = sorted(p.parent.name for p in sweep.glob("*/done.json"))
    failed = sorted(p.parent.name for p in sweep.glob("*/failed.json"))
    assert len(done) == 3 and len(list(sweep.glob("*/results.json"))) == 3
    assert failed == [("experiment=depth_sweep_smoke,model.hidden=18,model.layers=1,"
                       "readout=histograph")]
    marker = json.loads((sweep / failed[0] / "failed.json").read_text())
    assert "readout.heads=4" in marker["error"] and "model.hidden=18" in marker["overrides"]
    table = pd.read_csv(sweep / "jobs.csv")
    assert sorted(table["status"]) == ["done", "done", "done", "failed"]
    assert (sweep / "summary.md").exists() and (sweep / "summary.csv").exists()
    from histograph.analysis.plot import plot

    pngs = plot(sweep, wandb="off")  # `python -m histograph.analysis.plot <sweep dir>`
    for name in ("depth_accuracy", "layer_weights", "dirichlet_energy"):
        assert pngs[name].is_file() and pngs[name].parent == sweep, name

    before = _job_files(sweep)
    proc = _sweep(args, tmp_path, data_dir, expect=1)
    log = proc.stdout + proc.stderr
    assert log.count("Skipping") == 3, log[-3000:]
    assert "Restoring states" not in log and "Resuming" not in log
    assert _job_files(sweep) == before, "a re-run must not train or rewrite a finished job"
    assert (sweep / failed[0] / "failed.json").exists()  # retried, failed again


@pytest.mark.slow
def test_submitit_local_sweep_then_rerun_skips(tmp_path, data_dir):
    """The 4-job smoke sweep through submitit's local executor (all 4 processes at once)."""
    _sweep(["hydra/launcher=submitit_local"], tmp_path, data_dir)
    sweep = tmp_path / "sweeps" / "depth_sweep_smoke"
    assert len(list(sweep.glob("*/done.json"))) == 4
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and summary["complete"].all()
    before = _job_files(sweep)
    _sweep(["hydra/launcher=submitit_local"], tmp_path, data_dir)
    assert _job_files(sweep) == before


@pytest.mark.slow
def test_sigkilled_job_resumes_when_the_sweep_is_rerun(tmp_path, data_dir):
    """A real kill -9 after the first checkpoint; re-running the sweep command finishes it."""
    args = [*SMOKE, "model.layers=1", "readout=mean", "trainer.max_epochs=40",
            f"paths.log_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    job = (tmp_path / "sweeps" / "depth_sweep_smoke" /
           "experiment=depth_sweep_smoke,model.layers=1,readout=mean,trainer.max_epochs=40")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", "-m", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (job / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (job / "results.json").exists(), "the job finished before it was killed"
    done_epochs = len(torch.load(job / "checkpoints" / "last.ckpt",
                                 weights_only=False)["histograph_history"]["test"])
    rerun = subprocess.run([sys.executable, "train.py", "-m", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming" in rerun.stdout + rerun.stderr
    res = json.loads((job / "results.json").read_text())
    assert res["epochs"] == 40 and done_epochs >= 1


# ---------------------------------------------------------------------- parameter budget
def test_fit_width_picks_the_closest_multiple():
    count = lambda h: 10 * h * h + 7  # noqa: E731 - quadratic, like a GIN layer
    assert fit_width(count, 10 * 60 * 60 + 7) == 60
    assert fit_width(count, 10 * 61 * 61, step=4) == 60  # 60 is closer than 64
    assert fit_width(count, 10 * 63 * 63, step=4) == 64
    assert width_step([4, None, 6]) == 12 and width_step([None]) == 1
    with pytest.raises(ValueError, match="below the smallest"):
        fit_width(count, 5)
    with pytest.raises(ValueError, match="positive integer"):
        fit_width(count, 0)


def test_param_budget_keeps_the_count_across_depths(cfg_factory, data_dir, tmp_path):
    """The fitted widths give about N parameters at depth 2 and 16 (the real network); the
    composed config itself is left as it is."""
    from histograph.nn.budget import count_parameters
    from tests.conftest import build_parts

    budget, counts = 30_000, {}
    for layers in (2, 16):
        cfg = cfg_factory([f"model.layers={layers}", f"task.param_budget={budget}"])
        _, _, net = build_parts(cfg)
        hidden = net.record["hidden"]
        assert net.record["param_budget"] == budget and cfg.model.hidden == 64  # untouched
        assert hidden % 4 == 0  # a multiple of HISTOGRAPH's heads
        assert net.model.backbone.hidden_channels == hidden
        counts[layers] = (hidden, count_parameters(net.model))
    assert counts[2][0] > counts[16][0]  # deeper -> narrower
    for hidden, n in counts.values():
        assert abs(n - budget) / budget < 0.2, counts
    res = train_mod.run(cfg_factory(["model.layers=2", f"task.param_budget={budget}",
                                     "trainer.max_epochs=1"]))
    assert res["param_budget"] == budget and res["hidden"] == counts[2][0]
    assert res["num_params"] == counts[2][1]
