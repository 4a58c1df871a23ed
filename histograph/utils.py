"""Small helpers shared by the training entry point, callbacks and command-line tools.

No heavy import at module level: the analysis tools and the command line's config check use the
atomic writers before (or without) torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from histograph.errors import UserError


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same folder, then ``os.replace``.

    A reader never sees a half-written file, even if the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Serialise ``obj`` as indented JSON and write it atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors and numpy arrays/scalars
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def quietly(build: Callable[[], Any]) -> Any:
    """``build()`` with what it prints (PyG's and OGB's ``Processing...``, tqdm bars, ``Done!``)
    kept out of the console: it goes to the debug log instead."""
    out, failed = io.StringIO(), True
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = build()
        failed = False
        return result
    finally:  # on a failure what it printed may explain it: a warning, not hidden in the debug log
        if out.getvalue().strip():
            logging.getLogger("histograph").log(logging.WARNING if failed else logging.DEBUG,
                                                "%s", out.getvalue().strip())


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit of the source tree (with ``-dirty`` when modified), if any."""
    root = Path(cwd) if cwd is not None else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and the libraries a result depends on."""
    # imported here, not at module level: the analysis tools use this module without them
    import lightning
    import torch
    import torch_geometric

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
    }


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the run folder and check that this process can write into it.

    The write probe has a per-process name (``.write_test.<pid>``): concurrent processes on one
    folder (DDP ranks, two runs started in the same second) never remove each other's probe.

    :raises UserError: when the folder cannot be created or written.
    """
    output_dir = Path(path)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"Cannot write to the output folder {output_dir} ({exc.strerror}); set "
                        f"hydra.run.dir (or paths.log_dir) to a writable folder.") from exc
    return output_dir


def resolve_threads(threads: int | str | None) -> int | None:
    """Turn the ``threads`` setting into a torch intra-op thread count.

    ``"auto"`` picks 1 on machines with 4 or fewer cores (small-graph training with several
    intra-op threads is erratic and much slower there) and leaves torch's default otherwise;
    an integer is used as given; ``None`` leaves torch alone.
    """
    if threads is None:
        return None
    if isinstance(threads, str):
        if threads != "auto":
            raise UserError(f"threads must be a positive integer or 'auto', got {threads!r}.")
        return 1 if (os.cpu_count() or 1) <= 4 else None
    if int(threads) < 1:
        raise UserError(f"threads must be a positive integer or 'auto', got {threads!r}.")
    return int(threads)
