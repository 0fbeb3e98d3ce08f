"""The completion log's spill: events the broker could not take, kept on local disk.

Layout: one directory (``RLHF_EVENT_SPILL_DIR``), which every serving process of a
deployment may share. A process appends to segment files of its own,
``<topic>.<host>.<pid>.<hex>.jsonl``, one event per line in its wire form
(:func:`core.events.encode_event`), and holds an exclusive ``flock`` on every segment it
owns until it has replayed it or exits. A segment that nobody has locked was left by a
process that is gone: the next process that replays adopts it, so a replica that crashed
or was replaced loses nothing it spilled.

Replaying: :meth:`Spill.segments` seals the active segment (new events go to a fresh one)
and adopts orphaned ones; the caller sends each segment's events (:meth:`Spill.read`) and
then calls :meth:`Spill.settle` with the lines the broker did NOT acknowledge. A segment
whose every line was acknowledged is deleted; otherwise a file of the remaining lines
replaces it (written aside, then renamed over it). Nothing is removed before its ack, so
a crash sends some events twice at worst, and the store's ``event_id`` deduplication
absorbs that. Writes reach the operating system at once and the disk (``fsync``) when a
segment is sealed or the spill closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 64 << 20
"""A segment is sealed once it holds this much, so a replay reads at most this at a time."""


@dataclass(eq=False)
class Segment:
    """One spill file this process holds the lock on; ``lines`` is its event count."""

    path: Path
    fd: int
    lines: int = 0
    size: int = 0


class Spill:
    """Append-only segments of one topic's spilled events, and their replay bookkeeping.

    Thread-safe: ``append`` may run on any thread (it never waits on the network), while
    ``segments``/``read``/``settle`` belong to the one thread that replays.
    """

    def __init__(self, directory: Path | str, topic: str):
        self.directory = Path(directory)
        self.topic = topic
        self._lock = threading.Lock()
        self._active: Segment | None = None
        self._sealed: list[Segment] = []
        self._closed = False

    @property
    def pending(self) -> int:
        """Events in the segments this process holds (its own and adopted ones)."""
        with self._lock:
            own = self._active.lines if self._active is not None else 0
            return own + sum(s.lines for s in self._sealed)

    def append(self, lines: Sequence[bytes]) -> None:
        """Append events, one line each; raises OSError when the disk refuses them."""
        if not lines:
            return
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if self._closed:
                raise OSError(f"the spill in {self.directory} is closed")
            if self._active is None:
                self._active = self._create()
            try:
                _write_all(self._active.fd, data)
            except OSError:  # no torn line for the next append to run into
                with contextlib.suppress(OSError):
                    os.ftruncate(self._active.fd, self._active.size)
                raise
            self._active.lines += len(lines)
            self._active.size += len(data)
            if self._active.size >= SEGMENT_BYTES:
                self._sealed.append(self._active)
                self._active = None

    def segments(self) -> list[Segment]:
        """Seal the active segment, adopt orphaned ones; every segment to replay, oldest
        first."""
        with self._lock:
            if self._active is not None:
                self._sealed.append(self._active)
                self._active = None
            owned = {s.path for s in self._sealed}
        adopted = self._adopt(owned)
        with self._lock:
            if self._closed:
                for segment in adopted:
                    os.close(segment.fd)
                return []
            self._sealed += adopted
            sealed = list(self._sealed)
        for segment in sealed:
            os.fsync(segment.fd)
        return sealed

    @staticmethod
    def read(segment: Segment) -> list[bytes]:
        """The segment's lines (events), without their newlines."""
        return [line for line in segment.path.read_bytes().split(b"\n") if line]

    def settle(self, segment: Segment, left: Sequence[bytes]) -> None:
        """After a replay of ``segment``: keep only ``left``, the lines not acknowledged."""
        if left:
            self._replace(segment, left)
            return
        with self._lock:
            if self._closed:
                return
            segment.path.unlink(missing_ok=True)  # before the lock goes: nobody adopts it
            os.close(segment.fd)
            self._sealed.remove(segment)

    def close(self) -> None:
        """Flush every segment to disk and release them (they stay for the next process)."""
        with self._lock:
            self._closed = True
            segments = [*self._sealed, *([self._active] if self._active else [])]
            self._active, self._sealed = None, []
        for segment in segments:
            try:
                os.fsync(segment.fd)
            finally:
                os.close(segment.fd)

    # -- files ------------------------------------------------------------------------------

    def _create(self) -> Segment:
        """A fresh segment, locked. Another process may adopt (and delete) an empty file
        between its creation and our lock: then try another name."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.directory / (f"{self.topic}.{socket.gethostname()}.{os.getpid()}."
                                     f"{uuid.uuid4().hex[:8]}.jsonl")
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            if _lock(fd) and _is_current(fd, path):
                return Segment(path, fd)
            os.close(fd)

    def _adopt(self, owned: set[Path]) -> list[Segment]:
        """Segments of processes that are gone (nobody holds their lock), oldest first;
        leftovers of an interrupted rewrite (``*.tmp``) are removed."""
        if not self.directory.is_dir():
            return []
        for tmp in self.directory.glob(f"{self.topic}.*.jsonl.tmp"):
            fd = _open_existing(tmp)
            if fd is not None:
                if _lock(fd) and _is_current(fd, tmp):
                    tmp.unlink(missing_ok=True)
                os.close(fd)
        adopted = []
        for path in sorted(self.directory.glob(f"{self.topic}.*.jsonl"), key=_mtime):
            fd = None if path in owned else _open_existing(path)
            if fd is None:
                continue
            if not (_lock(fd) and _is_current(fd, path)):
                os.close(fd)  # its process is alive, or another one adopted it first
                continue
            data = path.read_bytes()
            adopted.append(Segment(path, fd, lines=data.count(b"\n"), size=len(data)))
        return adopted

    def _replace(self, segment: Segment, left: Sequence[bytes]) -> None:
        """Atomically replace ``segment``'s file with ``left``; the lock moves with it."""
        tmp = segment.path.with_name(segment.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if not _lock(fd):
                raise OSError(f"{tmp} is locked by another process")
            data = b"".join(line + b"\n" for line in left)
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            if self._closed:
                tmp.unlink(missing_ok=True)
                os.close(fd)
                return
            os.replace(tmp, segment.path)
            os.close(segment.fd)
            segment.fd, segment.lines, segment.size = fd, len(left), len(data)


def _lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one deleted or replaced since)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _open_existing(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
