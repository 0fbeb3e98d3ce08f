"""API keys with roles: user < labeler < admin (shared by every process with an API).

Keys come from settings (``RLHF_AUTH__KEYS``) or a JSON/YAML file. A caller's role decides
what it may call and is the *source* recorded on its feedback; the request body never
decides it. With no keys configured the API is open and every caller is an admin: the
local default, announced in the start-up log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import Request

from feedback.settings import AuthSettings

log = logging.getLogger(__name__)


class AuthError(Exception):
    """401 (no or unknown key) or 403 (role too low); ``status`` says which."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message, self.status = message, status


ROLES = ("user", "labeler", "admin")


@dataclass(frozen=True)
class Caller:
    name: str | None  # a stable, non-secret id of the key; None when the API is open
    role: str

    @property
    def feedback_source(self) -> str:
        return "user" if self.role == "user" else "labeler"


class KeyRing:
    def __init__(self, keys: dict[str, str]):
        self.keys = keys

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
        return not self.keys

    def identify(self, key: str | None) -> Caller:
        if self.open:
            return Caller(name=None, role="admin")
        if not key:
            raise AuthError("Missing API key: send `Authorization: Bearer <key>`.", 401)
        role = self.keys.get(key)
        if role is None:
            raise AuthError("Invalid API key.", 401)
        return Caller(name="key-" + hashlib.sha256(key.encode()).hexdigest()[:12], role=role)


def _read_keys_file(path: Path) -> dict[str, str]:
    text = Path(path).read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of API key to role")
    return {str(k): str(v) for k, v in data.items()}


def bearer_token(authorization: str | None, api_key: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return api_key


def require_role(minimum: str):
    """FastAPI dependency: the caller, if its key has at least ``minimum`` role."""
    needed = ROLES.index(minimum)

    def dependency(request: Request) -> Caller:
        ring: KeyRing = request.app.state.keyring
        caller = ring.identify(bearer_token(request.headers.get("authorization"),
                                            request.headers.get("x-api-key")))
        if ROLES.index(caller.role) < needed:
            raise AuthError(f"This endpoint needs the `{minimum}` role.", 403)
        return caller

    return dependency
