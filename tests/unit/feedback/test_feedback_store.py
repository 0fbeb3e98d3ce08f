"""The feedback store's contract, run on SQLite and on PostgreSQL.

Write path: one transaction per batch, dedup on event_id, joins to completions, pending
feedback resolved when its completion arrives. Read path: the exact query API training
codes against.
"""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from core.events import Comparison, Demonstration, Ranking, Rating, decode_event
from feedback.store import FeedbackStore, PreferenceGroup
from feedback.store.models import Base
from tests.fixtures.events import completion


def test_a_ranking_of_four_choices_reads_back_as_one_group_with_its_policy_version(
        feedback_store):
    c = completion("req-1", n=4, policy_version="policy-v7")
    ranking = Ranking(request_id="req-1", choices=[3, 0, 2, 1], ranks=[1, 2, 2, 4],
                      source="labeler", submitted_by="lab-9")
    result = feedback_store.persist([c, ranking])
    assert (result.completions, result.feedback, result.rejected) == (1, 1, [])
    [group] = feedback_store.preference_groups()
    assert group == PreferenceGroup(
        seq=group.seq, prompt="Write a haiku.",
        responses=["req-1:3", "req-1:0", "req-1:2", "req-1:1"], ranks=[1, 2, 2, 4],
        source="labeler", policy_version="policy-v7", request_id="req-1")


def test_comparisons_are_k2_groups_and_ties_get_equal_ranks(feedback_store):
    feedback_store.persist([completion("r", n=2)])
    feedback_store.persist([
        Comparison(request_id="r", choice_a=0, choice_b=1, preferred="b"),
        Comparison(prompt="p", text_a="x", text_b="y", preferred="tie"),
        Comparison(prompt="p", text_a="x", text_b="y", preferred="a"),
    ])
    groups = feedback_store.preference_groups()
    assert [(g.responses, g.ranks) for g in groups] == [
        (["r:0", "r:1"], [2, 1]), (["x", "y"], [1, 1]), (["x", "y"], [1, 2])]
    assert groups[0].policy_version == "policy-v1"
    assert groups[1].policy_version is None and groups[1].request_id is None


def test_replaying_a_batch_never_double_counts(feedback_store):
    batch = [completion("r"), Ranking(request_id="r", choices=[0, 1], ranks=[1, 2]),
             Rating(request_id="r", choice=2, score=3.0), Demonstration(prompt="p", response="d")]
    first = feedback_store.persist(batch)
    again = feedback_store.persist(batch + batch)
    assert first.stored == 4 and first.duplicates == 0
    assert again.stored == 0 and again.duplicates == 8
    assert feedback_store.counts() == {"ranking": 1, "comparison": 0, "rating": 1,
                                       "demonstration": 1, "completions": 1, "pending": 0}


def test_the_same_event_twice_in_one_batch_is_stored_once(feedback_store):
    demo = Demonstration(prompt="p", response="d")
    result = feedback_store.persist([demo, demo])
    assert (result.feedback, result.duplicates) == (1, 1)


def test_a_second_completion_event_for_a_request_id_is_a_duplicate(feedback_store):
    feedback_store.persist([completion("r")])
    result = feedback_store.persist([completion("r")])
    assert (result.completions, result.duplicates) == (0, 1)


def test_feedback_before_its_completion_waits_and_is_joined_when_it_arrives(feedback_store):
    early = Ranking(request_id="late", choices=[1, 0], ranks=[1, 2])
    parked = feedback_store.persist([early])
    assert parked.pending == 1
    assert feedback_store.preference_groups() == []
    assert feedback_store.counts()["pending"] == 1
    assert feedback_store.persist([early]).duplicates == 1  # replay while pending

    arrived = feedback_store.persist([completion("late", n=2, policy_version="v3")])
    assert arrived.resolved == 1
    [group] = feedback_store.preference_groups()
    assert group.responses == ["late:1", "late:0"] and group.policy_version == "v3"
    assert feedback_store.counts()["pending"] == 0


def test_feedback_and_its_completion_in_one_batch_join_in_any_order(feedback_store):
    result = feedback_store.persist([Rating(request_id="r", choice=1, score=2),
                                     completion("r")])
    assert (result.feedback, result.pending) == (1, 0)


def test_a_choice_beyond_the_completions_n_is_rejected_and_the_rest_still_persist(
        feedback_store):
    bad = Ranking(request_id="r", choices=[0, 5], ranks=[1, 2])
    good = Comparison(request_id="r", choice_a=0, choice_b=1, preferred="a")
    result = feedback_store.persist([completion("r", n=2), bad, good])
    [rejection] = result.rejected
    assert rejection.event_id == bad.event_id and rejection.key == b"r"
    assert decode_event(rejection.value) == bad
    assert "choices: choice 5 does not exist" in rejection.reason
    assert result.feedback == 1
    assert feedback_store.persist([bad]).rejected  # not marked processed: still rejected


def test_pending_feedback_that_does_not_fit_its_completion_is_rejected_on_arrival(
        feedback_store):
    bad = Rating(request_id="r", choice=9, score=1)
    feedback_store.persist([bad], origins={bad.event_id: (3, 41)})
    result = feedback_store.persist([completion("r", n=2)])
    [rejection] = result.rejected
    assert rejection.event_id == bad.event_id
    assert (rejection.partition, rejection.offset) == (3, 41)  # where it was read from
    assert "choice: choice 9 does not exist" in rejection.reason
    assert feedback_store.counts()["pending"] == 0


def test_seq_is_one_increasing_sequence_across_kinds(feedback_store):
    assert feedback_store.high_water_mark() == 0
    feedback_store.persist([completion("r")])
    assert feedback_store.high_water_mark() == 0  # completions are not feedback
    feedback_store.persist([Comparison(prompt="p", text_a="a", text_b="b", preferred="a"),
                            Demonstration(prompt="p", response="d"),
                            Ranking(request_id="r", choices=[0, 1], ranks=[2, 1])])
    groups = feedback_store.preference_groups()
    [demo] = feedback_store.demonstrations()
    seqs = [groups[0].seq, demo.seq, groups[1].seq]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert feedback_store.high_water_mark() == seqs[-1]


def test_windows_are_half_open_since_until(feedback_store):
    feedback_store.persist([Demonstration(prompt=f"p{i}", response=f"d{i}") for i in range(5)])
    seqs = [d.seq for d in feedback_store.demonstrations()]
    assert [d.seq for d in feedback_store.demonstrations(since=seqs[1], until=seqs[3])] == \
        seqs[2:4]
    mark = feedback_store.high_water_mark()
    feedback_store.persist([Demonstration(prompt="new", response="d")])
    assert [d.prompt for d in feedback_store.demonstrations(since=mark)] == ["new"]
    assert len(feedback_store.demonstrations(until=mark)) == 5
    assert feedback_store.counts(until=mark)["demonstration"] == 5
    assert feedback_store.counts()["demonstration"] == 6


def test_demonstrations_from_messages_store_the_rendered_prompt(feedback_store):
    feedback_store.persist([Demonstration(messages=[{"role": "user", "content": "hi"}],
                                          response="hello")])
    [row] = feedback_store.demonstrations()
    assert (row.prompt, row.response) == ("user: hi", "hello")


def test_recent_prompts_are_distinct_and_newest_first(feedback_store):
    for i, prompt in enumerate(["a", "b", "a", "c"]):
        feedback_store.persist([completion(f"r{i}", prompt=prompt)])
    assert feedback_store.recent_prompts() == ["c", "a", "b"]
    assert feedback_store.recent_prompts(limit=2) == ["c", "a"]


def test_get_completion_returns_the_event_as_logged(feedback_store):
    c = completion("r", n=3, messages=[{"role": "user", "content": "hi"}])
    feedback_store.persist([c])
    assert feedback_store.get_completion("r") == c
    assert feedback_store.get_completion("missing") is None


def test_migrations_match_the_models(feedback_store):
    """Alembic's autogenerate finds nothing to do: migrations and models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with feedback_store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(feedback_store):
    feedback_store.migrate()
    names = set(inspect(feedback_store.engine).get_table_names())
    assert {"completions", "feedback", "rankings", "ranking_entries", "comparisons",
            "ratings", "demonstrations", "pending_feedback", "processed_events"} <= names


def test_sqlite_parent_directory_is_created(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'a' / 'b' / 'fb.db'}")
    store.migrate()
    assert (tmp_path / "a" / "b" / "fb.db").exists()
    store.close()


@pytest.mark.parametrize("n", [1, 60])
def test_a_failed_transaction_stores_nothing(feedback_store, n):
    """One transaction per batch: a batch that fails half way leaves no rows behind."""
    from sqlalchemy import text

    with feedback_store.engine.begin() as conn:  # make the last insert of the batch fail
        conn.execute(text("DROP TABLE ratings"))
    batch = [Demonstration(prompt=f"p{i}", response="d") for i in range(n)]
    with pytest.raises(Exception):  # noqa: B017 - any database error
        feedback_store.persist(batch + [Rating(prompt="p", response="x", score=1)])
    assert feedback_store.high_water_mark() == 0
    assert feedback_store.counts()["demonstration"] == 0


def test_a_batch_larger_than_one_insert_page_keeps_its_order_and_counts(feedback_store):
    """1,200 rankings: more rows than one multi-row INSERT carries (1,000 per page), so the
    seqs RETURNING hands back are matched by event_id, not by position."""
    batch = [Ranking(prompt=f"p{i}", responses=["a", "b", "c"], ranks=[1, 2, 3])
             for i in range(1200)]
    result = feedback_store.persist(batch)
    assert (result.feedback, result.duplicates) == (1200, 0)
    groups = feedback_store.preference_groups()
    assert [g.prompt for g in groups] == [f"p{i}" for i in range(1200)]  # seq = batch order
    assert all(g.responses == ["a", "b", "c"] and g.ranks == [1, 2, 3] for g in groups)
    again = feedback_store.persist(batch)
    assert (again.feedback, again.duplicates) == (0, 1200)


def test_feedback_already_in_the_table_counts_as_a_duplicate_not_a_second_row(
        feedback_store):
    """What persist reports is what the database inserted: a feedback row another writer
    stored without marking it processed is skipped by its event_id, with no second child."""
    from sqlalchemy import text

    demo = Demonstration(prompt="p", response="d")
    with feedback_store.engine.begin() as conn:
        conn.execute(text("INSERT INTO feedback (event_id, kind, source, created_at, "
                          "stored_at) VALUES (:e, 'demonstration', 'labeler', :t, :t)"),
                     {"e": demo.event_id, "t": demo.created_at})
    result = feedback_store.persist([demo, Demonstration(prompt="q", response="d")])
    assert (result.feedback, result.duplicates) == (1, 1)
    assert [d.prompt for d in feedback_store.demonstrations()] == ["q"]
    assert feedback_store.persist([demo]).duplicates == 1  # marked processed now
