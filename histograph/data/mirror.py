"""The data mirror: a read-only folder laid out like ``shared/data`` that replaces downloads.

When a mirror is configured (``paths.data_mirror`` or the ``HISTOGRAPH_DATA_MIRROR`` environment
variable), a dataset's raw files are copied from ``<mirror>/<relative path>`` into the writable
``paths.data_dir`` before PyG/OGB process them; the libraries then find their raw files and do not
download. The mirror itself is never written to. MUTAG's raw files ship inside the package
(``histograph/embedded``) and act as a last-resort mirror, so the default experiment works offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from histograph.errors import UserError

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


def stage(relative: str, data_dir: str | os.PathLike, mirror: Path | None) -> Path | None:
    """Copy ``<mirror>/<relative>`` into ``<data_dir>/<relative>`` (files missing there only).

    Each file is copied to a temporary name and renamed, so an interrupted copy never leaves a
    truncated file that looks complete. Returns the mirror folder the files came from, or ``None``
    when no mirror holds ``relative``.
    """
    target = Path(data_dir) / relative
    for root in mirrors(mirror):
        source = root / relative
        if not source.is_dir():
            continue
        for src in sorted(source.rglob("*")):
            if src.is_dir():
                continue
            dst = target / src.relative_to(source)
            if dst.exists() and dst.stat().st_size == src.stat().st_size:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data dir needs readable files
                os.replace(tmp, dst)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return root
    return None


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
