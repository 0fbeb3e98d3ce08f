"""Reading the controller's ``rlhf:rollout_outcomes`` counter from its ``GET /metrics``."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def rollout_outcomes(metrics_text: str) -> dict[tuple[str, str], float]:
    """(outcome, reason) → count, for the series above 0 (every pair is exported at 0)."""
    return {(s.labels["outcome"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(metrics_text)
            for s in family.samples
            if s.name == "rlhf:rollout_outcomes_total" and s.value}
