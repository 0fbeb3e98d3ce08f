"""The model registry: immutable, versioned model directories and the live pointer.

Layout under ``root`` (a local directory, or a ReadWriteMany volume in Kubernetes)::

    policy/policy-0000/            one version: weights, tokenizer, config files,
        model.safetensors …        and manifest.json (sha256 of every file)
        manifest.json
        gates.json                 the only file added later (deploy gate results)
    reward/reward-0001/ …
    live.json                      which policy serves now (atomically replaced)
    live-history.jsonl             every change of live.json, append-only
    .tmp/                          versions being written; never read

A version appears by ``os.rename`` of a complete temp directory, so readers see either
the whole version or nothing, and a crash mid-write leaves no half version. Serving and
training both read this module; it depends on nothing but pydantic and the event base.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.events import EventBase

Kind = Literal["policy", "reward"]
KINDS: tuple[Kind, ...] = ("policy", "reward")
MANIFEST, GATES, LIVE, HISTORY = "manifest.json", "gates.json", "live.json", "live-history.jsonl"
_VERSION_RE = re.compile(r"^(policy|reward)-(\d{4,})$")


class RegistryError(Exception):
    """Unknown version, wrong kind, or a version whose files do not match its manifest."""


class FileEntry(BaseModel):
    path: str = Field(description="Path relative to the version directory.")
    sha256: str = Field(description="Hex SHA-256 of the file's bytes.")
    size: int = Field(ge=0, description="Size in bytes.")


class Manifest(BaseModel):
    """What a version is and exactly what made it."""

    version: str = Field(description="Version id, e.g. policy-0003.")
    kind: Kind = Field(description="policy (a causal LM) or reward (a reward model).")
    parent: str | None = Field(None, description="Version this one was trained from.")
    base: str | None = Field(None, description="Source checkpoint path of a base version.")
    data_mark: int | None = Field(
        None, description="Feedback-store high-water mark of the data snapshot used.")
    row_counts: dict[str, int] = Field(
        default_factory=dict, description="Rows of each kind the training used.")
    config: dict[str, Any] = Field(default_factory=dict, description="Full training config.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Final eval metrics.")
    gates: dict[str, Any] = Field(
        default_factory=dict, description="Gate results, filled by the deploy controller.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    timing: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    files: list[FileEntry] = Field(default_factory=list, description="Every file, hashed.")


class LiveRecord(BaseModel):
    """One change of the live policy."""

    version: str = Field(description="The policy version that serves from now on.")
    previous: str | None = Field(None, description="The version it replaced.")
    reason: str = Field(description="Why: promote, rollback, bootstrap …")
    changed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detail: dict[str, Any] = Field(
        default_factory=dict, description="The numbers behind the change (a rollout "
                                          "decision's statistics), if any.")


class PolicyEvent(EventBase):
    """An event on ``rlhf.policy``: a new candidate, a promotion, a rollback, a failed swap."""

    type: Literal["candidate", "promote", "rollback", "swap", "swapped", "swap_failed",
                  "heartbeat"] = Field(
        description="What happened to the version. `swap` tells only the replicas in "
                    "`targets` to serve `version` (a staged rollout); servers report "
                    "`swapped` / `swap_failed` and announce themselves with `heartbeat`.")
    version: str = Field(description="The registry version concerned.")
    kind: Kind = Field("policy", description="policy or reward.")
    reason: str = Field("", description="Free-text reason (gate result, error …).")
    replica: str | None = Field(
        None, description="The serving replica reporting a swap (its host name).")
    targets: list[str] | None = Field(
        None, description="`swap` only: the replica ids that must act on it.")
    command_id: str | None = Field(
        None, description="On `swapped` / `swap_failed`: the event id of the `swap` it answers.")
    url: str | None = Field(None, description="`heartbeat`: the replica's HTTP base URL.")
    ready: bool | None = Field(None, description="`heartbeat`: whether /ready says ready.")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hash_tree(directory: Path) -> list[FileEntry]:
    """FileEntry of every regular file under ``directory`` except the manifest, sorted."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [FileEntry(path=p.relative_to(directory).as_posix(), sha256=sha256_file(p),
                      size=p.stat().st_size) for p in files]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a sibling temp file, fsync it, then ``os.replace`` it over path."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def version_id(kind: Kind, number: int) -> str:
    return f"{kind}-{number:04d}"


def parse_version(version: str) -> tuple[Kind, int]:
    m = _VERSION_RE.match(version)
    if not m:
        raise RegistryError(f"not a version id: {version!r} (expected e.g. policy-0003)")
    return m.group(1), int(m.group(2))  # type: ignore[return-value]


class Registry:
    """Versions under ``root``; see the module docstring for the layout.

    ``create=False`` is for readers such as ``rlhf deploy status``: a missing root reads
    as an empty registry (no versions, nothing live), and nothing is created until
    create_version writes the first version.
    """

    def __init__(self, root: Path | str, *, create: bool = True):
        self.root = Path(root)
        if create:
            self._make_dirs()

    def _make_dirs(self) -> None:
        """The layout's directories (create_version makes them before writing; set_live
        and update_gates write only where a version, hence the root, exists)."""
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def _entries(self, sub: str) -> builtins.list[Path]:
        """What ``root/sub`` holds; nothing when it does not exist (an unwritten root)."""
        d = self.root / sub
        return builtins.list(d.iterdir()) if d.is_dir() else []

    # -- reading ---------------------------------------------------------------------
    def path(self, version: str) -> Path:
        """Directory of ``version``; raises RegistryError when it does not exist."""
        kind, _ = parse_version(version)
        p = self.root / kind / version
        if not (p / MANIFEST).is_file():
            raise RegistryError(f"unknown version {version!r} in registry {self.root}")
        return p

    def get(self, version: str) -> Manifest:
        """The manifest of ``version``, with gate results from gates.json merged in."""
        p = self.path(version)
        manifest = Manifest.model_validate_json((p / MANIFEST).read_text())
        if (p / GATES).is_file():
            manifest.gates = json.loads((p / GATES).read_text())
        return manifest

    def list(self, kind: Kind | None = None) -> list[Manifest]:
        """Manifests of every complete version (of ``kind``), oldest first."""
        found = []
        for k in (kind,) if kind else KINDS:
            for d in self._entries(k):
                if _VERSION_RE.match(d.name) and (d / MANIFEST).is_file():
                    found.append(d.name)
        return [self.get(v) for v in sorted(found, key=lambda v: (v[0], parse_version(v)[1]))]

    def latest(self, kind: Kind) -> Manifest | None:
        versions = self.list(kind)
        return versions[-1] if versions else None

    def verify(self, version: str) -> builtins.list[str]:
        """Files whose bytes differ from the manifest, or that are missing or extra; [] = ok."""
        p, manifest = self.path(version), self.get(version)
        expected = {f.path: f.sha256 for f in manifest.files}
        actual = {f.path: f.sha256 for f in hash_tree(p) if f.path != GATES}
        return sorted(k for k in expected.keys() | actual.keys()
                      if expected.get(k) != actual.get(k))

    # -- writing a version -----------------------------------------------------------
    def create_version(self, kind: Kind, src_dir: Path, manifest_fields: dict[str, Any],
                       *, number: int | None = None) -> Manifest:
        """Copy ``src_dir`` into a new immutable version of ``kind`` and return its manifest.

        The copy, hashes and manifest are written into ``.tmp/`` and renamed into place;
        if the next id was taken by a concurrent writer meanwhile, the next one is tried.
        """
        if kind not in KINDS:
            raise RegistryError(f"kind must be one of {KINDS}, got {kind!r}")
        self._make_dirs()
        staging = self.root / ".tmp" / uuid.uuid4().hex
        try:
            shutil.copytree(src_dir, staging, ignore=shutil.ignore_patterns(MANIFEST, GATES))
            files = hash_tree(staging)
            return self._publish(kind, staging, files, manifest_fields, number)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, kind: Kind, staging: Path, files: builtins.list[FileEntry],
                 fields: dict[str, Any], number: int | None) -> Manifest:
        for _ in range(100):
            n = number if number is not None else self._next_number(kind)
            manifest = Manifest(**{**fields, "version": version_id(kind, n), "kind": kind,
                                   "files": files})
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            try:
                os.rename(staging, self.root / kind / manifest.version)
                return manifest
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if number is not None:  # another writer took this id
                    raise RegistryError(f"version {manifest.version} already exists") from None
        raise RegistryError("could not allocate a version id after 100 tries")

    def _next_number(self, kind: Kind) -> int:
        numbers = [parse_version(d.name)[1] for d in self._entries(kind)
                   if _VERSION_RE.match(d.name)]
        return max(numbers, default=0) + 1

    def clean_staging(self, older_than_s: float = 3600.0) -> int:
        """Remove temp dirs left by crashed writers (older than a live write could be)."""
        cutoff, removed = time.time() - older_than_s, 0
        for d in self._entries(".tmp"):
            if d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed

    def register_base(self, src_dir: Path, config: dict[str, Any] | None = None) -> Manifest:
        """Register a base checkpoint as policy-0000; returns the existing one if present."""
        if (self.root / "policy" / version_id("policy", 0) / MANIFEST).is_file():
            return self.get(version_id("policy", 0))
        fields = {"base": str(src_dir), "config": config or {}}
        return self.create_version("policy", Path(src_dir), fields, number=0)

    def update_gates(self, version: str, gates: dict[str, Any]) -> Manifest:
        """Record gate results next to the manifest; the only change a version allows."""
        _write_atomic(self.path(version) / GATES, json.dumps(gates, indent=2, default=str))
        return self.get(version)

    # -- the live policy -------------------------------------------------------------
    def live(self) -> LiveRecord | None:
        p = self.root / LIVE
        return LiveRecord.model_validate_json(p.read_text()) if p.is_file() else None

    def live_policy(self) -> str | None:
        """Version id of the policy that serves now, or None before the first set_live."""
        record = self.live()
        return record.version if record else None

    def set_live(self, version: str, reason: str,
                 detail: dict[str, Any] | None = None) -> LiveRecord:
        """Make ``version`` (a policy) live: append to the history, then replace live.json."""
        if parse_version(version)[0] != "policy":
            raise RegistryError(f"only a policy can be live, got {version!r}")
        self.path(version)  # so root exists for the lock and the history
        # One writer at a time across processes (CLI promote vs. the controller).
        with open(self.root / ".live.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = LiveRecord(version=version, previous=self.live_policy(), reason=reason,
                                detail=detail or {})
            with open(self.root / HISTORY, "a") as f:
                f.write(record.model_dump_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            _write_atomic(self.root / LIVE, record.model_dump_json(indent=2))
        return record

    def history(self) -> builtins.list[LiveRecord]:
        """Every change of the live policy, oldest first."""
        p = self.root / HISTORY
        if not p.is_file():
            return []
        return [LiveRecord.model_validate_json(line) for line in p.read_text().splitlines()
                if line.strip()]
