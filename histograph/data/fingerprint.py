"""Content fingerprints of a dataset's raw files, and processed data rebuilt when they change.

PyG and OGB reuse ``<dataset>/processed/`` whenever it exists: an edited raw file, a new copy
of the dataset, or a ``data.pt`` half-written by a killed job would be read as if nothing had
happened. Here each dataset folder (``<data_dir>/<TUDataset|ogb|Planetoid>/<name>/``) gets

* ``manifest.json``: the SHA-256 of every raw file, cached by ``(size, mtime_ns)`` so that a
  later load stats the files instead of reading them (a file is read again when its size or
  modification time changes; a file modified less than two seconds before it is hashed is not
  cached, since a same-size edit within one timestamp tick would keep its time), plus what
  :func:`histograph.data.mirror.stage` copied from the mirror;
* a **fingerprint**: the SHA-256 over the sorted relative paths and file digests of the source
  parts (``raw/``; for OGB also ``split/`` and ``RELEASE_v1.txt``), hidden files excepted;
* ``processed/fingerprint.json``: the fingerprint the processed data was built from, written
  after the library has written everything else. :func:`load_processed` deletes a
  ``processed/`` folder whose record is missing (an interrupted build, or one made before
  fingerprints) or differs (the raw files changed), and one whose data cannot be read, then lets
  the library build it again; the caller holds the dataset's lock (:mod:`histograph.data.locks`),
  so no other job reads a folder while it is being rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from histograph.utils import atomic_write_json

log = logging.getLogger("histograph")

MANIFEST = "manifest.json"
RECORD = "fingerprint.json"
VERSION = 1
_BLOCK = 1 << 20
_SETTLE_NS = 2_000_000_000  # files changed more recently than this are hashed, never cached

T = TypeVar("T")


def hash_stream(read: Callable[[int], bytes], write: Callable[[bytes], object] | None = None
                ) -> str:
    """SHA-256 of everything ``read`` returns (1 MiB at a time), passing each block to
    ``write`` when given (a copy that hashes what it copies)."""
    digest = hashlib.sha256()
    for block in iter(lambda: read(_BLOCK), b""):
        digest.update(block)
        if write is not None:
            write(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, streamed (files can be hundreds of MB)."""
    with open(path, "rb") as fh:
        return hash_stream(fh.read)


class Manifest:
    """``<dataset folder>/manifest.json``: cached file digests and the mirror's staging record.

    ``digests`` maps a file (its path relative to the folder, or the absolute path of a mirror
    file) to ``{"size", "mtime_ns", "sha256"}``; ``staged`` maps a relative path to
    ``{"source", "sha256"}``, the mirror file it was copied from and the digest of what was
    copied. An unreadable manifest counts as empty (digests are recomputed).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.digests: dict[str, dict] = {}
        self.staged: dict[str, dict] = {}
        self._dirty = False
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("version") == VERSION:
                self.digests, self.staged = dict(saved["digests"]), dict(saved["staged"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("Unreadable %s (%s); the file digests are computed again.", self.path,
                        type(exc).__name__)

    def digest(self, path: Path, key: str) -> str:
        """SHA-256 of ``path``, from the cache when its size and mtime are those recorded."""
        before = path.stat()
        entry = self.digests.get(key)
        if entry and entry["size"] == before.st_size and entry["mtime_ns"] == before.st_mtime_ns:
            return entry["sha256"]
        sha = file_sha256(path)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
            self.remember(key, after, sha)
        elif self.digests.pop(key, None) is not None:
            self._dirty = True
        return sha

    def remember(self, key: str, stat: os.stat_result, sha: str, settled: bool = True) -> None:
        """Record that the file ``key`` with this ``stat`` has digest ``sha``; only once its
        mtime is two seconds old when ``settled`` (else an edit within the same timestamp tick
        would go unseen), always when not (a copy this process has just written itself)."""
        if settled and time.time_ns() - stat.st_mtime_ns <= _SETTLE_NS:
            if self.digests.pop(key, None) is not None:
                self._dirty = True
            return
        self.digests[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        self._dirty = True

    def record_staged(self, rel: str, source: Path, sha: str) -> None:
        """Record that ``rel`` holds a copy of ``source`` with digest ``sha``."""
        self.staged[rel] = {"source": str(source), "sha256": sha}
        self._dirty = True

    def save(self) -> None:
        """Write the manifest (atomically) if anything changed."""
        if self._dirty:
            atomic_write_json(self.path, {"version": VERSION, "digests": self.digests,
                                          "staged": self.staged})
            self._dirty = False


def source_files(folder: Path, parts: Iterable[str]) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of every file under ``folder/<part>`` (a file or a folder),
    sorted, without hidden files (temporary copies start with a dot)."""
    found: list[Path] = []
    for part in parts:
        path = folder / part
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(p for p in path.rglob("*") if p.is_file())
    return sorted((p.relative_to(folder).as_posix(), p) for p in found
                  if not any(s.startswith(".") for s in p.relative_to(folder).parts))


def fingerprint(folder: Path, parts: Iterable[str], manifest: Manifest | None = None
                ) -> str | None:
    """SHA-256 over the sorted relative paths and digests of the files of ``parts``, or
    ``None`` when there are none."""
    manifest = manifest if manifest is not None else Manifest(folder)
    files = source_files(folder, parts)
    if not files:
        return None
    combined = hashlib.sha256()
    for rel, path in files:
        combined.update(f"{rel}\0{manifest.digest(path, rel)}\n".encode())
    return combined.hexdigest()


def _recorded(processed: Path) -> str | None:
    try:
        return json.loads((processed / RECORD).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _discard(processed: Path) -> None:
    """Delete ``processed`` (its record first: a half-deleted folder is never taken as valid)."""
    (processed / RECORD).unlink(missing_ok=True)
    shutil.rmtree(processed)


def load_processed(folder: Path, processed: str, parts: Iterable[str], build: Callable[[], T],
                   what: str) -> tuple[T, str | None]:
    """Call ``build`` (the library's constructor, which reuses ``folder/processed`` when it
    exists) so that it reuses only processed data built from the current raw files.

    The caller holds the dataset's lock. Returns ``(build(), fingerprint of the raw files)``.
    An exception of a fresh build propagates (the raw files are at fault); an unreadable
    existing ``processed/`` is rebuilt once, with a warning.
    """
    parts = tuple(parts)
    manifest = Manifest(folder)
    current = fingerprint(folder, parts, manifest)
    target = folder / processed
    if target.exists():
        recorded = _recorded(target)
        if recorded is None:
            log.warning("Rebuilding the processed data of %s in %s: it has no %s (interrupted, "
                        "or made before fingerprints were recorded).", what, target, RECORD)
            _discard(target)
        elif recorded != current:
            log.warning("Rebuilding the processed data of %s in %s: the raw files changed since "
                        "it was built (fingerprint %s -> %s).", what, target, recorded[:12],
                        (current or "none")[:12])
            _discard(target)
    fresh = not target.exists()
    try:
        result = build()
    except Exception as exc:  # noqa: BLE001 - an unreadable cache is rebuilt, not reported
        if fresh:
            raise
        log.warning("The processed cache %s of %s could not be read (%s); it is rebuilt from "
                    "the raw files.", target, what, type(exc).__name__)
        _discard(target)
        fresh = True
        result = build()
    if fresh:  # a download may have added raw files: record what the build actually read
        current = fingerprint(folder, parts, manifest)
        atomic_write_json(target / RECORD, {"fingerprint": current, "version": VERSION})
    manifest.save()
    return result, current
