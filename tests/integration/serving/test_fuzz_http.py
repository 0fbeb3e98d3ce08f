"""Schemathesis against ``rlhf serve``'s own OpenAPI: generated requests to every route,
on the real server (tiny model, API keys, real broker). No answer may be a 5xx, and every
answer must match the schema it declares (errors included)."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import ExitStack

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from core.settings import KafkaSettings
from feedback.broker import EmbeddedBroker
from tests.fixtures.server import RemoteServer
from tests.integration.serving.schema_fuzz import fuzz_operations

pytestmark = [pytest.mark.engine, pytest.mark.kafka]

KEYS = {"sk-user": "user", "sk-admin": "admin"}
PUBLIC = ("/health", "/ready", "/metrics")


@pytest.fixture(scope="module")
def fuzz_server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-http")
    with ExitStack() as started:  # the broker stops even if the server never gets ready
        broker = started.enter_context(
            EmbeddedBroker(KafkaSettings(request_timeout_ms=2000), log_path=tmp / "tansu.log"))
        yield started.enter_context(RemoteServer(tiny_model, log_path=tmp / "server.log", env={
            "RLHF_PUBLISH_EVENTS": "true", "RLHF_FOLLOW_POLICY_EVENTS": "false",
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "RLHF_KAFKA__REQUEST_TIMEOUT_MS": "2000",
            "RLHF_REGISTRY__ROOT": str(tmp / "registry"),
            "RLHF_LIMITS__MAX_N": "2",  # keeps generated requests quick on CPUs
            "RLHF_AUTH__KEYS": json.dumps(KEYS)}))


@pytest.fixture(scope="module")
def schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


@pytest.mark.parametrize("key", ["sk-admin", "sk-user"])
def test_no_5xx_and_every_answer_matches_its_schema(schema, fuzz_server, key):
    answered: Counter[tuple[str, int]] = Counter()

    def check(case):
        response = case.call_and_validate(
            base_url=fuzz_server.url, timeout=60, headers={"Authorization": f"Bearer {key}"},
            checks=[not_a_server_error, response_schema_conformance])
        answered[(case.path, response.status_code)] += 1

    exercised = fuzz_operations(schema, check, max_examples=10 if key == "sk-admin" else 4)
    assert "POST /v1/completions" in exercised and "POST /v1/feedback/batch" in exercised
    assert sum(n for (path, _), n in answered.items() if path == "/v1/completions"), answered


def test_without_a_key_every_protected_route_is_401(schema, fuzz_server):
    def check(case):
        response = case.call(base_url=fuzz_server.url, timeout=60)
        assert response.status_code == 401, (case.path, response.text)

    fuzz_operations(schema, check, max_examples=3, skip=lambda path: path in PUBLIC)
