"""The feedback loop in the service: sources, the bandit, slate logs, /v1/loop, retraining."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recloop.errors import ConfigError
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.loop import loop_config_from
from recloop.service.settings import ServiceSettings

from .test_app import bearer, recommend, tiny_dataset

ATTRIBUTION_S = 60.0


def open_service(tmp_path: Path, loop_json: dict[str, Any] | None = None, **settings: Any) -> Any:
    config = tmp_path / "loop.json"
    config.write_text(json.dumps({"attribution_s": ATTRIBUTION_S, **(loop_json or {})}))
    state = ServiceState.open(
        ServiceSettings(
            home=tmp_path / "home",
            key_cache_s=0.0,
            model_check_s=0.05,
            loop_config=config,
            loop_update_s=0.0,  # the tests call update() themselves
            **settings,
        )
    )
    import_dataset(state.store, tiny_dataset(), source="tiny")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    keys = {role: create_key(state.store, role, role)[1] for role in ("client", "admin")}
    return state, keys


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], ServiceState]]:
    state, keys = open_service(tmp_path)
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state


def click(client: TestClient, key: str, user: str, slate: dict[str, Any], position: int) -> None:
    item = slate["items"][position]["item_id"]
    event = {
        "event_id": f"click-{slate['slate_id']}",
        "user_id": user,
        "item_id": item,
        "kind": "click",
        "timestamp": time.time(),
        "slate_id": slate["slate_id"],
    }
    assert (
        client.post("/v1/events", json={"events": [event]}, headers=bearer(key)).status_code == 200
    )


def test_every_slate_is_logged_with_sources_arm_and_propensity(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    slates = [recommend(client, keys["client"], f"u{u}", n=4) for u in range(10)]
    state.slates.flush()
    arms = state.loop.config.arms
    for answer in slates:
        logged = state.loop.log.slate(answer["slate_id"])
        assert logged is not None and logged.user_id == answer["user_id"]
        assert [imp.item_id for imp in logged.items] == [it["item_id"] for it in answer["items"]]
        assert [imp.source for imp in logged.items] == [it["source"] for it in answer["items"]]
        assert logged.arm is not None and 0 <= logged.arm < len(arms)
        probs = state.loop.bandit().probabilities(logged.segment)
        assert logged.arm_probability == pytest.approx(probs[logged.arm])
        assert logged.arm_probability >= state.loop.config.epsilon / len(arms)
        # every source an item is labelled with is one the arm blends (or the model's name)
        weights = arms[logged.arm].weights
        for item in answer["items"]:
            assert item["source"] in {"EASE", "popular"} or weights.get(item["source"], 0) > 0


def test_the_loop_learns_the_arm_users_reward(tmp_path: Path) -> None:
    """Planted: users click only on slates blended by one arm; the bandit finds it."""
    state, keys = open_service(tmp_path, {"seed": 1})
    target = 3  # "balanced"
    rng = np.random.default_rng(0)
    with TestClient(create_app(state=state)) as client:
        for _ in range(8):
            for u in range(30):
                user = f"u{u}"
                slate = recommend(client, keys["client"], user, n=3)
                state.slates.flush()
                logged = state.loop.log.slate(slate["slate_id"])
                assert logged is not None
                if rng.random() < (0.9 if logged.arm == target else 0.1):
                    click(client, keys["client"], user, slate, position=0)
            state.updater.update(now=time.time() + 2 * ATTRIBUTION_S)
        report = client.get("/v1/loop", headers=bearer(keys["admin"])).json()
    segment = report["segments"]["new"]  # the tiny users have 4 events each
    name = report["arms"][target]["name"]
    assert max(segment["probabilities"], key=segment["probabilities"].get) == name
    assert segment["probabilities"][name] > 0.8
    assert report["slates_logged"] == 8 * 30
    # the policy over time: one snapshot per update and segment, the target arm rising
    new = [h["probabilities"][name] for h in report["history"] if h["segment"] == "new"]
    assert len(new) == 8 and new[-1] > new[0]
    # outcomes are attributed to sources and positions; position 0 got every click
    assert report["positions"]["0"]["clicks"] > 0
    assert all(v["clicks"] == 0 for k, v in report["positions"].items() if k != "0")
    assert (
        sum(v["clicks"] for v in report["sources"].values()) == report["positions"]["0"]["clicks"]
    )


def test_loop_report_has_offpolicy_estimates_and_needs_admin(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    for u in range(20):
        slate = recommend(client, keys["client"], f"u{u}", n=3)
        if u % 2 == 0:
            click(client, keys["client"], f"u{u}", slate, position=1)
    state.slates.flush()
    assert client.get("/v1/loop", headers=bearer(keys["client"])).status_code == 403
    # nothing has matured yet: the attribution window is still open
    report = client.get("/v1/loop", headers=bearer(keys["admin"])).json()
    assert report["offpolicy"]["slates"] == 0
    assert report["positions"]["1"]["clicks"] == 10
    state.cache.invalidate()
    state.loop.config = state.loop.config.model_copy(update={"attribution_s": 0.0})
    report = client.get("/v1/loop", headers=bearer(keys["admin"])).json()
    off = report["offpolicy"]
    assert off["slates"] == 20
    assert set(off["policies"]) >= {"uniform", "greedy"}
    assert all(
        "ips" in entry for name, entry in off["policies"].items() if name.startswith("fixed:")
    )


def test_loop_off_keeps_the_model_order_and_still_logs(tmp_path: Path) -> None:
    state, keys = open_service(tmp_path, loop=False)
    with TestClient(create_app(state=state)) as client:
        slate = recommend(client, keys["client"], "u0", n=3)
        assert {it["source"] for it in slate["items"]} == {"EASE"}
        scores = [it["score"] for it in slate["items"]]
        assert scores == sorted(scores, reverse=True)
    state.slates.flush()
    logged = state.loop.log.slate(slate["slate_id"])
    assert logged is not None and logged.arm is None and logged.arm_probability is None
    state.close()


def test_retraining_by_data_volume_swaps_in_a_new_version(tmp_path: Path) -> None:
    state, keys = open_service(tmp_path, retrain_min_events=5)
    with TestClient(create_app(state=state)) as client:
        assert state.updater.retrain is not None
        assert state.updater.retrain.due(time.time()) is None
        events = [
            {"event_id": f"n{i}", "user_id": "u0", "item_id": f"i{i}", "kind": "click"}
            for i in range(6, 11)
        ]
        client.post("/v1/events", json={"events": events}, headers=bearer(keys["client"]))
        assert state.updater.retrain.due(time.time()) == "volume"
        state.updater.update()
        history = state.loop.log.retrain_history()
        assert [(e.trigger, e.status, e.version) for e in history] == [("volume", "done", "v0002")]
        assert state.registry.active() == "v0002"
        deadline = time.time() + 5
        while state.models.current().version != "v0002" and time.time() < deadline:
            time.sleep(0.06)
        assert recommend(client, keys["client"], "u0")["model_version"] == "v0002"
        report = client.get("/v1/loop", headers=bearer(keys["admin"])).json()
        assert report["retraining"][0]["version"] == "v0002"
        # nothing new since: not due again, and a second claim while one runs is refused
        assert state.updater.retrain.due(time.time()) is None
        seq = state.loop.log.claim_retrain("schedule", 0, stale_s=60)
        assert seq is not None and state.loop.log.claim_retrain("schedule", 0, stale_s=60) is None


def test_a_bad_loop_config_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "loop.json"
    path.write_text('{"arms": [{"name": "x", "weights": {"nonsense": 1}}]}')
    with pytest.raises(ConfigError, match=r"loop.json: arms.0"):
        loop_config_from(path)
    with pytest.raises(ConfigError, match="cannot read loop config"):
        loop_config_from(tmp_path / "missing.json")


def test_only_approved_generated_pieces_reach_any_answer(tmp_path: Path) -> None:
    """Generated items appear, flagged, only while their piece is approved."""
    from recloop.generative.quality import GeneratedPiece, QualityConfig
    from recloop.generative.review import ReviewQueue

    state, keys = open_service(tmp_path, {"max_generated_share": 0.5, "generated_weight": 5.0})
    queue = ReviewQueue(state.store, quality=QualityConfig())
    audience = tuple(f"u{u}" for u in range(15, 30))  # taste group B, who like i6..i11
    texts = {
        "keep": "A warm collection of films for people who enjoy the quieter corners of the "
        "catalogue and want something new to watch this weekend with the whole family.",
        "drop": "Sharp thrillers and tense mysteries chosen for viewers who like a puzzle, with "
        "plenty of twists to keep everyone guessing until the very last scene.",
        "wait": "Old musicals with bright songs and grand dancing, picked for an evening when "
        "nothing should be too serious and every tune is easy to sing along to.",
    }
    pieces = {
        name: queue.submit(
            GeneratedPiece(
                kind="collection",
                segment="s",
                title=f"Collection {name}",
                description=texts[name],
                items=items,
                audience=audience,
                provenance={"generated": True},
                content_id=name,
            )
        )
        for name, items in (("keep", ("i0", "i1")), ("drop", ("i2", "i3")), ("wait", ("i4",)))
    }
    assert all(p.status == "pending" for p in pieces.values()), pieces
    queue.approve("keep", "tester")
    queue.approve("drop", "tester")
    with TestClient(create_app(state=state)) as client:
        seen: set[str] = set()
        for user in audience:
            for item in recommend(client, keys["client"], user, n=10)["items"]:
                if item["generated"]:
                    assert item["source"] == "generated"
                    seen.add(item["item_id"])
        assert seen and seen <= {"i0", "i1", "i2", "i3"}
        queue.edit("drop", "tester", title="Collection drop, edited")  # back to pending
        state.cache.invalidate()
        for user in audience:
            for item in recommend(client, keys["client"], user, n=10)["items"]:
                if item["generated"]:
                    assert item["item_id"] in {"i0", "i1"}, item


def test_exposure_audit_of_the_logged_slates(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    shown = 0
    for u in range(30):
        shown += len(recommend(client, keys["client"], f"u{u}", n=4)["items"])
    state.slates.flush()
    assert client.get("/v1/fairness", headers=bearer(keys["client"])).status_code == 403
    audit = client.get("/v1/fairness", headers=bearer(keys["admin"])).json()
    assert audit["impressions"] == shown and audit["catalogue"] == 12
    assert 0.0 <= audit["exposure_gini"] <= 1.0
    bands = audit["by_popularity_band"]
    assert sum(b["impressions_share"] for b in bands.values()) == pytest.approx(1.0)
    assert sum(b["catalogue_share"] for b in bands.values()) == pytest.approx(1.0)
    assert set(audit["by_genre"]) == {"A", "B"}
    assert sum(s["slates"] for s in audit["by_segment"].values()) == 30


def test_llm_rerank_is_switchable_per_request_and_never_silent(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    """``rerank=llm`` re-orders with the generator's log-probabilities, or says why not."""
    from recloop.generative.llm import Generation, GenerationRequest, Message
    from recloop.service.generation import GENERATOR

    client, keys, state = service
    params = {"n": 5, "rerank": "llm"}
    answer = client.get(
        "/v1/users/u0/recommendations", params=params, headers=bearer(keys["client"])
    )
    # the default template generator cannot score: the blended order, and the reason
    assert answer.headers["X-Recloop-Rerank"].startswith("fallback:")
    assert len(answer.json()["items"]) == 5

    class Scorer:
        """Prefers higher item numbers: a re-ordering the blend would never produce."""

        name, hosted = "fake-scorer", False

        def generate(self, request: GenerationRequest) -> Generation:
            return Generation(text="", backend=self.name, model=self.name)

        def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
            # after the user's history (which names items) the score grows with the title
            personal = any("Item" in m.content for m in messages)
            return [float(sum(map(ord, c))) * (2.0 if personal else 1.0) for c in continuations]

    state.extensions[GENERATOR] = Scorer()
    state.extensions.pop("generative.rerank", None)
    answer = client.get(
        "/v1/users/u0/recommendations", params=params, headers=bearer(keys["client"])
    )
    assert answer.headers["X-Recloop-Rerank"] == "llm"
    items = answer.json()["items"]
    assert len(items) == 5 and all(it["source"] for it in items)
    plain = client.get(
        "/v1/users/u0/recommendations", params={"n": 5}, headers=bearer(keys["client"])
    )
    assert plain.headers["X-Recloop-Rerank"] == "none"
    assert [it["item_id"] for it in items] != [it["item_id"] for it in plain.json()["items"]]


def _retraining_store(tmp_path: Path, n_events: int) -> tuple[Any, Any]:
    from recloop.data.types import EventKind
    from recloop.store.artifacts import ArtifactRegistry
    from recloop.store.events import EventRecord, EventStore, ItemRecord

    store = EventStore(f"sqlite:///{tmp_path}/events.db")
    store.upsert_items([ItemRecord(item_id=f"i{j}") for j in range(6)])
    store.add_events(
        [
            EventRecord(f"e{k}", f"u{k % 8}", f"i{k % 6}", EventKind.CLICK, 1000.0 + k)
            for k in range(n_events)
        ]
    )
    return store, ArtifactRegistry(tmp_path / "models")


def test_an_erasure_during_a_retraining_fit_triggers_another_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recloop.service import bootstrap
    from recloop.service.loop import Retrainer
    from recloop.store.privacy import PrivacyLog

    store, registry = _retraining_store(tmp_path, 24)
    build = bootstrap.build_model

    def erased_during_the_fit(name: str, config: Any) -> Any:
        model = build(name, config)
        fit = model.fit

        def fit_then_erase(*args: Any, **kwargs: Any) -> Any:
            fitted = fit(*args, **kwargs)
            PrivacyLog(store).erase_user("u3", "test")  # DELETE /v1/users/u3 meanwhile
            return fitted

        model.fit = fit_then_erase
        return model

    monkeypatch.setattr(bootstrap, "build_model", erased_during_the_fit)
    version = train_version(store, registry, "Popular", None, card=False)
    assert "u3" in registry.user_ids(version)  # read before the erasure: still inside
    assert Retrainer(store, registry).due(time.time()) == "erasure"


def test_a_failed_retraining_run_is_retried_after_a_pause(tmp_path: Path) -> None:
    from recloop.data.types import EventKind
    from recloop.service.loop import Retrainer
    from recloop.store.events import EventRecord
    from recloop.store.slates import SlateLog

    store, registry = _retraining_store(tmp_path, 20)
    train_version(store, registry, "Popular", None, card=False)
    retrainer = Retrainer(store, registry, every_s=3600, min_events=10, retry_s=120)
    store.add_events(
        [EventRecord(f"n{k}", f"u{k % 8}", "i1", EventKind.CLICK, 2000.0 + k) for k in range(12)]
    )
    now = time.time()
    assert retrainer.due(now) == "volume"
    log = SlateLog(store)
    seq = log.claim_retrain("volume", store.count_events(), 3600)
    assert seq is not None
    log.finish_retrain(seq, status="failed", detail="OSError: disk full")
    assert retrainer.due(now) is None  # no retry storm
    assert retrainer.due(now + 121) == "volume"  # the new events are still not in the model
