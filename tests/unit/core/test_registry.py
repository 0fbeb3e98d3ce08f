"""The model registry: immutable versions, atomic writes, the live pointer and gates."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.registry import LIVE, PolicyEvent, Registry, RegistryError


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"\x00weights" * 100)
    (src / "config.json").write_text('{"hidden_size": 8}')
    (src / "sub" / "tokenizer.json").write_text("{}")
    return src


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def test_versions_are_numbered_per_kind_and_carry_hashes(registry, checkpoint):
    base = registry.register_base(checkpoint)
    a = registry.create_version("reward", checkpoint, {"parent": "policy-0000", "data_mark": 7,
                                                       "row_counts": {"rankings": 3}})
    b = registry.create_version("policy", checkpoint, {"parent": "policy-0000"})
    c = registry.create_version("reward", checkpoint, {"parent": "policy-0001"})
    assert [base.version, a.version, b.version, c.version] == [
        "policy-0000", "reward-0001", "policy-0001", "reward-0002"]
    got = registry.get("reward-0001")
    assert (got.parent, got.data_mark, got.row_counts) == ("policy-0000", 7, {"rankings": 3})
    assert {f.path for f in got.files} == {"model.safetensors", "config.json",
                                           "sub/tokenizer.json"}
    assert [m.version for m in registry.list("reward")] == ["reward-0001", "reward-0002"]
    assert registry.latest("policy").version == "policy-0001"
    assert (registry.path("reward-0002") / "sub" / "tokenizer.json").read_text() == "{}"
    assert registry.register_base(checkpoint).version == "policy-0000"  # idempotent


def test_verify_detects_tampering(registry, checkpoint):
    m = registry.create_version("policy", checkpoint, {})
    assert registry.verify(m.version) == []
    (registry.path(m.version) / "config.json").write_text('{"hidden_size": 9}')
    (registry.path(m.version) / "extra.bin").write_bytes(b"x")
    assert registry.verify(m.version) == ["config.json", "extra.bin"]


def test_failure_mid_copy_leaves_no_version(registry, checkpoint):
    registry.create_version("policy", checkpoint, {})
    (checkpoint / "zz-dangling").symlink_to(checkpoint / "missing")  # copy fails on it
    with pytest.raises(shutil.Error):
        registry.create_version("policy", checkpoint, {})
    assert [m.version for m in registry.list()] == ["policy-0001"]
    assert sorted(p.name for p in (registry.root / "policy").iterdir()) == ["policy-0001"]
    assert list((registry.root / ".tmp").iterdir()) == []  # the partial copy was removed
    (checkpoint / "zz-dangling").unlink()
    assert registry.create_version("policy", checkpoint, {}).version == "policy-0002"


KILL_AFTER_COPY = """
import os, signal, sys
import core.registry as r
def die(directory):  # the process dies after the files were copied, before the rename
    os.kill(os.getpid(), signal.SIGKILL)
r.hash_tree = die
r.Registry(sys.argv[1]).create_version("policy", sys.argv[2], {})
"""


def test_process_killed_mid_write_leaves_no_version(registry, checkpoint):
    registry.create_version("policy", checkpoint, {})
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_COPY, str(registry.root),
                           str(checkpoint)], cwd=Path(__file__).parents[2])
    assert proc.returncode == -signal.SIGKILL
    leftovers = list((registry.root / ".tmp").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert [m.version for m in registry.list()] == ["policy-0001"]
    assert registry.create_version("policy", checkpoint, {}).version == "policy-0002"
    assert registry.clean_staging(older_than_s=3600) == 0  # might still be a live writer
    assert registry.clean_staging(older_than_s=-1) == 1
    assert list((registry.root / ".tmp").iterdir()) == []


def test_a_taken_id_is_skipped_not_overwritten(registry, checkpoint):
    registry.create_version("policy", checkpoint, {})
    # another writer renamed its policy-0002 into place between our scan and our rename
    racer = registry.root / "policy" / "policy-0002"
    racer.mkdir()
    (racer / "manifest.json").write_text("{}")
    real_next = registry._next_number
    seen = []

    def stale_then_real(kind):  # the first scan still sees 0001 as the newest
        seen.append(kind)
        return 2 if len(seen) == 1 else real_next(kind)

    registry._next_number = stale_then_real
    m = registry.create_version("policy", checkpoint, {})
    assert m.version == "policy-0003"
    assert (racer / "manifest.json").read_text() == "{}"


def test_gates_are_stored_beside_the_immutable_manifest(registry, checkpoint):
    m = registry.create_version("policy", checkpoint, {"metrics": {"loss": 1.0}})
    manifest_bytes = (registry.path(m.version) / "manifest.json").read_bytes()
    registry.update_gates(m.version, {"status": "passed", "reward_delta": 0.3})
    assert registry.get(m.version).gates == {"status": "passed", "reward_delta": 0.3}
    assert (registry.path(m.version) / "manifest.json").read_bytes() == manifest_bytes
    assert registry.verify(m.version) == []


def test_live_pointer_and_history(registry, checkpoint):
    registry.register_base(checkpoint)
    registry.create_version("policy", checkpoint, {})
    reward = registry.create_version("reward", checkpoint, {})
    assert registry.live_policy() is None
    registry.set_live("policy-0000", "bootstrap")
    registry.set_live("policy-0001", "promote")
    registry.set_live("policy-0000", "rollback")
    assert registry.live_policy() == "policy-0000"
    assert [(r.version, r.previous, r.reason) for r in registry.history()] == [
        ("policy-0000", None, "bootstrap"), ("policy-0001", "policy-0000", "promote"),
        ("policy-0000", "policy-0001", "rollback")]
    assert json.loads((registry.root / LIVE).read_text())["version"] == "policy-0000"
    with pytest.raises(RegistryError, match="only a policy"):
        registry.set_live(reward.version, "oops")
    with pytest.raises(RegistryError, match="unknown version"):
        registry.set_live("policy-0042", "oops")
    assert Registry(registry.root).live_policy() == "policy-0000"  # survives a restart


def test_bad_version_ids_are_clear_errors(registry):
    with pytest.raises(RegistryError, match="not a version id"):
        registry.get("v1")
    with pytest.raises(RegistryError, match="unknown version"):
        registry.path("reward-0009")


def test_policy_event_round_trips():
    e = PolicyEvent(type="candidate", version="reward-0001", kind="reward", reason="trained")
    back = PolicyEvent.model_validate_json(e.model_dump_json())
    assert back == e and len(e.event_id) > 0 and e.schema_version >= 1
