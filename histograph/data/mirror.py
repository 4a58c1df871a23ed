"""The data mirror: a read-only folder laid out like ``shared/data`` that replaces downloads.

When a mirror is configured (``paths.data_mirror`` or the ``HISTOGRAPH_DATA_MIRROR`` environment
variable), a dataset's raw files are copied from ``<mirror>/<relative path>`` into the writable
``paths.data_dir`` before PyG/OGB process them; the libraries then find their raw files and do not
download. The mirror itself is never written to. MUTAG's raw files ship inside the package
(``histograph/embedded``) and act as a last-resort mirror, so the default experiment works offline.

Which copy wins is decided by content, not size. The dataset folder's ``manifest.json``
(:class:`histograph.data.fingerprint.Manifest`) records, per staged file, the mirror file it
came from and the SHA-256 of what was copied. On every load, for each mirror file:

* no local copy: copied;
* the local copy is still what was copied and the mirror's file changed since: copied again
  (the mirror wins over an unedited copy), with a warning naming both paths;
* the local copy was edited here (its digest differs from what was copied), whether or not the
  mirror's file changed too: kept, with a warning naming both paths, on every load; delete the
  local file to take the mirror's again (a local edit is never overwritten silently);
* a local file with no record (a data folder staged by an older version, or filled by hand):
  recorded when it equals the mirror's, else kept with the same warning.

Digests are cached by size and modification time on both sides, so a load whose files did not
change reads no file content.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from histograph.data.fingerprint import Manifest, hash_stream, source_files
from histograph.errors import UserError

log = logging.getLogger("histograph")

MIRROR_ENV = "HISTOGRAPH_DATA_MIRROR"
EMBEDDED_MIRROR = Path(__file__).resolve().parent.parent / "embedded"


def resolve_mirror(configured: str | os.PathLike | None) -> Path | None:
    """Return the configured mirror folder (config value first, then the environment variable).

    :raises UserError: if a mirror is configured but is not a folder.
    """
    value = configured if configured not in (None, "") else os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(
            f"The data mirror {str(path)!r} is not a folder; point paths.data_mirror (or "
            f"{MIRROR_ENV}) at a folder laid out like shared/data, or unset it to download.")
    return path.resolve()


def mirrors(configured: Path | None) -> list[Path]:
    """The folders searched for raw files, in order: the configured mirror, then the embedded one."""
    return [m for m in (configured, EMBEDDED_MIRROR) if m is not None]


def stage(dataset: str, data_dir: str | os.PathLike, mirror: Path | None,
          parts: tuple[str, ...] = ("raw",)) -> Path | None:
    """Bring ``<data_dir>/<dataset>/<part>`` up to date with ``<mirror>/<dataset>/<part>`` for
    each of ``parts`` (files or folders), by the rules of this module's docstring.

    Each file is copied to a temporary name and renamed, so an interrupted copy never leaves a
    truncated file that looks complete. The caller holds the dataset's lock. Returns the mirror
    folder the files came from, or ``None`` when no mirror holds ``dataset``.
    """
    folder = Path(data_dir) / dataset
    for root in mirrors(mirror):
        files = source_files(root / dataset, parts)
        if not files:
            continue
        manifest = Manifest(folder)
        for rel, src in files:
            _stage_file(src, folder / rel, rel, manifest)
        manifest.save()
        return root
    return None


def _stage_file(src: Path, dst: Path, rel: str, manifest: Manifest) -> None:
    """Copy, re-copy or keep ``dst`` (the local copy of the mirror file ``src``)."""
    if not dst.exists():
        _copy(src, dst, rel, manifest)
        return
    local = manifest.digest(dst, rel)
    theirs = manifest.digest(src, str(src))
    record = manifest.staged.get(rel)
    if local == theirs:
        if record is None or record["sha256"] != local:
            manifest.record_staged(rel, src, local)
        return
    if record is not None and local == record["sha256"]:
        log.warning("Copied %s to %s again: the mirror's file changed since it was copied, and "
                    "the mirror wins over an unedited copy.", src, dst)
        _copy(src, dst, rel, manifest)
        return
    why = (f"it was edited here since it was copied from {src}" + (
        " (and the mirror's file changed too)" if theirs != record["sha256"] else "")
        if record is not None else f"it differs from {src} and has no record of being copied "
                                   f"from it")
    log.warning("Keeping %s: %s; the mirror's version is not used (delete %s to copy it again).",
                dst, why, dst)


def _copy(src: Path, dst: Path, rel: str, manifest: Manifest) -> None:
    """Copy ``src`` to ``dst`` atomically, recording the digest of what was copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a shared data dir needs readable files
        source_stat = src.stat()
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            sha = hash_stream(fin.read, fout.write)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    manifest.remember(rel, dst.stat(), sha, settled=False)  # written here: no re-read later
    if src.stat().st_mtime_ns == source_stat.st_mtime_ns:
        manifest.remember(str(src), source_stat, sha)
    manifest.record_staged(rel, src, sha)


def load_into(loader, data_dir: str | os.PathLike, data_mirror: str | None, offline: bool):
    """Call a dataset loader with a writable ``data_dir`` (created if needed).

    :raises UserError: when ``data_dir`` is not writable.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
        raise UserError(f"The data folder {data_dir} is not writable; set paths.data_dir to a "
                        f"writable folder.")
    return loader(data_dir=str(data_dir), data_mirror=data_mirror, offline=offline)
