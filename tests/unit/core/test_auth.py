"""KeyRing keeps only SHA-256 digests of API keys and accepts digests from the keys file."""

from __future__ import annotations

import hashlib
import json

import pytest

from core.auth import KeyRing, hash_key
from core.errors import Forbidden, Unauthorized
from core.settings import AuthSettings

ADMIN, USER = "sk-admin-0123456789abcdef", "sk-user-0123456789abcdef"


def test_keys_are_not_kept_in_memory() -> None:
    ring = KeyRing({ADMIN: "admin", USER: "user"})
    held = repr(vars(ring))
    assert ADMIN not in held and USER not in held
    assert hashlib.sha256(ADMIN.encode()).digest() in {d for d, _ in ring._digests}


def test_identify_by_plain_key() -> None:
    ring = KeyRing({ADMIN: "admin", USER: "user"})
    assert ring.identify(USER).role == "user"
    admin = ring.identify(ADMIN)
    assert admin.role == "admin"
    assert admin.name == "key-" + hashlib.sha256(ADMIN.encode()).hexdigest()[:12]
    assert ADMIN not in admin.name


@pytest.mark.parametrize("key", [None, "", "sk-admin-0123456789abcdeX", ADMIN[:-1]])
def test_missing_or_unknown_key_is_unauthorized(key: str | None) -> None:
    with pytest.raises(Unauthorized):
        KeyRing({ADMIN: "admin"}).identify(key)


def test_a_digest_entry_accepts_its_key_and_not_itself() -> None:
    entry = hash_key(ADMIN)
    assert entry == "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest()
    ring = KeyRing({entry: "admin"})
    assert ring.identify(ADMIN).role == "admin"
    # The caller's name is the same whether the entry was the key or its digest.
    assert ring.identify(ADMIN).name == KeyRing({ADMIN: "admin"}).identify(ADMIN).name
    with pytest.raises(Unauthorized):
        ring.identify(entry)  # knowing the digest is not knowing the key


def test_digest_entries_load_from_a_keys_file(tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    upper = "sha256:" + hash_key(USER).removeprefix("sha256:").upper()
    path.write_text(f'"{hash_key(ADMIN)}": admin\n"{upper}": user\n')
    ring = KeyRing.from_settings(AuthSettings(keys_file=path))
    assert ring.identify(ADMIN).role == "admin"
    assert ring.identify(USER).role == "user"  # hex digits in either case

    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({hash_key(USER): "labeler"}))
    ring = KeyRing.from_settings(AuthSettings(keys={ADMIN: "admin"}, keys_file=as_json))
    assert len(ring) == 2 and ring.identify(USER).role == "labeler"


@pytest.mark.parametrize("entry", ["sha256:abc", "sha256:" + "z" * 64, "sha256:" + "a" * 66])
def test_a_malformed_digest_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        KeyRing({entry: "admin"})


def test_unknown_role_is_refused(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({hash_key(ADMIN): "root"}))
    with pytest.raises(ValueError, match="unknown roles"):
        KeyRing.from_settings(AuthSettings(keys_file=path))


def test_authorize_checks_the_role_of_the_digest() -> None:
    ring = KeyRing({hash_key(USER): "user", ADMIN: "admin"})
    assert ring.authorize(ADMIN, "admin").role == "admin"
    assert ring.authorize(USER, "user").feedback_source == "user"
    with pytest.raises(Forbidden):
        ring.authorize(USER, "labeler")


def test_no_keys_is_open_and_every_caller_is_admin() -> None:
    ring = KeyRing({})
    assert ring.open and len(ring) == 0
    assert ring.identify(None).role == "admin"
    assert not KeyRing({hash_key(USER): "user"}).open
