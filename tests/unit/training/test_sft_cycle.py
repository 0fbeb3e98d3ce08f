"""The cycle's SFT stage: when SFT is due, which demonstrations train, and which policy
PPO starts from once an SFT has (or has not) passed its gates. Real SQLite store, real
registry on disk; the trainers given to run_cycle write real registry versions."""

from __future__ import annotations

import pytest

from core.events import Demonstration
from core.registry import Registry
from feedback.store import FeedbackStore
from training.cycle import (
    DEFAULT_MIN_NEW_DEMONSTRATIONS,
    cycle_parent,
    lineage_base,
    pending_sft,
    ppo_due,
    run_cycle,
    sft_base,
    sft_due,
)
from training.recipes.sft import split_demonstrations, trainable
from training.settings import TrainSettings


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def registry(tmp_path) -> Registry:
    reg = Registry(tmp_path / "registry")
    add(reg, tmp_path, None, {})  # policy-0000: the pretrained base
    reg.set_live("policy-0000", "base")
    return reg


def add(registry: Registry, tmp_path, parent: str | None, config: dict, kind: str = "policy",
        data_mark: int = 0) -> str:
    src = tmp_path / "w"
    src.mkdir(exist_ok=True)
    (src / "w.bin").write_bytes(b"x")
    number = len(registry.list(kind)) + (kind == "reward")  # policy-0000, reward-0001
    return registry.create_version(kind, src, {"parent": parent, "config": config,
                                               "data_mark": data_mark}, number=number).version


def demos(n: int, source: str, start: int = 0) -> list[Demonstration]:
    return [Demonstration(prompt=f"prompt {i}", response="good", source=source)
            for i in range(start, start + n)]


def test_one_default_for_train_cycle_and_rlhf_up():
    from rlhf.up import UpSettings

    assert DEFAULT_MIN_NEW_DEMONSTRATIONS == TrainSettings().min_new_demonstrations
    assert UpSettings().min_new_demonstrations == DEFAULT_MIN_NEW_DEMONSTRATIONS


def test_only_labeler_and_admin_demonstrations_count_unless_enabled(store, registry):
    store.persist(demos(3, "labeler") + demos(2, "admin", 3) + demos(4, "user", 5))
    assert [d.source for d in store.demonstrations()].count("user") == 4
    assert len(trainable(store.demonstrations(), False)) == 5
    assert len(trainable(store.demonstrations(), True)) == 9
    assert sft_due(store, registry, 5).due
    assert not sft_due(store, registry, 6).due
    assert "only 5 new labeler/admin demonstrations" in sft_due(store, registry, 6).reason
    assert sft_due(store, registry, 9, train_on_user_feedback=True).due


def test_sft_due_counts_after_the_newest_sft_versions_mark(store, registry, tmp_path):
    store.persist(demos(4, "labeler"))
    assert sft_due(store, registry, 4).due
    # a failed SFT still consumes its data: the next one waits for new demonstrations
    v = add(registry, tmp_path, "policy-0000", {"recipe": "sft"},
            data_mark=store.high_water_mark())
    registry.update_gates(v, {"status": "failed"})
    assert sft_due(store, registry, 1).reason.startswith("sft: only 0 new")
    store.persist(demos(2, "labeler", 10))
    assert sft_due(store, registry, 2).due


def test_held_out_slice_is_stable_as_demonstrations_arrive():
    few = demos(40, "labeler")
    many = demos(400, "labeler")
    _, held_few = split_demonstrations(few, 0.2)
    train_many, held_many = split_demonstrations(many, 0.2)
    assert held_few and {d.prompt for d in held_few} <= {d.prompt for d in held_many}
    # no later SFT trains on an earlier SFT's held-out prompts, and vice versa
    assert not {d.prompt for d in train_many} & {d.prompt for d in held_few}


def test_an_sft_waiting_for_its_gates_holds_ppo_and_a_failed_one_is_never_used(
        registry, tmp_path):
    add(registry, tmp_path, "policy-0000", {}, kind="reward")  # reward-0001
    sft = add(registry, tmp_path, "policy-0000", {"recipe": "sft"})
    assert pending_sft(registry).version == sft
    assert ppo_due(registry).reason == f"ppo: SFT candidate {sft} awaits its gates"
    registry.update_gates(sft, {"status": "failed"})
    assert pending_sft(registry) is None and lineage_base(registry) is None
    assert cycle_parent(registry) == "policy-0000"  # the failed SFT is not used
    assert ppo_due(registry).reason == "ppo: train policy-0000 against reward-0001"


def test_ppo_starts_from_the_newest_sft_that_passed_not_the_live_ppo_policy(
        registry, tmp_path):
    sft1 = add(registry, tmp_path, "policy-0000", {"recipe": "sft"})
    registry.update_gates(sft1, {"status": "passed"})
    registry.set_live(sft1, "promote")
    ppo1 = add(registry, tmp_path, sft1, {"recipe": "ppo", "reference": sft1,
                                          "reward_model": "reward-0001"})
    registry.update_gates(ppo1, {"status": "passed"})
    registry.set_live(ppo1, "promote")
    assert cycle_parent(registry) == ppo1  # same lineage: continue from the live policy
    sft2 = add(registry, tmp_path, "policy-0000", {"recipe": "sft"})
    assert cycle_parent(registry) == ppo1  # not gated yet
    registry.update_gates(sft2, {"status": "passed"})
    assert lineage_base(registry).version == sft2
    assert cycle_parent(registry) == sft2  # a new lineage starts from the new SFT
    assert sft_base(registry) == "policy-0000"
    ppo2 = add(registry, tmp_path, sft2, {"recipe": "ppo", "reference": sft2})
    registry.set_live(ppo2, "promote")
    assert cycle_parent(registry) == ppo2


def test_a_forced_sft_is_usable_and_before_any_live_failed_sfts_are_skipped(tmp_path):
    registry = Registry(tmp_path / "registry")
    add(registry, tmp_path, None, {})
    failed = add(registry, tmp_path, "policy-0000", {"recipe": "sft"})
    registry.update_gates(failed, {"status": "failed"})
    assert cycle_parent(registry) == "policy-0000"
    forced = add(registry, tmp_path, "policy-0000", {"recipe": "sft"})
    registry.set_live(forced, "promote (forced)")
    assert lineage_base(registry).version == forced
    assert cycle_parent(registry) == forced


def test_run_cycle_runs_sft_first_and_ppo_waits_for_its_verdict(store, registry, tmp_path):
    store.persist(demos(6, "labeler"))
    add(registry, tmp_path, "policy-0000", {}, kind="reward")
    made: list[str] = []

    def train_sft():
        v = add(registry, tmp_path, "policy-0000", {"recipe": "sft"},
                data_mark=store.high_water_mark())
        made.append(v)
        return registry.get(v)

    def must_not_run():
        raise AssertionError("not due")

    out = run_cycle(store=store, registry=registry, min_new_rankings=1000,
                    train_reward=must_not_run, train_ppo=must_not_run, train_sft=train_sft,
                    min_new_demonstrations=6)
    assert out.versions == made == ["policy-0001"]
    assert out.reasons[0].startswith("sft: 6 new labeler/admin demonstrations")
    assert out.reasons[-1] == "ppo: SFT candidate policy-0001 awaits its gates"
    again = run_cycle(store=store, registry=registry, min_new_rankings=1000,
                      train_reward=must_not_run, train_ppo=must_not_run, train_sft=train_sft,
                      min_new_demonstrations=6)
    assert again.did_nothing


def test_the_gate_slice_never_trains_sft_or_reward_models():
    from training.datasets import is_gate_prompt
    from training.recipes.reward import RewardConfig, partition
    from training.synthetic import synthetic_rankings

    rows = demos(200, "labeler")
    gate = [d for d in rows if is_gate_prompt(d.prompt, 0.1)]
    assert 5 <= len(gate) <= 40  # a 10 % hash slice of 200 prompts
    kept = trainable(rows, False, gate_holdout_share=0.1)
    assert len(kept) == len(rows) - len(gate)
    assert not any(is_gate_prompt(d.prompt, 0.1) for d in kept)

    class Row:  # a stored preference group: prompt, source
        def __init__(self, r):
            self.prompt, self.source = r.prompt, "labeler"

    groups = [Row(r) for r in synthetic_rankings(300, seed=3)]
    usable, _gold = partition(groups, RewardConfig(gate_holdout_share=0.1, gold_share=0.0))
    assert usable and not any(is_gate_prompt(g.prompt, 0.1) for g in usable)
    assert len(usable) < len(groups)


def test_feedback_that_cannot_train_does_not_start_a_reward_run(store, registry):
    from training.cycle import reward_due
    from training.recipes.reward import RewardConfig, partition
    from training.synthetic import synthetic_rankings

    store.persist(synthetic_rankings(40, seed=4, source="user"))
    usable = lambda rows: partition(rows, RewardConfig())[0]  # noqa: E731
    # counted as rows, 40 new rankings would start a run; none of them may train an RM
    assert reward_due(store, registry, 10).due
    due = reward_due(store, registry, 10, usable)
    assert not due.due and "only 0 new trainable rankings" in due.reason
    assert reward_due(store, registry, 10,
                      lambda rows: partition(rows, RewardConfig(
                          train_on_user_feedback=True))[0]).due
