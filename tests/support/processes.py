"""Stopping the processes tests start: SIGTERM, as a kubelet or an operator would send,
then SIGKILL if the process does not exit in time."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 20.0) -> int:
    """Stop `proc` (if still running) and return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
