"""Child processes the way the platform runs them: each ``rlhf`` sub-command in its own
process group (so stopping it stops its vLLM engine too), logged to a file, polled until
its HTTP endpoint answers. Used by ``rlhf up``, ``rlhf demo``, the benchmarks and the
end-to-end test fixtures, so there is one way to start and stop a process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from feedback.broker import free_port

__all__ = ["Process", "free_port", "rlhf_command", "stop_group"]


def rlhf_command(*args: str) -> list[str]:
    """``python -m rlhf <args>`` with this interpreter."""
    return [sys.executable, "-m", "rlhf", *args]


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited in ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Process:
    """A started child; ``wait_http`` until it answers, ``stop`` when done."""

    def __init__(self, name: str, cmd: list[str], log_path: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 append_log: bool = False):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "a" if append_log else "w") if log_path \
            else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_http(self, url: str, timeout: float, interval: float = 0.5) -> float:
        """Poll ``url`` until it answers 200; returns the seconds it took. Stops the
        process and raises if it exits or the time runs out."""
        started = time.monotonic()
        try:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                       f"log: {self.log_path}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(interval)
            raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; "
                               f"log: {self.log_path}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.proc, timeout)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
