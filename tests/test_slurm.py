"""Sweeps on a real single-node Slurm (scripts/slurm/start.sh, tests/slurm_cluster.py).

The tests marked ``slurm`` run ``python train.py -m ... hydra/launcher=slurm`` against the real
scheduler: one job array per sweep, preemption and time limits survived with identical results,
a job killed without a checkpoint reported and retried, a finished sweep not submitted again.
They start the cluster when ``HISTOGRAPH_SLURM_TESTS=1`` (``.ci/run`` sets it) or ``-m slurm`` is
given, reuse a running one otherwise, and skip with the reason when the machine cannot run it
(not root, no apt). The request check and the parsers are plain tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from histograph.errors import UserError
from histograph.sweeps.slurm import (Partition, check_request, cluster_partitions,
                                     parse_gres_gpus, parse_sinfo_nodes, parse_time_limit)

SUBMITIT = pytest.importorskip("submitit")
from tests.conftest import ROOT, guarded_env
from tests.slurm_cluster import ClusterInfo, slurm_cluster  # noqa: F401 (a fixture)

TINY = ["model.layers=1", "model.hidden=8", "readout=mean", "threads=1"]
SWEEP_NAME = "slurm_test"


# ---------------------------------------------------------------------- no scheduler needed
def test_parse_sinfo_gres_and_time_limits():
    nodes = parse_sinfo_nodes("vm|8|24105|gpu:2|low*|idle\nvm|8|24105|gpu:2|high|idle\n")
    assert nodes == {"vm": {"cpus": 8, "memory_mb": 24105, "gpus": 2, "state": "idle",
                            "partitions": ["low", "high"], "default_partition": "low"}}
    assert [parse_gres_gpus(g) for g in ("", "(null)", "gpu:1", "gpu:a100:2,gpu:v100:1",
                                         "gpu:tesla:4(S:0-1)", "shard:8", "gpu")] == \
        [0, 0, 1, 3, 4, 0, 1]
    assert [parse_time_limit(t) for t in ("infinite", "30:00", "2:00:00", "1-00:00:00",
                                          "0:30:01")] == [None, 30, 120, 1440, 31]


PARTS = {"low": Partition("low", cpus=8, memory_mb=24105, gpus=2, default=True),
         "short": Partition("short", cpus=8, memory_mb=24105, gpus=0, max_time_min=60)}


@pytest.mark.parametrize("params, match", [
    ({"mem_gb": 32}, r"hydra\.launcher\.mem_gb=32 is more memory than the nodes of partition "
                     r"low have \(23 GB\); lower cluster\.mem_gb in configs/local/default\.yaml"),
    ({"cpus_per_task": 4, "tasks_per_node": 4}, r"= 16 CPUs, but the nodes of partition low "
                                                r"have 8; lower cluster\.cpus_per_task"),
    ({"gpus_per_node": 4}, r"ask for 4 GPU\(s\) per node .* have 2; set cluster\.gpus_per_node"),
    ({"partition": "short", "gpus_per_task": 1}, r"have 0; set cluster\.gpus_per_node"),
    ({"partition": "short", "timeout_min": 240}, r"timeout_min=240 is above partition short's "
                                                 r"time limit \(60 min\)"),
    ({"partition": "gpu"}, r"partition=gpu is not a partition of this cluster \(low, short\)"),
])
def test_a_request_no_node_can_run_is_refused_in_one_line(params, match):
    with pytest.raises(UserError, match=match) as info:
        check_request({"mem_gb": 8, "cpus_per_task": 1, "tasks_per_node": 1, **params}, PARTS)
    assert "\n" not in str(info.value)
    chosen = check_request({"mem_gb": 8, "gpus_per_node": 2, "cpus_per_task": 8}, PARTS)
    assert chosen.name == "low"


# ---------------------------------------------------------------------- the real scheduler
def _local_config(folder: Path, info: ClusterInfo, **cluster) -> Path:
    """A ``configs/local/default.yaml`` for this cluster, in its own search-path folder."""
    values = {"partition": info.default_partition, "cpus_per_task": 1, "mem_gb": 2,
              "gpus_per_node": 0, "timeout_min": 60, "array_parallelism": 2,
              "max_num_timeout": 3, "signal_delay_s": 20,
              "setup": ["export OMP_NUM_THREADS=1"], **cluster}
    (folder / "local").mkdir(parents=True, exist_ok=True)
    lines = ["# @package _global_", "cluster:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in values.items()]
    (folder / "local" / "default.yaml").write_text("\n".join(lines) + "\n")
    return folder


def _sweep(args: list[str], tmp_path: Path, info: ClusterInfo, data_dir: Path,
           timeout: int = 600, **cluster) -> tuple[subprocess.CompletedProcess, float]:
    configs = _local_config(tmp_path / "searchpath", info, **cluster)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
           f"hydra.searchpath=[file://{configs}]", f"sweep_name={SWEEP_NAME}",
           f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={data_dir}",
           "trainer.enable_progress_bar=false", "hydra.callbacks.report.plots=false", *args]
    env = {**guarded_env(tmp_path / "net.log"), **info.env}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - start


def _sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "sweeps" / SWEEP_NAME


def _array_ids(sweep: Path) -> set[str]:
    """The Slurm array ids of the sweep's jobs (submitit's folders are named by job id)."""
    return {p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*")
            if re.fullmatch(r"\d+_\d+", p.name)}


@pytest.mark.slurm
def test_the_cluster_answers_and_its_limits_are_read(slurm_cluster, tmp_path):
    info = slurm_cluster
    out = tmp_path / "out.txt"
    r = subprocess.run(["sbatch", "--wait", "-o", str(out), "--wrap", "echo ok"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **info.env})
    assert r.returncode == 0 and out.read_text().strip() == "ok", r.stderr
    parts = cluster_partitions()
    low = parts[info.default_partition]
    assert low.default and (low.cpus, low.memory_mb, low.gpus) == (info.cpus, info.memory_mb,
                                                                  info.gpus)
    assert set(parts) == set(info.partitions)


@pytest.mark.slurm
def test_a_sweep_is_one_array_and_a_rerun_submits_nothing(slurm_cluster, tmp_path, data_dir):
    args = ["experiment=depth_sweep_smoke"]  # 4 jobs: depth 1, 2 x mean, histograph
    proc, first = _sweep(args, tmp_path, slurm_cluster, data_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert len(list(sweep.glob("*/results.json"))) == 4
    assert len(list(sweep.glob("*/done.json"))) == 4
    assert len(_array_ids(sweep)) == 1  # one job array
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4 and summary["complete"].all()
    assert "0 of 4 jobs finished before, 4 submitted" in proc.stdout
    print(f"\nsmoke sweep on Slurm: {first:.1f} s")

    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    proc, again = _sweep(args, tmp_path, slurm_cluster, data_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "4 of 4 jobs finished before, 0 submitted" in proc.stdout
    assert len(_array_ids(sweep)) == 1, "the re-run submitted a job"
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")} == before
    print(f"re-run of the finished sweep: {again:.1f} s")


def _logs(sweep: Path) -> str:
    """Every submitit log of the sweep (the jobs' stdout and stderr, all attempts)."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))


def _wait_for_checkpoint(sweep: Path, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(sweep.glob("*/checkpoints/last.ckpt"))
        if found:
            return found[0].parent.parent
        time.sleep(0.1)
    raise AssertionError(f"no job of {sweep} wrote a checkpoint within {timeout} s")


def _reference(cfg_args: list[str], tmp_path: Path, data_dir: Path) -> dict:
    """The same job trained in one go (a plain run: same result config, same numbers)."""
    out = tmp_path / "reference"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *cfg_args,
                           f"hydra.run.dir={out}", f"paths.data_dir={data_dir}",
                           "trainer.enable_progress_bar=false"],
                          cwd=ROOT, env=guarded_env(tmp_path / "ref.log"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _same_numbers(a: dict, b: dict) -> None:
    for key in ("history", "selected_epoch", "val", "test", "epochs"):
        assert a[key] == b[key], key


@pytest.mark.slurm
def test_a_preempted_job_is_requeued_resumes_and_ends_identically(slurm_cluster, tmp_path,
                                                                   data_dir):
    info = slurm_cluster
    # 300 epochs (~5 s of training): with 60 (~1 s) a loaded machine let the job finish before
    # the scheduler's preemption reached it (USR2 arrived after the last epoch; seen once under
    # two concurrent trainings), so the test raced instead of testing the requeue.
    job_args = [*TINY, "trainer.max_epochs=300"]
    env = {**os.environ, **info.env}
    sweep = _sweep_dir(tmp_path)

    def preempt() -> None:
        job = _wait_for_checkpoint(sweep)
        # a job of the high-priority partition that needs every CPU of the node
        subprocess.run(["sbatch", "-p", info.high_partition, "-c", str(info.cpus), "-o",
                        str(tmp_path / "high.out"), "--wrap", "sleep 1"], env=env, check=True,
                       capture_output=True)
        (tmp_path / "preempted_job").write_text(str(job))

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    start = time.monotonic()
    proc, _ = _sweep(job_args, tmp_path, info, data_dir)
    took = time.monotonic() - start
    thread.join(timeout=5)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    job = Path((tmp_path / "preempted_job").read_text())
    logs = _logs(sweep)
    assert "preempted" in logs and "Resuming from" in logs, logs[-3000:]
    resumed = json.loads((job / "results.json").read_text())
    _same_numbers(resumed, _reference(job_args, tmp_path, data_dir))
    print(f"\npreempted, requeued and finished: {took:.1f} s")


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_at_its_time_limit_is_requeued_and_the_sweep_returns_0(slurm_cluster, tmp_path,
                                                                      data_dir):
    """timeout_min=1 with USR2 20 s before: a job needing longer is requeued (slurmctld checks
    limits every ~30 s, so this takes minutes) and finishes with its uninterrupted numbers."""
    job_args = [*TINY, "trainer.max_epochs=500"]
    proc, took = _sweep(job_args, tmp_path, slurm_cluster, data_dir, timeout=900, timeout_min=1,
                        max_num_timeout=10)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep = _sweep_dir(tmp_path)
    logs = _logs(sweep)
    assert "timed-out" in logs and "Resuming from" in logs, logs[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/results.json")]
    _same_numbers(json.loads((job / "results.json").read_text()),
                  _reference(job_args, tmp_path, data_dir))
    print(f"\ntimed out, requeued and finished: {took:.1f} s")


@pytest.mark.slurm
def test_a_killed_job_is_reported_and_only_it_is_retried(slurm_cluster, tmp_path, data_dir):
    info = slurm_cluster
    args = [*TINY, "seed=0,1", "trainer.max_epochs=30"]
    sweep = _sweep_dir(tmp_path)

    def cancel_one() -> None:
        """SIGKILL the seed=1 job's process once it has a checkpoint, as the out-of-memory killer
        would: no handler runs, no marker is written. (A plain ``scancel`` sends SIGTERM first,
        which the run turns into ``interrupted.json``: resumable, exit 75.)"""
        deadline = time.monotonic() + 300
        while not list(sweep.glob("*seed=1*/checkpoints/last.ckpt")):
            assert time.monotonic() < deadline, "the seed=1 job never started"
            time.sleep(0.5)
        (job,) = sweep.glob("*seed=1*")
        holder = (job / ".lock").read_text().split()  # "pid N on <host> since ..."
        os.kill(int(holder[1]), signal.SIGKILL)

    thread = threading.Thread(target=cancel_one, daemon=True)
    thread.start()
    proc, took = _sweep(args, tmp_path, info, data_dir)
    thread.join(timeout=5)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # reported, not waited for forever
    jobs = pd.read_csv(sweep / "jobs.csv")
    assert sorted(jobs["status"]) == ["done", "failed"], jobs
    assert "left the queue without a result" in jobs.loc[jobs.status == "failed", "error"].item()
    print(f"\nsweep with a killed job ended in {took:.1f} s")
    proc, took = _sweep(args, tmp_path, info, data_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "1 of 2 jobs finished before, 1 submitted" in proc.stdout
    assert len(list(sweep.glob("*/done.json"))) == 2
    print(f"re-run retried the killed job: {took:.1f} s")


def _task_env() -> dict:
    """Run as a Slurm task: what the scheduler gave it."""
    import os as _os

    return {k: _os.environ.get(k) for k in ("SLURM_GPUS_ON_NODE", "SLURM_NTASKS",
                                             "SLURM_NTASKS_PER_NODE", "SLURM_PROCID")}


@pytest.mark.slurm
def test_the_ddp_recipe_is_accepted_and_each_task_sees_every_gpu(slurm_cluster, tmp_path,
                                                                 cfg_factory):
    """The submission side of `trainer=ddp trainer.devices=2` on Slurm: the configured launcher
    (gpus_per_node = tasks_per_node = devices) passes the check and Slurm starts 2 tasks that
    both see the node's 2 (fake) GPUs, which is what Lightning needs (with gpus_per_task=1 each
    task would see one GPU and Lightning fails with "requested gpu [0, 1]")."""
    import cloudpickle
    from omegaconf import OmegaConf

    from histograph.sweeps.slurm import make_executor

    info = slurm_cluster
    if info.gpus < 2:
        pytest.skip("the test cluster has fewer than 2 (fake) GPUs")
    cfg = cfg_factory(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2",
                       "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=2",
                       f"hydra.launcher.partition={info.default_partition}",
                       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                       "hydra.launcher.timeout_min=60"], fast=False)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["gpus_per_node"] == params["tasks_per_node"] == cfg.trainer.devices == 2
    params["submitit_folder"] = str(tmp_path / "submitit" / "%j")
    check_request(params, cluster_partitions())
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tasks = make_executor(params).submit(_task_env).results()
    assert len(tasks) == 2 and sorted(t["SLURM_PROCID"] for t in tasks) == ["0", "1"]
    assert all(t["SLURM_GPUS_ON_NODE"] == "2" and t["SLURM_NTASKS"] == "2" for t in tasks)


@pytest.mark.slurm
def test_a_request_above_the_cluster_is_refused_before_submission(slurm_cluster, tmp_path,
                                                                   data_dir):
    proc, took = _sweep(["experiment=depth_sweep_smoke"], tmp_path, slurm_cluster, data_dir,
                        mem_gb=4096)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: hydra.launcher.mem_gb=4096 is more memory than")
    assert "cluster.mem_gb in configs/local/default.yaml" in line
    assert not (_sweep_dir(tmp_path) / ".submitit").exists()  # nothing submitted


def test_slurm_plugin_imports_without_the_slurm_extra():
    """Hydra imports every plugin at every start: without submitit our launcher module must
    import quietly (no "Plugin is incompatible" warning on each run), and selecting it must say
    what to install."""
    code = (
        "import sys, warnings\n"
        "sys.modules['submitit'] = None\n"  # as if the slurm extra were not installed
        "warnings.simplefilter('error')\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Launcher)]\n"
        "assert 'HistographSlurmLauncher' in names, names\n"
        "from hydra_plugins.histograph_launcher.slurm_launcher import HistographSlurmLauncher\n"
        "from histograph.errors import UserError\n"
        "try:\n"
        "    HistographSlurmLauncher(partition='debug')\n"
        "except UserError as exc:\n"
        "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'histograph[slurm]'" in proc.stdout
    assert "incompatible" not in proc.stderr
