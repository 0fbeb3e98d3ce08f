"""A local S3 endpoint that makes the embedded broker durable.

The bundled Tansu binary has two storage engines: memory (a restart loses every event
not yet consumed) and ``s3://``. Its s3 engine needs an object store that honours
conditional writes (``If-None-Match: *``, ``If-Match: <etag>``): it keeps partition
watermarks and group offsets as objects updated by compare-and-swap. ``alocals3`` (PyPI,
pinned in pyproject.toml) is a small S3 server on SQLite and plain files that does; servers
without conditional writes lose acknowledged messages under concurrent producers.

:class:`LocalObjectStore` runs it as a child process on loopback with its data under one
directory, creates the bucket, and gives the ``AWS_*`` environment Tansu reads. Its
``put_object`` checks the precondition and writes with no ``await`` in between, on one
event loop, so a conditional write is atomic. ``tests/integration/feedback/
test_durable_broker.py`` checks the conditional-write contract and a SIGKILL of both
processes; run it again before changing the pinned version.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_PREFIX = "/s3"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ObjectStoreError(RuntimeError):
    """The local S3 server did not start; the message carries its log."""


class LocalObjectStore:
    """``alocals3`` in a child process, storing under ``root`` (objects and SQLite)."""

    def __init__(self, root: Path, bucket: str, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = 30.0):
        self.root = Path(root)
        self.bucket = bucket
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """What Tansu's ``AWS_ENDPOINT`` must be (path-style, with the API prefix)."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    @property
    def log_path(self) -> Path:
        return self.root / "object-store.log"

    def tansu_env(self) -> dict[str, str]:
        """Environment for a tansu on ``s3://<bucket>/`` against this server. The server
        checks no signature; the keys only satisfy the S3 client."""
        return s3_env(self.endpoint, access_key="rlhf-local", secret_key="rlhf-local")

    def start(self) -> LocalObjectStore:
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ALOCALS3_STORAGE_ROOT": str(self.root / "objects"),
               "ALOCALS3_DATABASE_URL": f"sqlite:///{self.root / 'objects.db'}",
               "ALOCALS3_LOG_LEVEL": "WARNING"}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "alocals3.server", "--host", self.host,
                 "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
            self._ensure_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ObjectStoreError(f"the local S3 server exited with code "
                                       f"{self._proc.returncode}: {self._log_tail()}")
            try:
                if httpx.get(f"http://{self.host}:{self.port}/healthz",
                             timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ObjectStoreError(f"the local S3 server did not answer within "
                               f"{self.start_timeout_s:g}s: {self._log_tail()}")

    def _ensure_bucket(self) -> None:
        r = httpx.put(f"{self.endpoint}/{self.bucket}", timeout=10)
        if r.status_code not in (200, 201, 409):  # 409: it exists (a restart)
            raise ObjectStoreError(f"creating bucket {self.bucket}: {r.status_code} {r.text}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL (tests: a crash, not a shutdown)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def terminate(proc: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM a child, SIGKILL it if it has not exited within ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


def s3_env(endpoint: str, access_key: str | None = None, secret_key: str | None = None,
           region: str | None = None) -> dict[str, str]:
    """``AWS_*`` variables for Tansu's s3 engine (object_store's names); unset values are
    left to the caller's environment (credentials of a real S3)."""
    env = {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": str(endpoint.startswith("http:")).lower(),
           "AWS_DEFAULT_REGION": region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    if access_key:
        env["AWS_ACCESS_KEY_ID"] = access_key
    if secret_key:
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
    return env
