"""The slate log on real SQLite and PostgreSQL: slates, outcomes joined by slate_id, posteriors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recloop.data.types import EventKind
from recloop.store.events import EventRecord, EventStore
from recloop.store.slates import Impression, SlateLog, SlateRecord, SlateWriter


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SlateLog]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    with EventStore(url) as store:
        yield SlateLog(store)


def slate(slate_id: str, user: str = "u1", at: float = 100.0, arm: int | None = 2) -> SlateRecord:
    return SlateRecord(
        slate_id=slate_id,
        user_id=user,
        created_at=at,
        model_version="v0001",
        segment="s0",
        items=(
            Impression(0, "a", "model", 0.9),
            Impression(1, "b", "popular", 0.5),
            Impression(2, "g1", "generated", 0.4, generated=True),
        ),
        arm=arm,
        arm_probability=0.25 if arm is not None else None,
        policy={"weights": [1.0, 0.5]},
    )


def test_slates_round_trip_and_are_idempotent(log: SlateLog) -> None:
    assert log.add_slates([slate("s1"), slate("s1"), slate("s2", arm=None)]) == 2
    assert log.add_slates([slate("s1")]) == 0
    assert log.slate("s1") == slate("s1")
    assert log.slate("s2") == slate("s2", arm=None)
    assert log.slate("nope") is None
    assert log.count_slates() == 2


def test_outcomes_join_by_slate_id_and_attribute_positions(log: SlateLog) -> None:
    log.add_slates([slate("s1", at=100.0), slate("s2", at=200.0), slate("s3", at=300.0)])
    log.store.add_events(
        [
            EventRecord("e1", "u1", "b", EventKind.CLICK, 101.0, slate_id="s1"),
            EventRecord("e2", "u1", "a", EventKind.CLICK, 102.0, slate_id="s1"),
            EventRecord("e3", "u1", "b", EventKind.CLICK, 103.0, slate_id="s1"),  # repeat
            EventRecord("e4", "u1", "a", EventKind.DISLIKE, 201.0, slate_id="s2"),
            EventRecord("e5", "u1", "zzz", EventKind.CLICK, 202.0, slate_id="s2"),  # not shown
            EventRecord("e6", "u1", "a", EventKind.CLICK, 203.0),  # no slate
        ]
    )
    logged = log.logged(since=100.0, until=300.0)
    assert [entry.slate.slate_id for entry in logged] == ["s1", "s2"]
    assert logged[0].clicked_positions() == [1, 0]
    assert logged[0].reward == 1.0
    assert len(logged[1].outcomes) == 2
    assert logged[1].clicked_positions() == []
    assert logged[1].reward == 0.0


def test_an_event_citing_another_users_slate_is_no_outcome_of_it(log: SlateLog) -> None:
    log.add_slates([slate("s1", user="u1"), slate("s2", user="u2")])
    log.store.add_events(
        [
            EventRecord("e1", "u2", "a", EventKind.CLICK, 101.0, slate_id="s1"),  # u1's slate
            EventRecord("e2", "u2", "b", EventKind.CLICK, 101.0, slate_id="s2"),  # its own
        ]
    )
    first, second = log.logged(since=0.0)
    assert (first.outcomes, first.reward) == ((), 0.0)
    assert (len(second.outcomes), second.reward) == (1, 1.0)
    assert sorted(log.reward_rows(0.0, 1e9, 60.0)) == [("s0", 2, 0.25, 0.0), ("s0", 2, 0.25, 1.0)]
    assert log.arm_counts(0.0, 1e9, 60.0) == [("s0", 2, 2, 1)]
    assert log.segment_counts(0.0, 1e9, 60.0) == {"s0": (2, 1)}
    counts = log.impression_counts(0.0, 1e9, 60.0)
    assert counts["positions"] == {"0": (2, 0), "1": (2, 1), "2": (2, 0)}  # s2's "b" only


def test_posteriors_and_retraining_history(log: SlateLog) -> None:
    log.set_arms({("s0", 0): (2.0, 3.0), ("s1", 4): (1.0, 1.0)})
    assert log.arms() == {("s0", 0): (2.0, 3.0), ("s1", 4): (1.0, 1.0)}
    log.set_arms({("s0", 0): (5.0, 3.0)})
    assert log.arms() == {("s0", 0): (5.0, 3.0)}
    first = log.start_retrain("schedule", 1000)
    second = log.start_retrain("volume", 2500)
    log.finish_retrain(first, status="failed", detail="boom")
    log.finish_retrain(second, status="done", version="v0002")
    history = log.retrain_history()
    assert [(e.seq, e.status, e.version) for e in history] == [
        (second, "done", "v0002"),
        (first, "failed", None),
    ]
    assert history[1].detail == "boom" and history[0].finished_at is not None


def test_erasing_a_user_removes_their_slates(log: SlateLog) -> None:
    log.add_slates([slate("s1", user="u1"), slate("s2", user="u2")])
    assert log.delete_user("u1") == 1
    assert log.slate("s1") is None and log.slate("s2") is not None


def test_writer_batches_off_the_caller_thread_and_flushes_on_close(log: SlateLog) -> None:
    writer = SlateWriter(log, flush_s=0.05, max_batch=3)
    for i in range(7):
        writer.add(slate(f"w{i}", at=float(i)))
    writer.close()
    assert writer.written == 7
    assert log.count_slates() == 7
