"""Runs that share a machine, a folder, a signal or a changed config: nothing is lost or mixed.

The concurrent cases run two real processes, the signal cases send real signals to a real
``python train.py`` (MUTAG, a 1-layer 8-wide model: each epoch takes a fraction of a second).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from histograph.errors import EXIT_CTRL_C, EXIT_INTERRUPTED, UserError
from histograph.train import run
from tests.conftest import ROOT, guarded_env

TINY = ["model.layers=1", "model.hidden=8", "readout=mean", "logger=csv",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "threads=1"]


def _start(args: list[str], tmp_path: Path, name: str) -> subprocess.Popen:
    env = guarded_env(tmp_path / f"{name}.net")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {path.name} appeared: {err[-2000:]}")
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.1)


# ---------------------------------------------------------------------- run folders
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, data_dir):
    common = [*TINY, "trainer.max_epochs=2", f"paths.log_dir={tmp_path / 'logs'}",
              f"paths.data_dir={data_dir}"]
    procs = [_start([*common, f"seed={s}"], tmp_path, f"s{s}") for s in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    results = sorted((tmp_path / "logs" / "train" / "runs").glob("*/results.json"))
    assert len(results) == 2, results
    assert sorted(json.loads(r.read_text())["seed"] for r in results) == [0, 1]


def test_a_second_process_on_a_running_folder_is_refused(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=400", f"hydra.run.dir={run_dir}",
            f"paths.data_dir={data_dir}"]
    first = _start(args, tmp_path, "first")
    try:
        _wait_for(run_dir / "checkpoints" / "last.ckpt", first)
        second = _start(args, tmp_path, "second")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-2000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: The run folder") and f"pid {first.pid}" in line
        assert "Traceback" not in err
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ---------------------------------------------------------------------- signals
# USR1 takes the same handler as USR2 (submitit's signal); it runs with `make test-all`.
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1,
                                                               marks=pytest.mark.slow),
                                 signal.SIGUSR2], ids=["TERM", "USR1", "USR2"])
def test_a_signal_stops_the_run_resumably_with_a_nonzero_exit(sig, tmp_path, data_dir):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=40", f"hydra.run.dir={run_dir}",
            f"paths.data_dir={data_dir}"]
    proc = _start(args, tmp_path, "run")
    _wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert f"interrupted: stopped by {sig.name}" in err and "Traceback" not in err
    marker = json.loads((run_dir / "interrupted.json").read_text())
    assert marker["signal"] == sig.name and marker["completed_epochs"] >= 1
    assert marker["resume_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert not (run_dir / "results.json").exists()
    if sig != signal.SIGTERM:
        return
    # the same command resumes and ends exactly as an uninterrupted run
    again = _start(args, tmp_path, "again")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    straight = _start([*args[:-2], f"hydra.run.dir={tmp_path / 'straight'}",
                       f"paths.data_dir={data_dir}"], tmp_path, "straight")
    straight.communicate(timeout=300)
    resumed = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((tmp_path / "straight" / "results.json").read_text())
    for key in ("history", "selected_epoch", "val", "test", "epochs"):
        assert resumed[key] == reference[key], key
    assert not (run_dir / "interrupted.json").exists()  # a finished run has no marker


def test_ctrl_c_during_start_up_is_one_line(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    proc = _start([*TINY, "trainer.max_epochs=5", f"hydra.run.dir={run_dir}",
                   f"paths.data_dir={data_dir}"], tmp_path, "run")
    _wait_for(run_dir / ".hydra" / "config.yaml", proc)  # inside the job, before training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (EXIT_CTRL_C, EXIT_INTERRUPTED), err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    assert "Traceback" not in err


def test_an_interrupted_sweep_writes_its_summary_and_exits_75(tmp_path, data_dir):
    log_dir = tmp_path / "logs"
    args = ["-m", "experiment=depth_sweep_smoke", "model.layers=1", "readout=mean,sum",
            "trainer.max_epochs=40", "hydra.callbacks.report.plots=false",
            f"paths.log_dir={log_dir}",
            f"paths.data_dir={data_dir}"]
    sweep = log_dir / "sweeps" / "depth_sweep_smoke"
    first_job = sweep / ("experiment=depth_sweep_smoke,model.layers=1,readout=mean,"
                         "trainer.max_epochs=40")
    proc = _start(args, tmp_path, "sweep")
    _wait_for(first_job / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == EXIT_INTERRUPTED, (out + err)[-3000:]
    assert (first_job / "interrupted.json").exists() and not (first_job / "failed.json").exists()
    jobs = (sweep / "jobs.csv").read_text()
    assert "interrupted" in jobs and "missing" in jobs  # the second job was not started
    again = _start(args, tmp_path, "again")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, (out + err)[-3000:]
    assert "Resuming" in out + err and len(list(sweep.glob("*/done.json"))) == 2


def test_kill_of_a_joblib_sweep_reaches_its_workers_and_the_summary_is_written(tmp_path,
                                                                              data_dir):
    """`kill <pid>` (SIGTERM to the parent only) of a joblib sweep: without the forwarding
    callback the parent died at once, its workers trained on as orphans and no summary came."""
    import psutil

    log_dir = tmp_path / "logs"
    args = ["-m", *TINY, "model.layers=1,2,3", "trainer.max_epochs=400",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "hydra.callbacks.report.plots=false", "sweep_name=stopped",
            f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}"]
    sweep = log_dir / "sweeps" / "stopped"
    proc = _start(args, tmp_path, "sweep")
    try:
        deadline = time.time() + 240
        while not list(sweep.glob("*/checkpoints/last.ckpt")):  # a job is training
            assert proc.poll() is None and time.time() < deadline, "no job started training"
            time.sleep(0.2)
        workers = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGTERM)  # the parent alone, as `kill <pid>` does
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, (out + err)[-3000:]
    assert "TerminatedWorkerError" not in out + err
    assert (sweep / "summary.md").exists()
    interrupted = list(sweep.glob("*/interrupted.json"))
    assert interrupted and not list(sweep.glob("*/failed.json"))
    assert len(list(sweep.glob("*/results.json"))) < 3  # it stopped, it did not run to the end
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [w.cmdline() for w in alive]


# ---------------------------------------------------------------------- resume settings
def test_resume_refuses_changed_settings_unless_forced(cfg_factory, tmp_path):
    out = tmp_path / "run"
    first = run(cfg_factory([*TINY, "trainer.max_epochs=2"], output_dir=out))
    (out / "results.json").unlink()
    changed = [*TINY, "trainer.max_epochs=4", "trainer.gradient_clip_val=1.0"]
    with pytest.raises(UserError, match=r"trainer\.gradient_clip_val=None \(this run: 1\.0\)"):
        run(cfg_factory(changed, output_dir=out))
    res = run(cfg_factory([*changed, "resume=force"], output_dir=out))
    assert res["epochs"] == 4 and res["history"]["val"][:2] == first["history"]["val"]
    (entry,) = res["config_changes"]
    assert entry["from_epoch"] == 2
    assert entry["changes"]["trainer.max_epochs"] == [2, 4]
    assert entry["changes"]["trainer.gradient_clip_val"] == [None, 1.0]
    # the optimizer and scheduler come back from the checkpoint: a forced lr change would be
    # recorded but not used, so it is refused
    with pytest.raises(UserError, match="cannot continue with other optimizer.lr"):
        run(cfg_factory([*TINY, "trainer.max_epochs=6", "optimizer.lr=0.5", "resume=force"],
                        output_dir=out))
    with pytest.raises(UserError, match="resume must be true, false or force"):
        run(cfg_factory([*TINY, "resume=maybe"], output_dir=tmp_path / "other"))


def test_forced_resume_extends_a_finished_sweep_job_exactly(cfg_factory, tmp_path):
    """More epochs for a finished sweep or nested job: ``resume=force`` continues it from its
    last.ckpt (no retraining from scratch) and ends exactly where a fresh run of that length
    ends (the step schedule does not depend on max_epochs; RNG states are in the checkpoint)."""
    from histograph.sweeps import jobs

    job = tmp_path / "job"
    jobs.run_job(cfg_factory([*TINY, "trainer.max_epochs=2"], output_dir=job), run, [])
    longer = [*TINY, "trainer.max_epochs=4"]
    out = jobs.run_job(cfg_factory([*longer, "resume=force"], output_dir=job), run, longer)
    fresh = run(cfg_factory(longer, output_dir=tmp_path / "fresh"))
    assert out.status == "done"
    same = ("selected_epoch", "epochs", "val", "test", "history", "layer_weights")
    assert {k: out.results[k] for k in same} == {k: fresh[k] for k in same}
    assert out.results["config_changes"][0]["changes"]["trainer.max_epochs"] == [2, 4]
    (old,) = (job / "superseded").glob("*/results.json")  # the 2-epoch result, kept aside
    assert json.loads(old.read_text())["epochs"] == 2
    assert json.loads((job / "done.json").read_text())["epochs"] == 4
    again = jobs.run_job(cfg_factory([*longer, "resume=force"], output_dir=job), run, longer)
    assert again.status == "skipped"
    # a forced resume cannot shorten a run: one sentence, nothing trained
    with pytest.raises(UserError, match="already trained 4 epochs, more than "
                                        "trainer.max_epochs=3"):
        run(cfg_factory([*TINY, "trainer.max_epochs=3", "resume=force"],
                        output_dir=tmp_path / "fresh"))


def test_forced_resume_in_a_copied_run_folder_keeps_the_best_checkpoint(cfg_factory, tmp_path):
    """A run folder copied elsewhere and extended (``resume=force``) restores its checkpoint
    callbacks' best score: Lightning alone drops it when ``dirpath`` changed, and the first epoch
    after the resume then became "best" whatever its validation; the tested weights were not the
    selected epoch's. The continued copy ends where a fresh run of the new length ends."""
    import shutil

    from histograph.checkpoints import check_selected_checkpoint
    from histograph.training.callbacks import FolderCheckpoint

    old, new = tmp_path / "old", tmp_path / "new"
    run(cfg_factory([*TINY, "trainer.max_epochs=2"], output_dir=old))
    shutil.copytree(old, new)
    longer = [*TINY, "trainer.max_epochs=4"]
    # what Lightning restores from the copied folder's last.ckpt
    state = next(v for k, v in torch.load(new / "checkpoints" / "last.ckpt",
                                          weights_only=True)["callbacks"].items()
                 if k.startswith("ModelCheckpoint") and "val/" in k)
    best = FolderCheckpoint(dirpath=str(new / "checkpoints"), monitor="val/acc", mode="max")
    best.load_state_dict(state)
    assert float(best.best_model_score) == float(state["best_model_score"])
    assert Path(best.best_model_path).parent == new / "checkpoints"
    assert list(best.best_k_models) == [best.best_model_path]
    res = run(cfg_factory([*longer, "resume=force"], output_dir=new))
    fresh = run(cfg_factory(longer, output_dir=tmp_path / "fresh"))
    same = ("selected_epoch", "epochs", "val", "test", "history")
    assert {k: res[k] for k in same} == {k: fresh[k] for k in same}
    assert Path(res["checkpoint"]).parent == new / "checkpoints"
    # and a best checkpoint of another epoch than the selected one is never tested
    with pytest.raises(UserError, match="holds epoch 3, but validation selected epoch 1"):
        check_selected_checkpoint(tmp_path / "best-epoch=003.ckpt", 1)
    check_selected_checkpoint(tmp_path / "best-epoch=003.ckpt", 3)


def test_a_copied_finished_job_reports_the_checkpoint_in_its_new_folder(cfg_factory, tmp_path):
    """results.json records the absolute checkpoint path the run wrote; a sweep folder copied
    from a cluster keeps it. The skipped job (and reproduce_frozen.sh's backbone lookup) must
    point at the copy's weights, not at a path that no longer exists."""
    import shutil

    from histograph.sweeps import jobs

    old, new = tmp_path / "cluster" / "job", tmp_path / "laptop" / "job"
    first = jobs.run_job(cfg_factory([*TINY, "trainer.max_epochs=1"], output_dir=old), run, [])
    shutil.copytree(old, new)
    recorded = json.loads((new / "results.json").read_text())["checkpoint"]
    # the original still there: the copy's own weights all the same (the original may be
    # continued with resume=force and its best checkpoint replaced)
    assert Path(jobs.read_results(new)["checkpoint"]) == (new / "checkpoints" /
                                                          Path(recorded).name)
    shutil.rmtree(tmp_path / "cluster")
    assert recorded == first.results["checkpoint"] and not Path(recorded).exists()
    again = jobs.run_job(cfg_factory([*TINY, "trainer.max_epochs=1"], output_dir=new), run, [])
    assert again.status == "skipped"
    assert Path(again.results["checkpoint"]) == (new / "checkpoints" / Path(recorded).name)
    assert "state_dict" in torch.load(again.results["checkpoint"], weights_only=True)


# ---------------------------------------------------------------------- epochs and replicates
def test_epochs_count_training_epochs_not_validation_rounds(cfg_factory):
    res = run(cfg_factory([*TINY, "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2"]))
    assert res["epochs"] == 4 and res["history"]["epoch"] == [1, 3]
    assert res["selected_epoch"] in (1, 3)


def test_ogb_folds_would_be_identical_replicates_and_are_refused(cfg_factory):
    with pytest.raises(UserError, match="protocol=ogb has one official split"):
        run(cfg_factory(["dataset=ogbg_molbace", "fold=1", *TINY]))


def test_frozen_disk_cache_miss_and_hit_train_identically(cfg_factory, tmp_path):
    run(cfg_factory([*TINY, "trainer.max_epochs=1"], output_dir=tmp_path / "src"))
    ckpt = tmp_path / "src" / "checkpoints" / "last.ckpt"
    frozen = ["mode=frozen", f"backbone_ckpt={ckpt}", "task.cache=disk",
              "readout=mean", "model.layers=1", "model.hidden=8", "trainer.max_epochs=2"]
    miss = run(cfg_factory(frozen, output_dir=tmp_path / "miss"))
    hit = run(cfg_factory(frozen, output_dir=tmp_path / "hit"))
    assert miss["history"] == hit["history"] and miss["test"] == hit["test"]


def test_nested_cv_whose_jobs_all_fail_exits_nonzero(tmp_path, data_dir):
    env = guarded_env(tmp_path / "net.log")
    proc = subprocess.run(
        [sys.executable, "-m", "histograph.nested", "model.hidden=8", "model.layers=1",
         "protocol.folds=2", "protocol.retrain=1", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", 'protocol.grid=["readout.heads=3"]',
         f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'nested'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "INCOMPLETE" in (tmp_path / "nested" / "summary.md").read_text()
    assert "the nested CV did not finish" in proc.stderr
