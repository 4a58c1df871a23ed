"""Network guard for test subprocesses (put on ``PYTHONPATH`` by ``tests.conftest.guarded_env``).

Python imports ``sitecustomize`` at start-up; when ``HISTOGRAPH_NETGUARD_LOG`` is set, the guard of
``netguard.py`` is installed and every blocked host is appended to that file, which the test then
checks. Without the variable nothing is patched.
"""

import os

if os.environ.get("HISTOGRAPH_NETGUARD_LOG"):
    import netguard

    netguard.install(os.environ["HISTOGRAPH_NETGUARD_LOG"])
