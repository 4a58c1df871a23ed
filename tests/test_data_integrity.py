"""Data the numbers came from: raw-file fingerprints, processed data rebuilt when the raw files
change, the mirror's content rules, one lock per dataset for concurrent jobs, missing and corrupt
files in one clear line, and the data record of both DataModules."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from histograph.data import fingerprint as fp
from histograph.data.mirror import EMBEDDED_MIRROR, MIRROR_ENV, stage
from histograph.data.tu import load_tu
from histograph.errors import UserError
from histograph.training import frozen
from tests.conftest import guarded_env, needs_mirror
from tests.stubs import SlowBackbone, concurrent_job, source_checkpoint
from tests.test_errors import _copy_mutag_as

MUTAG_RAW = EMBEDDED_MIRROR / "TUDataset" / "MUTAG" / "raw"


@pytest.fixture
def no_mirror(monkeypatch):
    """Only the embedded mirror (MUTAG): a copy under another name is never 'repaired'."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def warnings_(caplog):
    caplog.set_level(logging.INFO, logger="histograph")
    return caplog


def _edit(path: Path, text: str) -> None:
    """Rewrite ``path``; its mtime moves on even where timestamps are coarse (a real edit comes
    later than one tick after the file was last read)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def _swap_labels(path: Path) -> None:
    """Swap the first '1' and the first '-1' line: the same size, other labels."""
    lines = path.read_text().splitlines(True)
    i, j = lines.index("1\n"), lines.index("-1\n")
    lines[i], lines[j] = lines[j], lines[i]
    _edit(path, "".join(lines))


def _flip_one_label(path: Path) -> None:
    """Turn the first '-1' into '1': one byte shorter."""
    lines = path.read_text().splitlines(True)
    lines[lines.index("-1\n")] = "1\n"
    _edit(path, "".join(lines))


def _messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 1. fingerprints
@pytest.mark.parametrize("edit", [_swap_labels, _flip_one_label], ids=["same-size", "other-size"])
def test_edited_raw_file_rebuilds_the_processed_data(edit, tmp_path, no_mirror, warnings_):
    data_dir = tmp_path / "data"
    raw = _copy_mutag_as(data_dir, "EDITMUT")
    first = load_tu("EDITMUT", data_dir)
    assert len(first.fingerprint) == 64
    record = json.loads((raw.parent / "processed" / fp.RECORD).read_text())
    assert record["fingerprint"] == first.fingerprint
    warnings_.clear()
    edit(raw / "EDITMUT_graph_labels.txt")
    second = load_tu("EDITMUT", data_dir)
    assert second.fingerprint != first.fingerprint
    assert (second.labels != first.labels).any()  # the new labels, not the old processed ones
    assert (f"Rebuilding the processed data of TU dataset 'EDITMUT' in "
            f"{raw.parent / 'processed'}: the raw files changed since it was built "
            f"(fingerprint {first.fingerprint[:12]} -> {second.fingerprint[:12]})"
            in _messages(warnings_))
    warnings_.clear()
    third = load_tu("EDITMUT", data_dir)  # unchanged since: reused, nothing said
    assert third.fingerprint == second.fingerprint and not warnings_.records


def test_unchanged_files_are_not_read_again(tmp_path, no_mirror, monkeypatch, warnings_):
    data_dir = tmp_path / "data"
    raw = _copy_mutag_as(data_dir, "HASHMUT")
    old = time.time_ns() - 60 * 10**9  # settled files (a minute old) are cached by size + mtime
    for f in raw.iterdir():
        os.utime(f, ns=(old, old))
    first = load_tu("HASHMUT", data_dir)
    hashed: list[str] = []
    real = fp.file_sha256
    monkeypatch.setattr(fp, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert load_tu("HASHMUT", data_dir).fingerprint == first.fingerprint
    assert hashed == []  # the second load stats the files, reads none of them
    touched = raw / "HASHMUT_A.txt"
    os.utime(touched, ns=(old, old + 10**9))  # another mtime, the same content
    warnings_.clear()
    assert load_tu("HASHMUT", data_dir).fingerprint == first.fingerprint
    assert hashed == ["HASHMUT_A.txt"]  # read again because its mtime changed; no rebuild
    assert "Rebuilding" not in _messages(warnings_)


def test_processed_folder_without_a_record_is_rebuilt(tmp_path, no_mirror, warnings_):
    """An interrupted build (or one made before fingerprints) is never read as complete."""
    data_dir = tmp_path / "data"
    raw = _copy_mutag_as(data_dir, "HALFMUT")
    first = load_tu("HALFMUT", data_dir)
    processed = raw.parent / "processed"
    (processed / fp.RECORD).unlink()
    (processed / "data.pt").write_bytes(b"half a file")  # as a killed job leaves it
    again = load_tu("HALFMUT", data_dir)
    assert "it has no fingerprint.json (interrupted" in _messages(warnings_)
    assert torch.equal(again.dataset._data.x, first.dataset._data.x)
    assert (processed / fp.RECORD).exists()


def test_corrupt_processed_file_is_rebuilt_from_the_raw_files(tmp_path, no_mirror, warnings_):
    data_dir = tmp_path / "data"
    raw = _copy_mutag_as(data_dir, "ROTMUT")
    first = load_tu("ROTMUT", data_dir)
    data_pt = raw.parent / "processed" / "data.pt"
    data_pt.write_bytes(data_pt.read_bytes()[:1000])  # the record still matches the raw files
    warnings_.clear()
    again = load_tu("ROTMUT", data_dir)
    text = _messages(warnings_)
    assert (f"The processed cache {raw.parent / 'processed'} of TU dataset 'ROTMUT' could not be "
            f"read (RuntimeError); it is rebuilt from the raw files." in text)
    assert "weights_only" not in text and "delete" not in text
    assert torch.equal(again.dataset._data.edge_index, first.dataset._data.edge_index)
    assert again.fingerprint == first.fingerprint


def test_split_cache_refuses_folds_of_edited_labels(tmp_path, no_mirror):
    from histograph.data.datamodule import GraphDataModule

    data_dir = tmp_path / "data"
    raw = _copy_mutag_as(data_dir, "FOLDMUT")
    module = functools.partial(GraphDataModule, functools.partial(load_tu, "FOLDMUT"), data_dir)
    module().setup()
    _swap_labels(raw / "FOLDMUT_graph_labels.txt")
    with pytest.raises(UserError, match=r"split cache .*FOLDMUT_k10_seed0_val0\.1\.json does not "
                                        r"match this dataset \(labels=.*delete it to recompute"):
        module().setup()


# ----------------------------------------------------------------------------- 2. the mirror
@pytest.fixture
def mirror(tmp_path) -> Path:
    root = tmp_path / "mirror"
    shutil.copytree(MUTAG_RAW, root / "TUDataset" / "MIRMUT" / "raw")
    return root


def _stage(mirror: Path, data_dir: Path) -> Path:
    assert stage("TUDataset/MIRMUT", data_dir, mirror) == mirror
    return data_dir / "TUDataset" / "MIRMUT" / "raw"


def test_mirror_edit_of_the_same_size_is_copied_again(mirror, tmp_path, warnings_):
    data_dir = tmp_path / "data"
    local = _stage(mirror, data_dir) / "README.txt"
    theirs = mirror / "TUDataset" / "MIRMUT" / "raw" / "README.txt"
    text = theirs.read_text()
    _edit(theirs, text.replace("a", "b", 1))  # same size: the old rule (sizes) ignored it
    warnings_.clear()
    _stage(mirror, data_dir)
    assert local.read_text() == theirs.read_text() != text
    assert (f"Copied {theirs} to {local} again: the mirror's file changed since it was copied, "
            f"and the mirror wins over an unedited copy." in _messages(warnings_))


@pytest.mark.parametrize("mirror_too", [False, True], ids=["local-edit", "both-edited"])
def test_local_edit_is_kept_with_a_warning(mirror_too, mirror, tmp_path, warnings_):
    data_dir = tmp_path / "data"
    local = _stage(mirror, data_dir) / "README.txt"
    theirs = mirror / "TUDataset" / "MIRMUT" / "raw" / "README.txt"
    _edit(local, "my own version, longer or shorter than the mirror's\n")
    if mirror_too:
        _edit(theirs, theirs.read_text() + "a newer release\n")
    mirror_text = theirs.read_text()
    warnings_.clear()
    _stage(mirror, data_dir)
    _stage(mirror, data_dir)  # said on every load, never overwritten
    assert local.read_text().startswith("my own version")
    assert theirs.read_text() == mirror_text  # the mirror is never written to
    both = " (and the mirror's file changed too)" if mirror_too else ""
    expected = (f"Keeping {local}: it was edited here since it was copied from {theirs}{both}; "
                f"the mirror's version is not used (delete {local} to copy it again).")
    assert _messages(warnings_).count(expected) == 2


def test_local_file_without_a_record_is_kept_or_adopted(mirror, tmp_path, warnings_):
    """A data folder filled before manifests: equal files are adopted, others kept loudly."""
    data_dir = tmp_path / "data"
    raw = data_dir / "TUDataset" / "MIRMUT" / "raw"
    shutil.copytree(mirror / "TUDataset" / "MIRMUT" / "raw", raw)
    (raw / "README.txt").write_text("an older copy\n")
    (raw / "MUTAG_A.txt").unlink()
    _stage(mirror, data_dir)
    manifest = fp.Manifest(raw.parent)
    assert set(manifest.staged) == {f"raw/{p.name}" for p in raw.iterdir()} - {"raw/README.txt"}
    assert (raw / "README.txt").read_text() == "an older copy\n"
    assert (raw / "MUTAG_A.txt").read_bytes() == (MUTAG_RAW / "MUTAG_A.txt").read_bytes()
    theirs = mirror / "TUDataset" / "MIRMUT" / "raw" / "README.txt"
    assert (f"Keeping {raw / 'README.txt'}: it differs from {theirs} and has no record of being "
            f"copied from it; the mirror's version is not used (delete {raw / 'README.txt'} to "
            f"copy it again)." in _messages(warnings_))
    staged = manifest.staged["raw/MUTAG_A.txt"]["sha256"]
    assert staged == fp.file_sha256(MUTAG_RAW / "MUTAG_A.txt")


# ----------------------------------------------------------------------------- 4. missing files
def test_missing_node_labels_of_a_labelled_set_is_an_error(tmp_path, no_mirror):
    raw = _copy_mutag_as(tmp_path / "data", "PTC_MR")  # PTC_MR has node labels
    (raw / "PTC_MR_node_labels.txt").unlink()
    with pytest.raises(UserError) as info:
        load_tu("PTC_MR", tmp_path / "data")
    assert str(info.value) == (
        f"TU dataset 'PTC_MR' has node labels, but {raw}/PTC_MR_node_labels.txt is missing "
        f"(without it the model would silently get degree features); copy it there, or set "
        f"paths.data_mirror (or {MIRROR_ENV}) to a folder holding TUDataset/PTC_MR/raw.")


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "downloads-allowed"])
def test_missing_graph_indicator_is_named(offline, tmp_path, no_mirror, monkeypatch):
    monkeypatch.delenv("HISTOGRAPH_OFFLINE", raising=False)
    raw = _copy_mutag_as(tmp_path / "data", "NOINDMUT")
    (raw / "NOINDMUT_graph_indicator.txt").unlink()
    with pytest.raises(UserError, match=rf"TU dataset 'NOINDMUT' has no "
                                        rf"{raw}/NOINDMUT_graph_indicator\.txt \(its other raw "
                                        rf"files are there\); copy it there"):
        load_tu("NOINDMUT", tmp_path / "data", offline=offline)  # and no download tried


def test_corrupt_frozen_cache_is_computed_again(tmp_path, data_dir, warnings_):
    data = load_tu("MUTAG", data_dir)
    source, cache_dir = source_checkpoint(tmp_path, "MUTAG"), tmp_path / "frozen_cache"
    history, ptr = frozen.cached_history(source, SlowBackbone(), data.dataset, "disk", cache_dir,
                                         data_fingerprint=data.fingerprint)
    path = cache_dir / f"{frozen.cache_key(source, data.fingerprint)}.pt"
    assert path.name.endswith(f"-{data.fingerprint[:16]}.pt")
    path.write_bytes(path.read_bytes()[:500])  # a truncated file
    again, ptr2 = frozen.cached_history(source, SlowBackbone(), data.dataset, "disk", cache_dir,
                                        data_fingerprint=data.fingerprint)
    assert torch.equal(again, history) and torch.equal(ptr2, ptr)
    assert (f"The frozen history cache {path} could not be read (RuntimeError); it is computed "
            f"again." in _messages(warnings_))
    torch.save({"history": history[:10], "ptr": ptr[:3]}, path)  # readable, another dataset's
    frozen.cached_history(source, SlowBackbone(), data.dataset, "disk", cache_dir,
                          data_fingerprint=data.fingerprint)
    assert "does not fit this dataset's graphs; it is computed again" in _messages(warnings_)
    assert torch.equal(torch.load(path, weights_only=True)["history"], history)


# ----------------------------------------------------------------------------- 3. two jobs at once
_JOB = ("import json, logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s');"
        "from tests.stubs import concurrent_job; print(json.dumps(concurrent_job(*sys.argv[1:])))")


@needs_mirror("TUDataset/PROTEINS")
def test_two_jobs_on_a_fresh_data_dir_process_once_and_agree(tmp_path, warnings_):
    """Two processes (a subprocess and this one) load PROTEINS from the mirror into one fresh
    folder at the same moment: one stages and processes it while the other waits (before the
    lock, the second read the first's half-written data.pt), then both get the same graphs,
    folds and frozen history cache, computed once."""
    data_dir = tmp_path / "data"
    source_checkpoint(tmp_path, "PROTEINS")  # written once, before the jobs hash it
    job = subprocess.Popen([sys.executable, "-c", _JOB, "PROTEINS", str(data_dir), str(tmp_path),
                            "sub"], env=guarded_env(tmp_path / "netlog"), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "ready-sub").exists():
        assert time.time() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.01)
    (tmp_path / "go").touch()
    here = concurrent_job("PROTEINS", str(data_dir), str(tmp_path), "here")
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    there = json.loads(out.strip().splitlines()[-1])
    waited = err + _messages(warnings_)
    assert "Waiting for process " in waited
    assert "'s processing of TU dataset 'PROTEINS' (lock " in waited
    assert here.pop("computed") + there.pop("computed") == 1  # the frozen cache: computed once
    assert here == there
    assert here["fingerprint"] == load_tu("PROTEINS", data_dir).fingerprint


# ----------------------------------------------------------------------------- 5. the data record
@pytest.mark.parametrize("protocol, sizes", [("holdout", (152, 17, 19)), ("gin", (169, 0, 19))])
def test_graph_datamodule_records_its_data(protocol, sizes, data_dir):
    from histograph.data.datamodule import GraphDataModule

    dm = GraphDataModule(functools.partial(load_tu, "MUTAG"), data_dir, protocol=protocol)
    dm.setup()
    record = dm.data_record()
    assert record == {"data_fingerprint": load_tu("MUTAG", data_dir).fingerprint,
                      "split_sizes": dict(zip(("train", "val", "test"), sizes))}
    assert len(record["data_fingerprint"]) == 64


@needs_mirror("Planetoid/Cora")
def test_node_datamodule_records_its_data(data_dir):
    from histograph.data.node_datamodule import NodeDataModule
    from histograph.data.planetoid import load_planetoid

    dm = NodeDataModule(functools.partial(load_planetoid, "Cora"), data_dir)
    dm.setup()
    assert dm.data_record() == {"data_fingerprint": dm.data.fingerprint,
                                "split_sizes": {"train": 140, "val": 500, "test": 1000}}
    raw = data_dir / "Planetoid" / "Cora"
    assert dm.data.fingerprint == fp.fingerprint(raw, ("raw",))
