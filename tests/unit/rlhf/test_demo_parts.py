"""The demo's instruction set, labelers' ranking and verdict: pure parts, no platform."""

import random

from rlhf.demo_report import Row, verdict, win_rate
from rlhf.demo_tasks import ideal_response, instruction_set, rank, topic_of
from training.synthetic import hidden_score


def test_held_out_prompts_are_never_train_prompts_and_split_by_topic():
    tasks = instruction_set()
    assert len(tasks.train) == 120 and len(tasks.held_out) == 40
    assert not set(tasks.train) & set(tasks.held_out)
    assert not {topic_of(p) for p in tasks.train} & {topic_of(p) for p in tasks.held_out}
    assert instruction_set() == tasks  # deterministic


def test_demonstrations_say_good_exactly_once_and_stay_on_topic():
    rng = random.Random(0)
    for prompt in instruction_set().train:
        answer = ideal_response(prompt, rng)
        assert hidden_score(answer) == 1
        assert topic_of(prompt) in answer


def test_labelers_rank_by_the_hidden_rule_with_ties():
    # counts 1, 0, 2, 0 → ranks 2, 3, 1, 3 (the two zeros tie)
    assert rank(["it is good", "no", "good, good", "meh"]) == [2, 3, 1, 3]


def test_win_rate_counts_ties_half():
    # wins 1, tie 1, loss 1, win 1 → (2 + 0.5) / 4
    assert win_rate([2, 1, 0, 1], [1, 1, 1, 0]) == 0.625


def _row(version: str, state: str, score: float, win: float) -> Row:
    return Row(version=version, recipe="ppo", state=state, gates="passed", live_at_s=0.0,
               data="", rm_accuracy=None, hidden_score=score, win_rate=win, rm_score=None,
               kl=None, sample="")


def test_verdict_needs_a_higher_score_and_a_majority_of_wins():
    first = _row("policy-0000", "retired", 0.1, 0.5)
    assert verdict([first, _row("policy-0002", "live", 0.9, 0.8)], "policy-0000")["beats_first"]
    assert not verdict([first, _row("policy-0002", "live", 0.9, 0.5)],
                       "policy-0000")["beats_first"]
    assert not verdict([first, _row("policy-0002", "live", 0.1, 0.6)],
                       "policy-0000")["beats_first"]
    live_first = _row("policy-0000", "live", 0.1, 0.5)
    assert not verdict([live_first], "policy-0000")["beats_first"]
