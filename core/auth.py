"""API keys with roles: user < labeler < admin (shared by every process with an API).

Keys come from settings (``RLHF_AUTH__KEYS``) or a JSON/YAML file. A caller's role decides
what it may call and is the *source* recorded on its feedback; the request body never
decides it. With no keys configured the API is open and every caller is an admin: the
local default, announced in the start-up log.

:meth:`KeyRing.authorize` is the one role check; HTTP (:func:`core.http.require_role`)
and gRPC both call it.

The ring never keeps a key itself, only its SHA-256 digest, and compares digests with
:func:`hmac.compare_digest` against every entry, so neither a memory dump nor response
timing gives a key away. A keys file (or ``RLHF_AUTH__KEYS``) may therefore hold digests
instead of keys: an entry ``"sha256:<64 hex digits>": "admin"`` accepts the key whose
digest that is (make one with ``printf %s "$KEY" | sha256sum``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import Forbidden, Unauthorized
from core.settings import AuthSettings

log = logging.getLogger(__name__)

ROLES = ("user", "labeler", "admin")
DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class Caller:
    name: str | None  # a stable, non-secret id of the key; None when the API is open
    role: str

    @property
    def feedback_source(self) -> str:
        return "user" if self.role == "user" else "labeler"


class KeyRing:
    """Role lookup by API key; holds SHA-256 digests only (see the module docstring)."""

    def __init__(self, keys: dict[str, str]):
        self._digests: list[tuple[bytes, str]] = [(key_digest(k), role)
                                                  for k, role in keys.items()]

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> KeyRing:
        keys: dict[str, str] = dict(settings.keys)
        if settings.keys_file:
            keys.update(_read_keys_file(settings.keys_file))
        bad = {k: r for k, r in keys.items() if r not in ROLES}
        if bad:
            raise ValueError(f"auth keys have unknown roles {sorted(set(bad.values()))}; "
                             f"use one of {ROLES}")
        ring = cls(keys)
        if not keys:
            log.warning("No API keys configured: the API is OPEN and every caller is admin. "
                        "Set RLHF_AUTH__KEYS or RLHF_AUTH__KEYS_FILE in production.")
        return ring

    @property
    def open(self) -> bool:
        return not self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, key: str | None) -> Caller:
        """The caller behind ``key``; :class:`Unauthorized` when it is missing or unknown.

        Every entry is compared (no early exit), so the time taken does not depend on
        which entry, if any, matches.
        """
        if self.open:
            return Caller(name=None, role="admin")
        if not key:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
        digest = hashlib.sha256(key.encode()).digest()
        role = None
        for stored, stored_role in self._digests:
            if hmac.compare_digest(digest, stored):
                role = stored_role
        if role is None:
            raise Unauthorized("Invalid API key.")
        return Caller(name="key-" + digest.hex()[:12], role=role)

    def authorize(self, key: str | None, minimum_role: str = "user") -> Caller:
        """The caller, if its key has at least ``minimum_role``; else 401 or 403."""
        caller = self.identify(key)
        if ROLES.index(caller.role) < ROLES.index(minimum_role):
            raise Forbidden(f"This endpoint needs the `{minimum_role}` role.")
        return caller


def key_digest(entry: str) -> bytes:
    """The SHA-256 digest an entry stands for: ``sha256:<hex>`` as given, else of the key.

    A ``sha256:`` entry whose rest is not 64 hex digits is refused (ValueError naming
    it) rather than taken as a literal key nobody could type by mistake.
    """
    if entry.startswith(DIGEST_PREFIX):
        hexdigest = entry[len(DIGEST_PREFIX):]
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError(f"auth key {entry[:16]}…: a sha256: entry needs 64 hex digits")
        return digest
    return hashlib.sha256(entry.encode()).digest()


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` entry that stands for ``key`` in a keys file."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def _read_keys_file(path: Path) -> dict[str, str]:
    text = Path(path).read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of API key to role")
    return {str(k): str(v) for k, v in data.items()}


def bearer_token(authorization: str | None, api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``X-API-Key``."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return api_key
