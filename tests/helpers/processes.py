"""A training process stopped as SLURM or `kill` stops it: what the preemption tests of one and of two processes
(tests/test_resume.py, tests/test_ddp.py) share."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def sigterm_once(command: list[str], cwd: Path, env: dict[str, str], checkpoint: str) -> str:
    """Run `command`, send SIGTERM once a file named `checkpoint` exists under `cwd`, wait for the process, and
    check that it ended as an interrupted run should: exit status 128 + 15, the one-line note, no traceback.
    Returns its stderr."""
    stopped = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not list(Path(cwd).rglob(checkpoint)):
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    stderr = stopped.communicate(timeout=300)[1]
    assert stopped.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "interrupted: stopped by SIGTERM" in stderr and "Traceback" not in stderr
    return stderr
