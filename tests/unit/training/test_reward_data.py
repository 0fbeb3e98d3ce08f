"""Which rankings train a reward model: sources, the gold slice and the judge slice."""

from feedback.store.store import PreferenceGroup
from training.datasets import GOLD_SALT, JUDGE_SALT, in_slice, is_gate_prompt
from training.recipes.reward import RewardConfig, partition


def group(prompt: str, source: str = "labeler") -> PreferenceGroup:
    return PreferenceGroup(seq=0, prompt=prompt, responses=["a", "b"], ranks=[1, 2],
                           source=source, policy_version=None, request_id=None)


def test_user_feedback_is_recorded_but_trains_only_when_enabled():
    rows = [group("p-lab", "labeler"), group("p-adm", "admin"), group("p-usr", "user")]
    cfg = RewardConfig(gold_share=0.0)
    assert [g.prompt for g in partition(rows, cfg)[0]] == ["p-lab", "p-adm"]
    on = RewardConfig(gold_share=0.0, train_on_user_feedback=True)
    assert [g.prompt for g in partition(rows, on)[0]] == ["p-lab", "p-adm", "p-usr"]


def test_gold_prompts_never_train_and_judge_and_optimised_rms_split_the_rest():
    rows = [group(f"ranked prompt {i}") for i in range(400)]
    cfg = RewardConfig(gold_share=0.1, judge_share=0.3)
    train, gold = partition(rows, cfg)
    judge_train, judge_gold = partition(rows, cfg.model_copy(update={"role": "judge"}))
    gold_set = {g.prompt for g in gold}
    # a 10 % slice of 400: about 40 (binomial sd 6)
    assert gold_set == {g.prompt for g in judge_gold} and 20 <= len(gold_set) <= 60
    assert not gold_set & {g.prompt for g in train + judge_train}
    # the optimised and the judge RM never share a training prompt, and together cover
    # every prompt that is neither gold nor one of the deploy gates' held-out slice
    assert not {g.prompt for g in train} & {g.prompt for g in judge_train}
    gate = {g.prompt for g in rows if is_gate_prompt(g.prompt, cfg.gate_holdout_share)}
    assert not gate & {g.prompt for g in train + judge_train}
    assert len(train) + len(judge_train) + len(gold_set | gate) == 400
    assert all(in_slice(g.prompt, 0.3, JUDGE_SALT) for g in judge_train)
    assert all(in_slice(g.prompt, 0.1, GOLD_SALT) for g in gold)
    # no judge slice: the optimised RM trains on every non-gold prompt
    assert len(partition(rows, RewardConfig(gold_share=0.1))[0]) == 400 - len(gold_set | gate)
