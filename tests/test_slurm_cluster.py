"""Smoke tests against a real single-node Slurm (scripts/slurm/start.sh; see tests/slurm_cluster.py).

Run: ``HISTOGRAPH_SLURM_TESTS=1 python -m pytest -q tests/test_slurm_cluster.py`` (as root; installs
``slurm-wlm munge`` with apt when missing), or ``pytest -m slurm``. Without an opt-in or a running
cluster the ``slurm`` tests skip; the parser tests always run. With
``HISTOGRAPH_SLURM_ACCOUNTING=1`` the cluster gets slurmdbd (``sacct``), which changes what submitit
sees of a cancelled job (``test_cancelled_job_without_result``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from tests.slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    ClusterInfo,
    parse_gres_gpus,
    parse_kv_line,
    parse_scontrol_nodes,
    parse_sinfo_nodes,
    slurm_cluster,
)

# The jobs below run `python -m submitit.core._submit` on the node, where this test module is not
# importable: pickle its functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout}s")


def _executor(folder: Path, info: ClusterInfo, **params) -> submitit.AutoExecutor:
    # cluster="slurm": AutoExecutor would pick Slurm anyway once srun is on PATH (CLUSTER.md, 8);
    # a fresh folder per test: job ids restart at 1 after a wiped state folder (CLUSTER.md, 6).
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    # timeout_min > 10: submitit counts any USR2 as a time-out below that (CLUSTER.md, 4)
    ex.update_parameters(**{"timeout_min": 60, "slurm_partition": info.default_partition,
                            "cpus_per_task": 1, "mem_gb": 1, **params})
    return ex


def _job_env(keys: tuple[str, ...]) -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in keys}


def _square(x: int) -> int:
    return x * x


def _touch_and_sleep(marker: str, seconds: float) -> str:
    Path(marker).write_text(os.environ.get("SLURM_JOB_ID", ""))
    time.sleep(seconds)
    return "finished"


class _Preemptible(submitit.helpers.Checkpointable):
    """Sleeps on its first run (to be preempted), returns SLURM_RESTART_COUNT on the next."""

    def __call__(self, marker_dir: str, seconds: float) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        Path(marker_dir, f"run-{restarts}").write_text(str(time.time()))
        if restarts == 0:
            time.sleep(seconds)
        return restarts

    def checkpoint(self, marker_dir: str, seconds: float):  # noqa: ANN201
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        Path(marker_dir, f"checkpoint-{restarts}").write_text(str(time.time()))
        return super().checkpoint(marker_dir, seconds)


# ----------------------------------------------------------------------------- parsers (no cluster)
SCONTROL_NODE = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=0.56 "
    "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:2 NodeAddr=127.0.0.1 NodeHostName=vm "
    "Version=22.05.8 OS=Linux 6.18.44-fc-v1045 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=24105 "
    "AllocMem=0 FreeMem=22690 Sockets=8 Boards=1 State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 "
    "Weight=1 Owner=N/A MCS_label=N/A Partitions=low,high  CfgTRES=cpu=8,mem=24105M,billing=8 "
    "Reason=gres/gpu count reported lower than configured (0 < 2) [slurm@2026-12-02T04:16:49]\n"
    "NodeName=g1 CPUTot=64 RealMemory=515000 Gres=gpu:a100:4(S:0-1),shard:8 State=MIXED "
    "Partitions=gpu\n"
)


def test_parse_scontrol_nodes():
    nodes = parse_scontrol_nodes(SCONTROL_NODE)
    assert nodes["vm"]["cpus"] == 8 and nodes["vm"]["memory_mb"] == 24105
    assert nodes["vm"]["gpus"] == 2 and nodes["vm"]["state"] == "IDLE+DRAIN"
    assert nodes["vm"]["partitions"] == ["low", "high"]
    assert nodes["vm"]["raw"]["OS"].startswith("Linux 6.18.44") and nodes["vm"]["raw"]["CfgTRES"] \
        == "cpu=8,mem=24105M,billing=8"
    assert nodes["g1"] == {**nodes["g1"], "cpus": 64, "memory_mb": 515000, "gpus": 4}


def test_parse_sinfo_and_gres():
    nodes = parse_sinfo_nodes("vm|8|24105|gpu:2|low*|idle\nvm|8|24105|gpu:2|high|idle\n")
    assert nodes == {"vm": {"cpus": 8, "memory_mb": 24105, "gpus": 2, "state": "idle",
                            "partitions": ["low", "high"], "default_partition": "low"}}
    assert parse_sinfo_nodes("n1|4|7900|(null)|debug*|mixed\n")["n1"]["gpus"] == 0
    assert [parse_gres_gpus(g) for g in ("", "(null)", "gpu:1", "gpu:a100:2,gpu:v100:1",
                                         "gpu:tesla:4(S:0-1)", "shard:8", "gpu")] == [0, 0, 1, 3, 4, 0, 1]
    assert parse_kv_line("A=1 B=x y C=k=v") == {"A": "1", "B": "x y", "C": "k=v"}


# ----------------------------------------------------------------------------- real scheduler
@pytest.mark.slurm
def test_cluster_limits(slurm_cluster):
    info = slurm_cluster
    print(f"\ncluster: {info}")
    text = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True,
                          check=True).stdout
    node = parse_scontrol_nodes(text)[info.node]
    assert (node["cpus"], node["memory_mb"], node["gpus"]) == (info.cpus, info.memory_mb, info.gpus)
    assert node["state"] == "IDLE" or node["state"].startswith(("IDLE", "MIXED", "ALLOCATED"))
    assert "DRAIN" not in node["state"]
    assert set(info.partitions) == {"low", "high"} and info.default_partition == "low"


@pytest.mark.slurm
def test_sbatch_wait(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    t0 = time.monotonic()
    r = subprocess.run(["sbatch", "--wait", "-o", str(out), "--wrap", "echo ok"],
                       capture_output=True, text=True, timeout=60)
    print(f"\nsbatch --wait: {time.monotonic() - t0:.1f}s")
    assert r.returncode == 0, r.stderr
    assert out.read_text().strip() == "ok"


@pytest.mark.slurm
def test_submitit_submit(slurm_cluster, tmp_path):
    info = slurm_cluster
    gpus = {"gpus_per_node": 1} if info.gpus else {}
    ex = _executor(tmp_path, info, **gpus)
    t0 = time.monotonic()
    job = ex.submit(_job_env, ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_GPUS_ON_NODE",
                               "CUDA_VISIBLE_DEVICES"))
    env = job.result()
    print(f"\nsubmit -> result: {time.monotonic() - t0:.1f}s, job env {env}")
    assert env["SLURM_JOB_ID"] == job.job_id and env["SLURM_JOB_PARTITION"] == "low"
    if info.gpus:
        # fake GPUs schedule, but no CUDA device is exposed
        assert env["SLURM_GPUS_ON_NODE"] == "1" and env["CUDA_VISIBLE_DEVICES"] is None


@pytest.mark.slurm
def test_submitit_job_array(slurm_cluster, tmp_path):
    ex = _executor(tmp_path, slurm_cluster, slurm_array_parallelism=3)
    t0 = time.monotonic()
    jobs = ex.map_array(_square, [1, 2, 3])
    results = [j.result() for j in jobs]
    print(f"\nmap_array(3) -> results: {time.monotonic() - t0:.1f}s, ids {[j.job_id for j in jobs]}")
    assert results == [1, 4, 9]
    main_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(main_ids) == 1 and sorted(j.job_id.split("_")[1] for j in jobs) == ["0", "1", "2"]


@pytest.mark.slurm
def test_preemption_requeues_checkpointable(slurm_cluster, tmp_path):
    """A job in `low` holding every CPU is preempted by a 1-CPU job in `high`: it gets USR2
    (preempt_send_user_signal), submitit calls checkpoint() and requeues it, and it reruns with
    SLURM_RESTART_COUNT=1 after the high job."""
    info = slurm_cluster
    markers = tmp_path / "markers"
    markers.mkdir()
    ex = _executor(tmp_path / "low", info, cpus_per_task=info.cpus)
    t0 = time.monotonic()
    job = ex.submit(_Preemptible(), str(markers), 300)
    _wait_for(lambda: (markers / "run-0").exists(), 30, "the low-priority job to start")
    started = time.monotonic()
    high = subprocess.run(["sbatch", "--parsable", "-p", info.high_partition, "-c", "1",
                           "-o", str(tmp_path / "high.out"), "--wrap", "sleep 1"],
                          capture_output=True, text=True, check=True).stdout.strip()
    _wait_for(lambda: (markers / "checkpoint-0").exists(), 30, "checkpoint() after preemption")
    checkpointed = time.monotonic()
    restarts = job.result()
    done = time.monotonic()
    print(f"\nlow job {job.job_id} started {started - t0:.1f}s after submit; high job {high}: "
          f"checkpoint() {checkpointed - started:.1f}s later, rerun result {done - started:.1f}s "
          f"after the high submit")
    assert restarts == 1
    assert sorted(p.name for p in markers.iterdir()) == ["checkpoint-0", "run-0", "run-1"]
    assert "this job is preempted" in job.stderr()


@pytest.mark.slurm
def test_cancelled_job_without_result(slurm_cluster, tmp_path):
    """scancel a running job that wrote no result. With accounting submitit reads CANCELLED and
    result() raises UncompletedJobError; without it the state stays UNKNOWN and done() stays False,
    so result() would wait forever (CLUSTER.md, pitfall 2)."""
    info = slurm_cluster
    marker = tmp_path / "started"
    ex = _executor(tmp_path, info)
    job = ex.submit(_touch_and_sleep, str(marker), 300)
    _wait_for(marker.exists, 30, "the job to start")
    t0 = time.monotonic()
    job.cancel(check=True)
    _wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T"],
                                         capture_output=True, text=True).stdout.strip(),
              20, "the cancelled job to leave squeue")
    gone = time.monotonic() - t0
    if info.accounting:
        _wait_for(lambda: job.done(force_check=True), 20, "submitit to see the job as done")
        seen = time.monotonic() - t0
        assert job.state.startswith("CANCELLED"), job.state
        job._results_timeout_s = 1   # result() waits 15 s for a late result file by default
        with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
            job.result()
        print(f"\naccounting: out of squeue {gone:.1f}s after scancel, done()/state {job.state} "
              f"at {seen:.1f}s, result() raised at {time.monotonic() - t0:.1f}s")
    else:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert not job.done(force_check=True)
            time.sleep(1)
        assert job.state == "UNKNOWN"
        print(f"\nno accounting: out of squeue {gone:.1f}s after scancel; 5 s later submitit still "
              f"says state {job.state}, done() False: result() would wait forever")
