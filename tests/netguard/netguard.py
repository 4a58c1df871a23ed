"""The test suite's network guard: every non-local connection or name lookup fails and is recorded.

Installed once per interpreter, under this one module name: by ``tests/conftest.py`` for the
pytest process (which may import the conftest twice, as ``conftest`` and as ``tests.conftest``:
both copies then share :data:`ATTEMPTS`), and by ``sitecustomize.py`` beside this file for test
subprocesses, which also append each blocked host to the file named by
``HISTOGRAPH_NETGUARD_LOG``.
"""

from __future__ import annotations

import socket

ATTEMPTS: list[str] = []
LOCAL = ("127.", "localhost", "::1", "0.0.0.0")
_state: dict[str, str | None] = {}


def _block(host: object) -> str:
    ATTEMPTS.append(str(host))
    log = _state.get("log")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{host}\n")
    return f"network access is disabled in tests (tried {host})"


def install(log_file: str | None = None) -> list[str]:
    """Patch ``socket`` (once) and return the shared list of blocked hosts."""
    if "installed" in _state:
        return ATTEMPTS
    _state["installed"], _state["log"] = "yes", log_file
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0]) if isinstance(address, tuple) else str(address)
            if not host.startswith(LOCAL):
                raise OSError(_block(host))

    def connect(self, address):  # noqa: ANN001
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):  # noqa: ANN001
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001
        """Name lookups count too (PyG's aiohttp download resolves the host first)."""
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "", socket.gethostname()) and not str(name).startswith(LOCAL):
            raise socket.gaierror(socket.EAI_NONAME, _block(name))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    return ATTEMPTS
