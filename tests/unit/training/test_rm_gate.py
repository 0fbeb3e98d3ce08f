"""The reward-model quality gate's arithmetic and which RM PPO optimises."""

import pytest

from core.registry import Registry
from training.lineage import accepted_reward
from training.rm_gate import MIN_GROUPS, compare, pair_accuracy


def test_pair_accuracy_counts_strict_pairs_and_half_for_equal_scores():
    # ranks 1 > 2 > 3: pairs (a,b) (a,c) (b,c); scores order (a,b) right, (a,c) equal, (b,c) wrong
    assert pair_accuracy([2.0, 1.0, 2.0], [1, 2, 3]) == pytest.approx(0.5)
    assert pair_accuracy([3.0, 2.0, 1.0], [1, 2, 3]) == 1.0
    assert pair_accuracy([1.0, 2.0], [1, 1]) is None  # a tie gives no pair


def test_a_new_rm_shown_worse_on_unseen_rankings_is_refused():
    ranks = [[1, 2, 3, 4]] * 12
    right, wrong = [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]
    # the current RM orders all 12 correctly, the new one gets 2 of 12 groups right
    worse = compare([right] * 2 + [wrong] * 10, [right] * 12, ranks, 0.9)
    assert worse["status"] == "refused" and worse["upper"] < 0
    assert "refused: shown worse" in worse["reason"] and worse["groups"] == 12
    # a little worse on a few prompts is within the interval: accepted
    close = compare([right] * 10 + [wrong] * 2, [right] * 11 + [wrong], ranks, 0.9)
    assert close["difference"] < 0 and close["lower"] < 0 < close["upper"]
    assert close["status"] == "accepted"
    mixed = compare([right] * 6 + [wrong] * 6, [wrong] * 6 + [right] * 6, ranks, 0.9)
    assert mixed["status"] == "accepted" and mixed["lower"] < 0 < mixed["upper"]
    # too few unseen prompts to tell: accepted, and the reason says so
    few = compare([wrong] * (MIN_GROUPS - 1), [right] * (MIN_GROUPS - 1),
                  ranks[:MIN_GROUPS - 1], 0.9)
    assert few["status"] == "accepted" and "unchecked" in few["reason"]


def test_ppo_optimises_the_newest_rm_that_is_no_judge_and_was_not_refused(tmp_path):
    registry = Registry(tmp_path / "registry")
    src = tmp_path / "w"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    for role in ("optimised", "optimised", "judge", "optimised"):
        registry.create_version("reward", src, {"config": {"role": role}})
    assert accepted_reward(registry).version == "reward-0004"
    registry.update_gates("reward-0004", {"kind": "reward_quality", "status": "refused"})
    # 0003 is a judge: PPO never optimises it, so 0002 stays the accepted one
    assert accepted_reward(registry).version == "reward-0002"
    assert accepted_reward(registry, before="reward-0002").version == "reward-0001"
    assert accepted_reward(registry, before="reward-0001") is None
