"""Fleet table, staged-rollout sizing and the online canary policy (no engine, no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from core.events import CompletionChoice, CompletionRecord, Rating, encode_event
from core.registry import PolicyEvent
from deploy.notices import ReplicaTable, decode_policy_event
from deploy.online import (
    MetricTotals,
    OnlinePolicy,
    Samples,
    SignalRule,
    compare,
    decide,
    feedback_samples,
    histogram_mean_var,
    proportion_diff,
    regression,
)
from deploy.rollout import ROLLOUT_OUTCOMES, RolloutMetrics, max_unavailable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def beat(replica, version, at, ready=True):
    return decode_policy_event(encode_event(PolicyEvent(
        type="heartbeat", version=version, replica=replica, url=f"http://{replica}:8000",
        ready=ready, created_at=at)))


def report(type_, replica, version, at):
    return decode_policy_event(encode_event(PolicyEvent(
        type=type_, version=version, replica=replica, created_at=at, command_id="c1")))


def test_heartbeats_fill_the_fleet_table_and_stale_replicas_drop_out():
    table = ReplicaTable()
    table.apply(beat("a", "policy-0001", NOW))
    table.apply(beat("b", "policy-0001", NOW - timedelta(seconds=30)))
    table.apply(report("swapped", "a", "policy-0002", NOW + timedelta(seconds=1)))
    table.apply(beat("a", "policy-0001", NOW - timedelta(seconds=5)))  # late, older: ignored
    rows = table.snapshot(stale_after_s=15, now=NOW + timedelta(seconds=2))
    assert [r.replica for r in rows] == ["a"]  # b was last heard from 32 s ago
    a = rows[0]
    assert (a.version, a.last_event, a.url, a.ready) == ("policy-0002", "swapped",
                                                         "http://a:8000", True)
    table.apply(beat("a", "policy-0002", NOW + timedelta(seconds=3), ready=False))
    assert table.snapshot()[0].ready is False
    assert len(table.snapshot()) == 2  # without a staleness bound, everyone


def test_swap_failed_keeps_the_served_version():
    table = ReplicaTable()
    table.apply(beat("a", "policy-0001", NOW))
    table.apply(report("swap_failed", "a", "policy-0002", NOW + timedelta(seconds=1)))
    a = table.snapshot()[0]
    assert (a.version, a.failed_version) == ("policy-0001", "policy-0002")


@pytest.mark.parametrize("setting,size,expected", [
    ("1", 3, 1), ("2", 3, 2), ("25%", 8, 2), ("25%", 3, 1), ("100%", 3, 3), ("0", 3, 1)])
def test_max_unavailable_counts_and_shares(setting, size, expected):
    assert max_unavailable(setting, size) == expected


def test_every_rollout_outcome_is_exported_at_zero_before_the_first():
    """rate()/increase() see a rollout's first outcome only if its series existed before."""
    metrics = RolloutMetrics()

    def count(outcome: str, reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "rlhf:rollout_outcomes_total", {"outcome": outcome, "reason": reason})

    pairs = [(o, r) for o, reasons in ROLLOUT_OUTCOMES.items() for r in reasons]
    assert len(pairs) == 9 and {count(o, r) for o, r in pairs} == {0.0}
    metrics.finished("rolled_back", "canary")
    metrics.finished("rolled_back", "canary")
    assert count("rolled_back", "canary") == 2 and count("failed", "swap_failed") == 0
    assert count("promoted", "canary") is None  # only the listed pairs exist


def test_intervals_cover_the_difference():
    d, lo, hi = proportion_diff(10, 100, 1, 100, 0.9)
    assert lo < d < hi and lo > 0  # 10 % vs 1 % errors: worse with confidence
    d, lo, hi = proportion_diff(1, 100, 1, 100, 0.9)
    assert lo < 0 < hi
    mean, var = histogram_mean_var({0.1: 5, 0.5: 10, float("inf"): 10}, 2.0, 10)
    assert mean == pytest.approx(0.2) and var > 0


def ratings(mean, n, spread=0.5):
    return [mean + spread * ((i % 3) - 1) for i in range(n)]


POLICY = OnlinePolicy(window_s=60, signals={
    "error_rate": SignalRule(max_worse=0.05, min_samples=10),
    "rating": SignalRule(max_worse=0.5, min_samples=8)})


def test_policy_rolls_back_worse_ratings_forwards_equal_and_holds_without_data():
    live = Samples(requests=200, errors=0, ratings=ratings(4.0, 20))
    worse = Samples(requests=200, errors=0, ratings=ratings(1.5, 20))
    same = Samples(requests=200, errors=0, ratings=ratings(4.0, 20))
    few = Samples(requests=200, errors=0, ratings=ratings(4.0, 3))
    d = decide(POLICY, "c", "l", worse, live, 10, NOW)
    assert d.action == "rollback" and "rating worse" in d.reason
    rating = next(s for s in d.signals if s.signal == "rating")
    assert rating.low > 0.5 and rating.canary == pytest.approx(1.475)
    assert decide(POLICY, "c", "l", same, live, 10, NOW).action == "forward"
    held = decide(POLICY, "c", "l", few, live, 10, NOW)
    assert held.action == "hold" and "rating (insufficient" in held.reason
    timed_out = decide(POLICY, "c", "l", few, live, 61, NOW)
    assert timed_out.action == "rollback" and "window" in timed_out.reason


def test_error_rate_and_length_signals():
    rule = SignalRule(max_worse=0.02, min_samples=50)
    bad = compare("error_rate", Samples(requests=200, errors=30), Samples(requests=200),
                  rule, 0.9)
    assert bad.verdict == "worse"
    length = compare("length", Samples(lengths=[40] * 10 + [44] * 10),
                     Samples(lengths=[10] * 10 + [12] * 10),
                     SignalRule(max_worse=0.5, min_samples=5), 0.9)
    assert length.verdict == "worse" and length.worse > 2  # answers 3.8x as long


def test_regression_compares_new_live_with_previous():
    policy = OnlinePolicy(regression_margin=0.5, regression_min_ratings=8)
    assert regression(policy, "n", "p", ratings(2.0, 20), ratings(4.0, 20)).verdict == "worse"
    assert regression(policy, "n", "p", ratings(4.0, 20), ratings(4.0, 20)).verdict == "ok"


def test_policy_yaml_loads_and_refuses_unknown_keys(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("window_s: 30\ninterval_s: 2\nsignals:\n  rating: {max_worse: 0.3, "
                    "min_samples: 5}\n")
    policy = OnlinePolicy.load(path)
    assert policy.window_s == 30 and list(policy.signals) == ["rating"]
    path.write_text("window: 30\n")
    with pytest.raises(ValueError, match="window"):
        OnlinePolicy.load(path)
    assert OnlinePolicy.load(None).signals["error_rate"].required


METRICS = """\
# HELP rlhf:version_requests_total x
rlhf:version_requests_total{outcome="ok",version="policy-0001"} 7.0
rlhf:version_requests_total{outcome="error",version="policy-0001"} 1.0
rlhf:version_request_latency_seconds_bucket{le="0.5",version="policy-0001"} 5.0
rlhf:version_request_latency_seconds_bucket{le="+Inf",version="policy-0001"} 7.0
rlhf:version_request_latency_seconds_sum{version="policy-0001"} 3.5
rlhf:requests_total{endpoint="completions",status="200"} 9.0
"""


def test_metric_totals_sum_replicas_and_subtract_the_baseline():
    base, now = MetricTotals(), MetricTotals()
    base.add_text(METRICS)
    now.add_text(METRICS)
    now.add_text(METRICS)  # a second replica
    s = now.minus(base, "policy-0001")
    assert (s.requests, s.errors, s.latency_sum) == (8, 1, 3.5)
    assert s.latency_buckets == {0.5: 5.0, float("inf"): 7.0}
    assert now.minus(base, "policy-0009").requests == 0


def test_feedback_samples_join_ratings_to_versions(feedback_store):
    t0 = datetime.now(UTC)
    events = []
    for i, (version, score) in enumerate([("policy-0001", 4.0), ("policy-0002", 1.0),
                                          ("policy-0002", 2.0)]):
        events.append(CompletionRecord(
            request_id=f"r{i}", policy_version=version, model="tiny", endpoint="completions",
            prompt="p", completion_tokens=5 + i,
            choices=[CompletionChoice(index=0, text="t", completion_tokens=5 + i)]))
        events.append(Rating(request_id=f"r{i}", choice=0, score=score))
    old = CompletionRecord(request_id="old", policy_version="policy-0002", model="tiny",
                           endpoint="completions", prompt="p", created_at=t0 - timedelta(hours=1),
                           choices=[CompletionChoice(index=0, text="t")])
    feedback_store.persist([*events, old, Rating(request_id="old", choice=0, score=5.0,
                                                 created_at=t0 - timedelta(hours=1))])
    got = feedback_samples(feedback_store, ["policy-0001", "policy-0002"],
                           t0 - timedelta(minutes=1))
    assert got["policy-0001"].ratings == [4.0]
    assert sorted(got["policy-0002"].ratings) == [1.0, 2.0]  # the hour-old one is outside
    assert sorted(got["policy-0002"].lengths) == [6, 7]
    everything = feedback_samples(feedback_store, ["policy-0002"], None)
    assert sorted(everything["policy-0002"].ratings) == [1.0, 2.0, 5.0]


def test_json_of_a_swap_event_names_its_targets():
    event = PolicyEvent(type="swap", version="policy-0002", targets=["a"])
    assert json.loads(encode_event(event))["targets"] == ["a"]
