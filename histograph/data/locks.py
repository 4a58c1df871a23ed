"""Exclusive file locks around work that several jobs may start at once on one data folder.

The jobs of a sweep (Hydra's joblib launcher, a Slurm array, two shells) share ``paths.data_dir``.
Processing a dataset for the first time, writing a split cache and computing a frozen history
cache must then happen once: PyG and OGB write ``processed/`` in place, and a job that finds
another's half-written ``data.pt`` would read a truncated file. Each of these steps runs under
:func:`exclusive`, a ``fcntl.flock`` on ``<folder>/.locks/<name>.lock``; a job that finds the lock
held logs whose it is (the holder writes its PID into the file) and waits, then reads the
finished files. The kernel releases the lock when its holder exits, however it ends, so a killed
job never leaves a stale lock. Lock files are left in place (removing one would let two jobs lock
two different files of the same name). ``flock`` works on local file systems and on NFS (Linux
emulates it with POSIX byte-range locks there).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("histograph")

LOCK_DIR = ".locks"


def lock_file(folder: str | os.PathLike, name: str) -> Path:
    """``<folder>/.locks/<name>.lock``, with path separators of ``name`` replaced by ``-``."""
    return Path(folder) / LOCK_DIR / f"{re.sub(r'[^A-Za-z0-9_.=+-]', '-', name)}.lock"


def _holder(fd: int) -> str:
    """Who holds the lock, from what the holder wrote into the file."""
    text = os.pread(fd, 256, 0).decode(errors="replace").split()
    if not text:
        return "another process"
    return f"process {text[0]}" + (f" on {text[1]}" if len(text) > 1 and text[1] !=
                                   socket.gethostname() else "")


@contextmanager
def exclusive(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    Blocks while another process holds it, after logging ``Waiting for process <pid>'s
    processing of <what> (lock <path>).``. Not re-entrant: a process must not take the same lock
    twice (the second ``flock`` on a new descriptor would wait for the first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for %s's processing of %s (lock %s).", _holder(fd), what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def dataset_lock(data_dir: str | os.PathLike, dataset: str, what: str):
    """The lock of one dataset folder, ``<data_dir>/.locks/<kind>-<name>.lock`` (``dataset`` is
    ``TUDataset/<name>``, ``ogb/<folder>`` or ``Planetoid/<name>``): staging, processing and
    reading the processed data happen under it."""
    return exclusive(lock_file(data_dir, dataset), what)
