"""Fixtures of the Helm chart tests; the rendering helpers live in helm_chart.py."""

from __future__ import annotations

import pytest
from helm_chart import PROFILES, Rendered, render


@pytest.fixture(params=sorted(PROFILES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    """The objects one values profile renders (each profile rendered once per session)."""
    return render(request.param)
