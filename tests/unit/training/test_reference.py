"""The KL anchor of a PPO lineage is its SFT version, never the parent PPO policy."""

import pytest

from core.registry import Registry
from deploy.gates import reference_for
from deploy.settings import GateSettings
from training.lineage import reference_of
from training.recipes.ppo import PPOConfig


def lineage(tmp_path) -> Registry:
    """policy-0000 base → 0001 SFT → 0002 PPO (records reference) → 0003 PPO (old manifest
    without `reference`, as PPO wrote them before) → 0004 PPO (records 0001)."""
    registry = Registry(tmp_path / "registry")
    src = tmp_path / "w"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    for n, (parent, config) in enumerate([(None, {}), ("policy-0000", {"recipe": "sft"}),
                           ("policy-0001", {"recipe": "ppo", "reference": "policy-0001"}),
                           ("policy-0002", {"recipe": "ppo"}),
                           ("policy-0003", {"recipe": "ppo", "reference": "policy-0001"})]):
        registry.create_version("policy", src, {"parent": parent, "config": config}, number=n)
    return registry


def test_sft_and_base_versions_are_their_own_reference(tmp_path):
    registry = lineage(tmp_path)
    assert reference_of(registry, "policy-0000") == "policy-0000"
    assert reference_of(registry, "policy-0001") == "policy-0001"


def test_ppo_chain_is_anchored_to_the_sft_version(tmp_path):
    registry = lineage(tmp_path)
    # 0002 records it; 0003 does not, so the parent chain 0003 → 0002 → 0001 (sft) decides
    assert [reference_of(registry, f"policy-000{i}") for i in (2, 3, 4)] == ["policy-0001"] * 3


def test_gates_measure_kl_against_the_lineages_sft_not_the_parent(tmp_path):
    registry = lineage(tmp_path)
    # today's fallback was manifest.parent: policy-0003 for 0004, policy-0002 for 0003
    for version in ("policy-0003", "policy-0004"):
        m = registry.get(version)
        assert reference_for(registry, m, GateSettings(), live="policy-0002") == "policy-0001"
    # an explicit setting still wins
    s = GateSettings(reference="policy-0000")
    assert reference_for(registry, registry.get("policy-0004"), s, "policy-0002") == \
        "policy-0000"


def test_ppo_config_names_the_reference():
    assert PPOConfig().reference is None  # None = the base's lineage SFT version
    assert PPOConfig(reference="policy-0001").reference == "policy-0001"
    with pytest.raises(ValueError):
        PPOConfig(reference="")
