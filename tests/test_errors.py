"""Bad input ends in one clear sentence, never a raw stack trace, and leaves no results behind.

Most cases call :func:`histograph.train.run` in-process and expect a
:class:`~histograph.errors.UserError` (the CLI prints it as ``error: <sentence>`` and exits 2);
unknown config-group names are checked through the Hydra command line itself (in-process
``main()``), and a few real ``python train.py`` subprocesses check what a user sees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from histograph.data.mirror import EMBEDDED_MIRROR, MIRROR_ENV
from histograph.errors import UserError
from histograph.train import run
from histograph.training.guards import NonFiniteLossError
from histograph.training.module import LitGraphClassifier
from tests.conftest import ROOT, guarded_env, needs_mirror

SMALL = ["model.layers=2", "model.hidden=16"]


def _fails(cfg, match: str, out: Path) -> UserError:
    """``run(cfg)`` raises a one-line UserError matching ``match`` and writes no results."""
    with pytest.raises(UserError, match=match) as info:
        run(cfg)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert not (out / "results.json").exists()
    return info.value


# ----------------------------------------------------------------------------- config values
@pytest.mark.parametrize("overrides, match", [
    (["model.layers=0"], r"model\.layers must be an integer >= 1, got 0"),
    (["model.layers=-3"], r"model\.layers must be an integer >= 1, got -3"),
    (["model.layers=abc"], r"model\.layers must be an integer >= 1, got 'abc'"),
    (["readout.heads=3"], r"readout\.heads=3 must be a positive divisor of model\.hidden=16"),
    (["fold=10"], r"fold=10 is outside 0\.\.9"),
    (["fold=-1"], r"fold must be an integer >= 0"),
    (["protocol.name=kfold"], r"Unknown protocol 'kfold'; valid names: .*holdout"),
    (["optimizer.lr=abc"], r"optimizer\.lr must be a positive number, got 'abc'"),
    (["protocol.val_fraction=0.001"], r"protocol\.val_fraction=0\.001 cannot hold out a "
                                      r"stratified validation set"),
    (["protocol.folds=200"], r"fewer than the 200 folds"),
    (["seed=4294967296"], r"seed must be an integer >= 0 and <= 4294967295"),
    (["data.eval_batch_size=-1"], r"data\.eval_batch_size must be an integer >= 1, got -1"),
    (["dataset=tu"], r"dataset=tu needs the dataset's name: add dataset\.name="),
    (["ablation=softmax", "readout=mean"], r"ablation=softmax sets HISTOGRAPH's switches and "
                                           r"readout=mean has none"),
    (["readout=mean", "+readout.heads_typo=3"], r"readout\.heads_typo is not an option of this "
                                                r"readout; remove it"),
], ids=["layers0", "layers-neg", "layers-abc", "heads", "fold-high", "fold-neg", "protocol",
        "lr-type", "val-fraction-empty", "too-many-folds", "seed-2**32", "eval-batch-neg",
        "tu-no-name", "ablation-mean", "unknown-option"])
def test_bad_config_value(overrides, match, cfg_factory, tmp_path):
    _fails(cfg_factory(SMALL + overrides), match, tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_without_gpu(cfg_factory, tmp_path):
    _fails(cfg_factory(SMALL + ["trainer.accelerator=gpu"]),
           r"trainer\.accelerator=gpu but no GPU is available here; use "
           r"trainer\.accelerator=cpu", tmp_path / "run")


def test_unwritable_output_dir(cfg_factory, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a folder below a file cannot be made, even by root
    out = blocker / "run"
    err = _fails(cfg_factory(SMALL, output_dir=out), r"Cannot write to the output folder", out)
    assert "hydra.run.dir" in str(err)


# ----------------------------------------------------------------------------- Hydra group names
@pytest.mark.parametrize("override, group", [
    ("dataset=mutagg", "dataset"), ("model=gim", "model"), ("readout=histogram", "readout"),
    ("protocol=kfold", "protocol"), ("hydra/launcher=slurmm", "hydra/launcher"),
    ("mode=finetune", "mode"), ("task=edge", "task")])
def test_unknown_group_name_lists_valid_names(override, group, monkeypatch, capsys, tmp_path):
    from histograph.cli import main

    monkeypatch.setattr(sys, "argv", ["train.py", override, f"hydra.run.dir={tmp_path}/run"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert f"Could not find '{group}/{override.split('=')[1]}'" in err
    assert f"Available options in '{group}'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()


# ----------------------------------------------------------------------------- data
def _copy_mutag_as(data_dir: Path, name: str) -> Path:
    """MUTAG's raw files under another name (so that no mirror 'repairs' them when staged)."""
    raw = data_dir / "TUDataset" / name / "raw"
    raw.mkdir(parents=True)
    for src in (EMBEDDED_MIRROR / "TUDataset" / "MUTAG" / "raw").glob("MUTAG_*.txt"):
        shutil.copy(src, raw / src.name.replace("MUTAG", name))
    return raw


def _drop_last_lines(path: Path, n: int = 3) -> None:
    path.write_text("".join(path.read_text().splitlines(True)[:-n]))


def _non_numeric(path: Path) -> None:
    lines = path.read_text().splitlines(True)
    lines[5] = "1, x7\n"
    path.write_text("".join(lines))


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("suffix, damage", [
    ("graph_labels", _drop_last_lines), ("node_labels", _drop_last_lines),
    ("graph_indicator", _drop_last_lines), ("A", _non_numeric), ("graph_labels", _non_numeric),
    ("A", _cut_in_half)],
    ids=["labels-short", "node-labels-short", "indicator-short", "A-non-numeric",
         "labels-non-numeric", "A-truncated"])
def test_corrupt_tu_raw_file(suffix, damage, tmp_path):
    from histograph.data.tu import load_tu

    raw = _copy_mutag_as(tmp_path / "data", "BADMUT")
    damage(raw / f"BADMUT_{suffix}.txt")
    with pytest.raises(UserError, match=r"raw files of TU dataset 'BADMUT' .*(truncated|corrupt)"
                                        r".*delete .*BADMUT and copy them again"):
        load_tu("BADMUT", tmp_path / "data", data_mirror=None)


def test_empty_tu_dataset(tmp_path):
    from histograph.data.tu import load_tu

    raw = _copy_mutag_as(tmp_path / "data", "EMPTYMUT")
    for f in raw.iterdir():
        f.write_text("")
    with pytest.raises(UserError, match="EMPTYMUT"):
        load_tu("EMPTYMUT", tmp_path / "data", data_mirror=None)


def test_tu_name_without_data_offline(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    cfg = cfg_factory(SMALL + ["dataset=tu", "dataset.name=NOSUCHSET", "data.offline=true"])
    err = _fails(cfg, r"No raw files for TU dataset 'NOSUCHSET'", tmp_path / "run")
    assert "paths.data_mirror" in str(err)


@pytest.mark.network_attempt_expected
def test_tu_name_without_data_and_no_network(cfg_factory, tmp_path, monkeypatch):
    """Downloads allowed, but the network guard (like a cluster node) blocks them."""
    from tests import conftest

    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.delenv("HISTOGRAPH_OFFLINE", raising=False)
    cfg = cfg_factory(SMALL + ["dataset=tu", "dataset.name=NOSUCHSET", "data.offline=false"])
    _fails(cfg, r"TU dataset 'NOSUCHSET' is not in .* and downloading it failed",
           tmp_path / "run")
    assert conftest.NETWORK_ATTEMPTS, "the download should have been tried (and blocked)"


@needs_mirror("ogb/ogbg_molbace")
def test_ogb_folder_missing_a_split_file(tmp_path, monkeypatch):
    from tests.conftest import MIRROR

    from histograph.data.ogb import load_ogb

    monkeypatch.delenv(MIRROR_ENV, raising=False)  # else staging would restore the file
    data = tmp_path / "data"
    shutil.copytree(Path(MIRROR) / "ogb" / "ogbg_molbace", data / "ogb" / "ogbg_molbace")
    (data / "ogb" / "ogbg_molbace" / "split" / "scaffold" / "test.csv.gz").unlink()
    with pytest.raises(UserError, match=r"split files of 'ogbg-molbace' are missing "
                                        r"\(.*test\.csv\.gz\)"):
        load_ogb("ogbg-molbace", data, data_mirror=None, offline=True)


# ----------------------------------------------------------------------------- checkpoints
def test_resume_refuses_a_checkpoint_of_another_model(cfg_factory, tmp_path):
    out = tmp_path / "run"
    run(cfg_factory(SMALL + ["trainer.max_epochs=1"], output_dir=out))
    before = (out / "results.json").read_text()
    with pytest.raises(UserError, match=r"last\.ckpt belongs to a different run: it was written "
                                        r"with model\.layers=2 \(this run: 3\).*resume=false"):
        run(cfg_factory(["model.layers=3", "model.hidden=16"], output_dir=out))
    assert (out / "results.json").read_text() == before  # the earlier run's results untouched


def test_resume_refuses_mismatched_weights(cfg_factory, tmp_path):
    """A checkpoint without the stored settings (older code) is still checked by its shapes."""
    from histograph.checkpoints import RUN_CONFIG_KEY

    out = tmp_path / "run"
    run(cfg_factory(SMALL + ["trainer.max_epochs=1"], output_dir=out))
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt[RUN_CONFIG_KEY]
    torch.save(ckpt, last)
    with pytest.raises(UserError, match=r"last\.ckpt was written by a different model "
                                        r"\(.*has shape \[16"):
        run(cfg_factory(["model.layers=2", "model.hidden=32"], output_dir=out))


class _Payload:
    """Unpickling this runs ``touch <marker>``: what ``weights_only=True`` must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_unsafe_checkpoint_is_refused_not_executed(cfg_factory, tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "pwned"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "x": _Payload(marker)}, out / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match=r"cannot be loaded safely"):
        run(cfg_factory(SMALL, output_dir=out))
    assert not marker.exists()


# ----------------------------------------------------------------------------- frozen mode
@pytest.fixture
def source_ckpt(cfg_factory, tmp_path) -> Path:
    run(cfg_factory(SMALL + ["readout=mean", "trainer.max_epochs=1"], output_dir=tmp_path / "src"))
    return tmp_path / "src" / "checkpoints" / "last.ckpt"


def test_frozen_without_checkpoint(cfg_factory, tmp_path):
    _fails(cfg_factory(SMALL + ["mode=frozen"]), r"mode=frozen needs backbone_ckpt=",
           tmp_path / "run")


def test_frozen_with_missing_checkpoint(cfg_factory, tmp_path):
    _fails(cfg_factory(SMALL + ["mode=frozen", f"backbone_ckpt={tmp_path}/nope.ckpt"]),
           r"does not exist", tmp_path / "run")


def test_frozen_with_checkpoint_of_another_dataset(source_ckpt, cfg_factory, tmp_path):
    ckpt = torch.load(source_ckpt, weights_only=True)
    ckpt["histograph_meta"]["dataset"] = "PTC_MR"  # as if trained on another dataset
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    _fails(cfg_factory(SMALL + ["mode=frozen", f"backbone_ckpt={other}"]),
           r"backbone_ckpt was trained with dataset='PTC_MR' \(this run: 'MUTAG'\)",
           tmp_path / "run")


def test_frozen_with_a_file_that_is_not_a_histograph_checkpoint(cfg_factory, tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, foreign)  # e.g. another project's
    _fails(cfg_factory(SMALL + ["mode=frozen", f"backbone_ckpt={foreign}"]),
           r"is not a histograph checkpoint", tmp_path / "run")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(foreign.read_bytes()[:100])
    _fails(cfg_factory(SMALL + ["mode=frozen", f"backbone_ckpt={truncated}"]),
           r"cannot be loaded safely", tmp_path / "run")


# ----------------------------------------------------------------------------- NaN / inf
def _poison_loss(monkeypatch, after: int, kind: str) -> None:
    """Make the training loss (or only its gradient) non-finite from training call ``after``."""
    original = LitGraphClassifier.loss
    calls = {"n": 0}

    def loss(self, logits, y):
        value = original(self, logits, y)
        if self.training:
            calls["n"] += 1
            if calls["n"] > after:
                if kind == "loss":
                    return value * float("nan")
                # finite value, NaN gradient: d sqrt(z)/dz = inf at z = 0, times dz/dlogits = 0
                return value + torch.sqrt((logits * 0).sum())
        return value

    monkeypatch.setattr(LitGraphClassifier, "loss", loss)


@pytest.mark.parametrize("kind, what", [("loss", "the training loss became NaN"),
                                        ("grad", "the gradients became NaN")])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(kind, what, cfg_factory,
                                                              tmp_path, monkeypatch):
    # MUTAG holdout fold 0: 152 training graphs, batch 32 -> 5 steps per epoch; step 7 is
    # epoch 1, batch 2
    _poison_loss(monkeypatch, after=7, kind=kind)
    out = tmp_path / "run"
    err = _fails(cfg_factory(SMALL + ["trainer.max_epochs=3"], output_dir=out),
                 rf"Training stopped at epoch 1, batch 2 \(global step 7\): {what}", out)
    assert isinstance(err, NonFiniteLossError)
    last = out / "checkpoints" / "last.ckpt"
    assert str(last) in str(err)
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 5  # the end of epoch 0, untouched
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())


# ----------------------------------------------------------------------------- the command line
def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    log = tmp_path / "netlog"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/cli",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"],
        env=guarded_env(log), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert log.read_text() == "", f"the subprocess tried to reach the network: {log.read_text()}"
    return proc


def test_cli_user_error_is_one_line_and_exit_2(tmp_path):
    """A UserError raised deep inside Lightning's fit loop still ends as one line + exit 2.

    (Config-value errors such as ``model.layers=abc`` take the same path; they are checked
    in-process above, which saves an interpreter start per case.)
    """
    # a learning rate that blows the weights up in the first step: NaN from the second one
    proc = _cli(["optimizer.lr=1e10", "model.layers=2", "model.hidden=8",
                 "trainer.max_epochs=2"], tmp_path)
    message = (r"error: Training stopped at epoch 0, batch \d+ \(global step \d+\): the "
               r"training loss became (NaN|infinite); .*Lower optimizer\.lr")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.match(message, errors[0]), proc.stderr[-2000:]
    assert not (tmp_path / "cli" / "results.json").exists()


def test_cli_unknown_name_has_no_traceback(tmp_path):
    proc = _cli(["readout=histogram"], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'readout/histogram'" in proc.stderr
    assert "histograph" in proc.stderr  # the valid names are listed
    assert "Traceback" not in proc.stderr
