"""Policy events from rlhf.policy: decoding, replica versions, the rollback target."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from core.events import InvalidEvent, encode_event
from core.registry import PolicyEvent, Registry
from deploy.controller import gate_status, rollback_target
from deploy.notices import ReplicaTable, decode_policy_event


def raw(type_, version, replica=None, at=None, reason=""):
    data = json.loads(encode_event(PolicyEvent(type=type_, version=version, reason=reason)))
    if at is not None:
        data["created_at"] = at.isoformat()
    if replica is not None:
        data["replica"] = replica
    return json.dumps(data).encode()


def test_policy_event_round_trips_and_bad_ones_raise_invalid_event():
    event = PolicyEvent(type="promote", version="policy-0002", reason="gates passed")
    notice = decode_policy_event(encode_event(event))
    assert notice.event == event and notice.replica is None
    assert decode_policy_event(raw("swap_failed", "policy-0002", "pod-a")).replica == "pod-a"
    with pytest.raises(InvalidEvent, match="type"):
        decode_policy_event(b'{"type": "deleted", "version": "policy-0001"}')
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode_policy_event(b"{")


def test_replica_table_keeps_last_version_and_failed_swaps():
    t0 = datetime.now(UTC)
    table = ReplicaTable()
    for message in [raw("promote", "policy-0001", "pod-a", t0),
                    raw("promote", "policy-0001", "pod-b", t0),
                    raw("swap_failed", "policy-0002", "pod-a", t0 + timedelta(seconds=2), "bad"),
                    raw("promote", "policy-0002", "pod-b", t0 + timedelta(seconds=2)),
                    raw("promote", "policy-0000", "pod-b", t0 + timedelta(seconds=1)),  # late
                    raw("candidate", "policy-0003")]:  # not from a replica
        table.apply(decode_policy_event(message))
    a, b = table.snapshot()
    assert (a.replica, a.version, a.failed_version, a.reason) == ("pod-a", "policy-0001",
                                                                  "policy-0002", "bad")
    assert (b.replica, b.version, b.last_event) == ("pod-b", "policy-0002", "promote")


def test_rollback_target_skips_live_and_bad_versions(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.txt").write_text("w")
    registry = Registry(tmp_path / "registry")
    for _ in range(3):
        registry.create_version("policy", tmp_path / "src", {})
    registry.set_live("policy-0001", "bootstrap")
    assert rollback_target(registry, "policy-0001") is None
    registry.set_live("policy-0002", "promote")
    registry.set_live("policy-0003", "promote")
    assert rollback_target(registry, "policy-0003") == "policy-0002"
    # 0003 was rolled back from; rolling back again from 0002 goes to 0001, not 0003
    registry.update_gates("policy-0003", {"rolled_back": {"to": "policy-0002"}})
    registry.set_live("policy-0002", "rollback")
    assert rollback_target(registry, "policy-0002") == "policy-0001"


def test_gate_status_prefers_bad_marks():
    assert gate_status({}) == "not evaluated"
    assert gate_status({"status": "passed"}) == "passed"
    assert gate_status({"status": "passed", "swap_failed": {}}) == "swap_failed"
