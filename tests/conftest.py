"""Shared fixtures. Each family lives in tests/fixtures/ and is registered here."""

import sys
from pathlib import Path

# The repo's packages import without installing, under plain `pytest` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.kafka",
    "tests.fixtures.models",
    "tests.fixtures.server",
]
