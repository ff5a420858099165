"""Running the ``asft`` command in a subprocess, for tests of what a user types (a uniquely named
module, not ``conftest``)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # one intra-op thread: a tiny model gains nothing from more, and spinning threads on busy cores cost 10x
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "asft", *args], capture_output=True, text=True, timeout=300, env=env)
