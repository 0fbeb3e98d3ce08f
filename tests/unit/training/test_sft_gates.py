"""The SFT gates' verdicts (pure functions) and what an SFT candidate is compared with."""

from __future__ import annotations

from core.registry import Registry
from deploy.gates import Bootstrap, current_sft, lm_loss_gate, sft_reward_gate


def test_lm_loss_must_not_be_worse_and_strictly_better_than_a_pretrained_base():
    assert lm_loss_gate(2.0, 2.0, strict=False).passed
    assert not lm_loss_gate(2.0, 2.0, strict=True).passed
    assert lm_loss_gate(1.9, 2.0, strict=True).passed
    worse = lm_loss_gate(2.1, 2.0, strict=False)
    assert not worse.passed and "2.1000 vs current 2.0000" in worse.reason


def test_reward_not_worse_fails_only_when_the_whole_interval_is_below_zero():
    boot = Bootstrap(confidence=0.9, resamples=200, seed=0)
    same = sft_reward_gate([1.0, 1.0, 0.0, 0.0] * 4, [0.0, 0.0, 1.0, 1.0] * 4, 2, boot)
    assert same.passed and same.lower < 0 <= same.upper
    worse = sft_reward_gate([0.0] * 16, [1.0] * 16, 2, boot)
    assert not worse.passed and worse.upper < 0 and "upper bound < 0" in worse.reason


def test_an_sft_is_compared_with_the_newest_older_sft_that_passed_else_its_base(tmp_path):
    registry = Registry(tmp_path / "registry")
    src = tmp_path / "w"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    for n, config in enumerate([{}, {"recipe": "sft"}, {"recipe": "sft"}, {"recipe": "sft"}]):
        registry.create_version("policy", src, {"parent": "policy-0000" if n else None,
                                                "config": config}, number=n)
    assert current_sft(registry, registry.get("policy-0001")) == "policy-0000"
    registry.update_gates("policy-0001", {"status": "passed"})
    registry.update_gates("policy-0002", {"status": "failed"})
    assert current_sft(registry, registry.get("policy-0003")) == "policy-0001"
    assert current_sft(registry, registry.get("policy-0002")) == "policy-0001"
