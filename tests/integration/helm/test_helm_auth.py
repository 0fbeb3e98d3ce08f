"""Secure by default: with no keys the chart generates them; open access must be asked for."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from helm_chart import NAMESPACE, RELEASE, chart, render, render_error

from core.auth import KeyRing
from core.errors import Forbidden

pytestmark = pytest.mark.helm


def _container(rendered: Any, component: str) -> dict[str, Any]:
    return rendered.one("Deployment", component)["spec"]["template"]["spec"]["containers"][0]


def _notes(values: dict[str, Any]) -> str:
    with chart() as c:
        out = c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_no_keys_generates_one_key_per_role_and_the_pods_get_only_digests() -> None:
    rendered = render("default")
    secret = rendered.by_kind["Secret"][0]["metadata"]["name"]
    keys = {role: rendered.secret_value(secret, f"{role}-key")
            for role in ("admin", "labeler", "user")}
    assert all(k and k.startswith(f"sk-{r}-") and len(k) >= 40 for r, k in keys.items()), keys
    assert len(set(keys.values())) == 3

    for component in ("serving", "deploy-controller"):
        env = rendered.container_env(_container(rendered, component))
        digests = json.loads(env["RLHF_AUTH__KEYS"])
        assert digests == {"sha256:" + hashlib.sha256(k.encode()).hexdigest(): role
                           for role, k in keys.items()}
        assert not any(k in env["RLHF_AUTH__KEYS"] for k in keys.values())
        assert "RLHF_AUTH__ALLOW_OPEN" not in env
        ring = KeyRing(digests)  # what the process builds from that env
        assert not ring.open
        assert ring.authorize(keys["admin"], "admin").role == "admin"
        with pytest.raises(Forbidden):
            ring.authorize(keys["user"], "admin")


def test_notes_say_how_to_read_the_generated_keys() -> None:
    notes = _notes({})
    assert "jsonpath='{.data.admin-key}' | base64 -d" in notes
    assert f"get secret {RELEASE}" in notes and "OPEN" not in notes
    assert "admin-key" not in _notes({"auth": {"keys": {"sk-admin-0001": "admin"}}})


def test_given_keys_are_stored_as_digests() -> None:
    rendered = render("external-kafka-and-db")
    stored = json.loads(rendered.secret_value(RELEASE, "api-keys.json"))
    given = rendered.values["auth"]["keys"]
    assert stored == {"sha256:" + hashlib.sha256(k.encode()).hexdigest(): r
                      for k, r in given.items()}
    assert rendered.secret_value(RELEASE, "admin-key") is None  # nothing generated


def test_digest_entries_pass_through_unchanged() -> None:
    rendered = render("workload-extras")
    stored = json.loads(rendered.secret_value(RELEASE, "api-keys.json"))
    assert stored["sha256:" + "ab" * 32] == "admin"
    assert stored["sha256:" + hashlib.sha256(b"sk-user-0001").hexdigest()] == "user"


def test_an_existing_secret_is_used_as_is() -> None:
    rendered = render("existing-secrets")
    for component in ("serving", "deploy-controller"):
        ref = next(e["valueFrom"]["secretKeyRef"] for e in _container(rendered, component)["env"]
                   if e["name"] == "RLHF_AUTH__KEYS")
        assert ref == {"name": "api-keys", "key": "keys.json"}
    assert rendered.get("Secret", RELEASE) is None or rendered.secret_value(
        RELEASE, "api-keys.json") is None


def test_open_access_only_when_asked_and_then_serving_is_told() -> None:
    rendered = render("open-access")
    assert rendered.get("Secret", RELEASE) is None or rendered.secret_value(
        RELEASE, "api-keys.json") is None
    for component in ("serving", "deploy-controller"):
        env = rendered.container_env(_container(rendered, component))
        assert "RLHF_AUTH__KEYS" not in env
        assert env["RLHF_AUTH__ALLOW_OPEN"] == "true"
    assert "auth.allowOpen is true" in _notes({"auth": {"allowOpen": True}})


@pytest.mark.parametrize("auth", [{"allowOpen": True, "keys": {"sk-admin-0001": "admin"}},
                                  {"allowOpen": True, "existingSecret": "api-keys"}])
def test_open_access_and_keys_exclude_each_other(auth: dict[str, Any]) -> None:
    assert "auth.allowOpen is true while auth.keys or auth.existingSecret is set" in \
        render_error({"auth": auth})


def test_allow_open_must_be_a_boolean() -> None:
    assert "/auth/allowOpen': got string, want boolean" in render_error(
        {"auth": {"allowOpen": "yes"}})
