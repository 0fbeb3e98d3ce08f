"""What the store refuses, and why: ownership, expiry of parked feedback, and how database
errors are classified (retry vs. dead-letter). Run on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from core.events import Comparison, Demonstration, Ranking, Rating, decode_event
from feedback.store import FeedbackStore
from feedback.store.errors import describe, is_transient
from tests.fixtures.events import completion


@pytest.mark.parametrize("source, submitted_by, stored", [
    ("user", "key-alice", True),     # the requester judges its own completion
    ("user", "key-bob", False),      # another user may not
    ("user", None, False),           # an unknown submitter is not the requester
    ("labeler", "lab-1", True),      # labelers judge anything
    ("admin", None, True),
])
def test_a_user_may_judge_only_its_own_completions(feedback_store, source, submitted_by,
                                                   stored):
    fb = Comparison(request_id="r", choice_a=0, choice_b=1, preferred="a", source=source,
                    submitted_by=submitted_by)
    result = feedback_store.persist([completion("r", n=2, user="key-alice"), fb])
    assert (result.feedback == 1) is stored
    if not stored:
        [rej] = result.rejected
        assert "may judge only its own completions" in rej.reason
        assert rej.reason.startswith("submitted_by:") and "key-alice" not in rej.reason


def test_anyone_may_judge_a_completion_without_a_user(feedback_store):
    fb = Rating(request_id="r", choice=0, score=1, submitted_by="key-bob")
    assert feedback_store.persist([completion("r", n=2, user=None), fb]).feedback == 1


def test_parked_feedback_from_another_user_is_rejected_when_its_completion_arrives(
        feedback_store):
    fb = Ranking(request_id="r", choices=[0, 1], ranks=[1, 2], submitted_by="key-bob")
    assert feedback_store.persist([fb], origins={fb.event_id: (1, 7)}).pending == 1
    result = feedback_store.persist([completion("r", n=2, user="key-alice")])
    [rej] = result.rejected
    assert (rej.event_id, rej.partition, rej.offset) == (fb.event_id, 1, 7)
    assert decode_event(rej.value) == fb and rej.key == b"r"
    assert result.completions == 1 and feedback_store.counts()["pending"] == 0


def test_the_purpose_of_a_completion_is_stored(feedback_store):
    feedback_store.persist([completion("t"), completion("e", purpose="eval")])
    assert feedback_store.get_completion("t").purpose == "train"
    assert feedback_store.get_completion("e").purpose == "eval"


def test_parked_feedback_expires_into_rejections_with_its_origin(feedback_store):
    old = Comparison(request_id="gone", choice_a=0, choice_b=1, preferred="b")
    feedback_store.persist([old], origins={old.event_id: (2, 99)})
    delivered: list = []
    future = datetime.now(UTC) + timedelta(seconds=1)
    assert feedback_store.expire_pending(future - timedelta(hours=1), delivered.extend) == 0
    assert feedback_store.expire_pending(future, delivered.extend) == 1
    [rej] = delivered
    assert (rej.event_id, rej.partition, rej.offset) == (old.event_id, 2, 99)
    assert rej.reason.startswith("pending_ttl: completion 'gone' never reached the store")
    assert feedback_store.counts()["pending"] == 0
    # a completion arriving afterwards finds nothing to join; a replay stays deduplicated
    assert feedback_store.persist([completion("gone", n=2), old]).duplicates == 1
    assert feedback_store.preference_groups() == []


def test_the_pending_summary_counts_parked_feedback_and_dates_the_oldest(feedback_store):
    assert feedback_store.pending_summary() == (0, None)
    before = datetime.now(UTC)
    feedback_store.persist([Rating(request_id="gone", choice=0, score=1)])
    feedback_store.persist([Rating(request_id="later", choice=0, score=2)])
    n, oldest = feedback_store.pending_summary()
    assert n == 2 and oldest is not None
    assert before - timedelta(seconds=1) <= oldest <= datetime.now(UTC)
    feedback_store.persist([completion("gone", n=1), completion("later", n=1)])
    assert feedback_store.pending_summary() == (0, None)  # both resolved


def test_expiry_keeps_the_rows_when_delivery_fails(feedback_store):
    fb = Rating(request_id="gone", choice=0, score=1)
    feedback_store.persist([fb])

    def broker_down(_):
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        feedback_store.expire_pending(datetime.now(UTC) + timedelta(seconds=1), broker_down)
    assert feedback_store.counts()["pending"] == 1  # still parked: nothing lost


def _poison_ratings(store: FeedbackStore) -> None:
    """A real database refusal for one value: a trigger, as a stand-in for any data error."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON ratings "
                              "WHEN NEW.comment = 'poison' BEGIN "
                              "SELECT RAISE(ABORT, 'poisoned value'); END"))
        else:
            conn.execute(text("CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                              "IF NEW.comment = 'poison' THEN RAISE EXCEPTION 'poisoned value' "
                              "USING ERRCODE = '22000'; END IF; RETURN NEW; END $$ "
                              "LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON ratings FOR EACH ROW "
                              "EXECUTE FUNCTION poison()"))


def test_a_parked_event_the_database_refuses_is_rejected_alone(feedback_store):
    _poison_ratings(feedback_store)
    bad = Rating(request_id="r", choice=0, score=1, comment="poison")
    good = Rating(request_id="r", choice=1, score=2)
    feedback_store.persist([bad, good])
    result = feedback_store.persist([completion("r", n=2)])
    assert (result.completions, result.resolved) == (1, 1)
    [rej] = result.rejected
    assert rej.event_id == bad.event_id and "poisoned value" in rej.reason


def test_a_data_error_is_permanent(feedback_store):
    _poison_ratings(feedback_store)
    with pytest.raises(Exception) as exc:  # noqa: B017 - the driver's own error class
        feedback_store.persist([Rating(prompt="p", response="r", score=1, comment="poison")])
    assert not is_transient(exc.value)
    assert "poisoned value" in describe(exc.value)


def test_values_that_bypass_validation_fail_permanently_not_transiently(feedback_store):
    """What validation now prevents: 2**63 overflows SQLite, 2**31 PostgreSQL's integer."""
    ok = Ranking(prompt="p", responses=["a", "b"], ranks=[1, 2])
    huge = 2**63 if feedback_store.engine.dialect.name == "sqlite" else 2**31
    bad = Ranking.model_construct(**{**dict(ok), "ranks": [huge, 1]})
    with pytest.raises(Exception) as exc:  # noqa: B017 - OverflowError or DataError
        feedback_store.persist([bad])
    assert not is_transient(exc.value), describe(exc.value)


def test_a_missing_table_is_transient_so_the_batch_waits_for_the_migration(feedback_store):
    with feedback_store.engine.begin() as conn:
        conn.execute(text("DROP TABLE demonstrations"))
    with pytest.raises(Exception) as exc:  # noqa: B017 - OperationalError / ProgrammingError
        feedback_store.persist([Demonstration(prompt="p", response="r")])
    assert is_transient(exc.value)


def test_an_unreachable_database_is_transient():
    store = FeedbackStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(Exception) as exc:  # noqa: B017
        store.persist([Demonstration(prompt="p", response="r")])
    assert is_transient(exc.value)
    store.close()


def test_migration_0002_upgrades_a_store_with_data(store_url):
    from feedback.store.migrate import upgrade

    store = FeedbackStore(store_url)
    upgrade(store.engine, "0001")
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO completions (event_id, request_id, policy_version, model, endpoint, "
            "prompt, sampling_params, prompt_tokens, completion_tokens, created_at, stored_at) "
            "VALUES ('e', 'old', 'v', 'm', 'completions', 'p', '{}', 1, 1, "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        conn.execute(text(
            "INSERT INTO pending_feedback (event_id, request_id, payload, received_at) "
            "VALUES ('f', 'x', '{}', '2026-01-01 00:00:00')"))
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.scalar(text("SELECT purpose FROM completions")) == "train"
        assert conn.execute(text("SELECT source_partition, source_offset "
                                 "FROM pending_feedback")).one() == (None, None)
    store.close()
