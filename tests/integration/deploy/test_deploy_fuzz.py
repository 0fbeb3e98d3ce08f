"""Schemathesis against the deploy controller's admin API (its own OpenAPI), over ASGI,
with a real registry, a real SQLite store and the real broker: no generated request may
get a 5xx, and every answer must match its declared schema."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from core.auth import KeyRing
from deploy.api import create_app
from deploy.controller import DeployController
from deploy.settings import DeploySettings
from tests.integration.serving.schema_fuzz import fuzz_operations

pytestmark = pytest.mark.kafka

KEYS = {"sk-admin": "admin", "sk-user": "user"}


@pytest.fixture
def admin_app(registry, empty_store, kafka_broker, tmp_path):
    registry.set_live("policy-0000", "base")
    settings = DeploySettings()
    settings.registry.root = registry.root
    settings.database.url = f"sqlite:///{tmp_path / 'feedback.db'}"
    settings.kafka = kafka_broker.kafka
    controller = DeployController(settings, registry=registry, store=empty_store)
    yield create_app(controller, KeyRing(KEYS))
    controller.close()


@pytest.mark.parametrize("key", ["sk-admin", "sk-user", None])
def test_admin_api_never_answers_5xx_and_matches_its_schema(admin_app, key):
    schema = schemathesis.openapi.from_asgi("/openapi.json", admin_app)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def check(case):
        case.call_and_validate(headers=headers,
                               checks=[not_a_server_error, response_schema_conformance])

    exercised = fuzz_operations(schema, check, max_examples=25 if key == "sk-admin" else 5)
    assert "POST /v1/deploy/promote" in exercised
