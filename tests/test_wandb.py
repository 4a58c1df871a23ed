"""W&B offline: the run lands in the job dir, holds the logged history, is named / grouped /
typed / tagged from the sweep, and is finished with the right exit code (also on failure)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import histograph.train as train_mod
from histograph.sweeps.names import job_name
from histograph.training import loggers

pytest.importorskip("wandb")

BLOCK = 32768  # W&B's transaction log: LevelDB-style 32 KiB blocks of 7-byte-headed chunks


def read_records(path: Path) -> list:
    """Decode a ``run-<id>.wandb`` file into W&B's protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too small for a header: skip it
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            out.append(record)
            pending = b""
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
    return out


def offline_run(out: Path, wait_s: float = 30.0) -> tuple[Path, list]:
    """The run folder and its records, once the exit record is on disk (W&B's service process
    may still be flushing the log when ``wandb.finish`` returns, on a loaded machine)."""
    import time

    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    deadline = time.time() + wait_s
    records = read_records(files[0])
    while not of_type(records, "exit") and time.time() < deadline:
        time.sleep(0.5)
        records = read_records(files[0])
    return runs[0], records


def of_type(records: list, kind: str) -> list:
    return [r for r in records if r.WhichOneof("record_type") == kind]


SMALL = ["experiment=depth_sweep_smoke", "logger=wandb_offline", "model.layers=2",
         "trainer.max_epochs=2", "readout=histograph"]


def test_offline_run_in_job_dir_holds_history_and_identity(cfg_factory, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(loggers, "is_multirun", lambda: True)  # as inside `train.py -m`
    cfg = cfg_factory(SMALL)
    res = train_mod.run(cfg)
    assert wandb.run is None, "the run must be finished before the next job starts"
    run_dir, records = offline_run(tmp_path / "run")
    assert run_dir.parent == tmp_path / "run" / "wandb"  # inside the job dir

    run = of_type(records, "run")[0].run
    assert run.run_group == "depth_sweep_smoke"  # the sweep name
    assert run.job_type == "histograph"  # the readout
    assert run.display_name == job_name()  # from the overrides
    assert "model.layers=2" in run.display_name
    assert "depth_sweep_smoke" in run.tags

    # every epoch's validation metric is in the logged history, equal to results.json
    logged = [json.loads(item.value_json) for r in of_type(records, "history")
              for item in r.history.item
              if (item.key or "/".join(item.nested_key)) == "val/acc"]
    assert logged == pytest.approx(res["history"]["val"])
    # the summary carries the selected epoch's figures and the collapse verdict with its cause
    summary = {item.key: json.loads(item.value_json) for r in of_type(records, "summary")
               for item in r.summary.update}
    assert summary["selected/test"] == pytest.approx(res["test"])
    assert summary["collapsed"] == res["collapsed"]
    assert "collapse_cause" in summary and summary["collapse_cause"] == res["collapse_cause"]
    exits = of_type(records, "exit")
    assert len(exits) == 1 and exits[0].exit.exit_code == 0


def test_failed_job_finishes_its_run_with_exit_code_1(cfg_factory, tmp_path, monkeypatch):
    import wandb

    from histograph.training.module import LitGraphClassifier

    def explode(self, batch, batch_idx):
        raise RuntimeError("diverged")

    monkeypatch.setattr(LitGraphClassifier, "training_step", explode)
    cfg = cfg_factory(SMALL, output_dir=tmp_path / "failing")
    with pytest.raises(RuntimeError, match="diverged"):
        train_mod.run(cfg)
    assert wandb.run is None
    _, records = offline_run(tmp_path / "failing")
    exits = of_type(records, "exit")
    assert len(exits) == 1 and exits[0].exit.exit_code == 1
