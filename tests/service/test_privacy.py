"""Consent and erasure end to end: a real store (SQLite; PostgreSQL + Redis), the real app."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, interactions_from_store, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings
from recloop.store.cache import user_scope
from recloop.store.privacy import DEFAULT_CONSENT

from .test_app import bearer, model_only_loop, recommend, tiny_dataset

ERASED = "erase-me-42"  # distinctive, so a scan for it cannot match anything else


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TestClient, dict[str, str], ServiceState, Any]]:
    stores: dict[str, Any] = {}
    redis_client = None
    if request.param == "postgresql+redis":
        import redis

        cache_url, namespace = request.getfixturevalue("redis_url")
        stores = {
            "db": request.getfixturevalue("postgres_url"),
            "cache_url": cache_url,
            "cache_namespace": namespace,
        }
        redis_client = (redis.Redis.from_url(cache_url), namespace)
    settings = ServiceSettings(
        home=tmp_path / "home",
        key_cache_s=0.0,
        model_check_s=0.05,
        loop_config=model_only_loop(tmp_path),
        loop_update_s=3600.0,  # an updater exists (so erasures promise a rebuild); tests drive it
        **stores,
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")
    events = [
        {"event_id": f"x{i}", "user_id": ERASED, "item_id": f"i{i}", "kind": "click"}
        for i in (0, 1, 2)
    ]
    keys = {role: create_key(state.store, role, role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        client.post("/v1/events", json={"events": events}, headers=bearer(keys["client"]))
        train_version(state.store, state.registry, "EASE", {"l2": 1.0})
        state.models.reload_now()
        yield client, keys, state, redis_client


def test_consent_defaults_changes_and_audit(
    service: tuple[TestClient, dict[str, str], ServiceState, Any],
) -> None:
    client, keys, state, _ = service
    url = f"/v1/users/{ERASED}/consent"
    assert client.get(url, headers=bearer(keys["client"])).json() == {
        "personalisation": DEFAULT_CONSENT.personalisation,
        "training": DEFAULT_CONSENT.training,
        "generative": DEFAULT_CONSENT.generative,
    }
    bad = client.put(url, json={"personalisation": False}, headers=bearer(keys["client"]))
    assert bad.status_code == 422
    assert recommend(client, keys["client"], ERASED)["personalised"] is True
    body = {"personalisation": False, "training": False, "generative": True}
    assert client.put(url, json=body, headers=bearer(keys["client"])).json() == body
    # no personalisation: the non-personalised answer, labelled so
    slate = recommend(client, keys["client"], ERASED)
    assert slate["personalised"] is False
    assert {it["source"] for it in slate["items"]} == {"popular"}
    # no training consent: left out of every training snapshot
    assert ERASED not in interactions_from_store(state.store).users.ids()
    audit = client.get("/v1/audit", params={"subject": ERASED}, headers=bearer(keys["admin"]))
    assert [e["action"] for e in audit.json()["entries"]] == ["consent"]


def test_a_consent_change_keeps_the_rest_of_the_cache_warm(
    service: tuple[TestClient, dict[str, str], ServiceState, Any],
) -> None:
    client, keys, state, _ = service
    recommend(client, keys["client"], "u1")  # caches u1's candidates
    cached = [key for key in _keys(state) if key.startswith("candidates:")]
    assert cached
    token = state.cache.token()
    body = {"personalisation": False, "training": True, "generative": False}
    assert (
        client.put("/v1/users/u2/consent", json=body, headers=bearer(keys["client"])).json() == body
    )
    assert recommend(client, keys["client"], "u2")["personalised"] is False  # seen at once
    if state.settings.cache_url is None:
        # in-process caches share only the generation file with other processes (workers,
        # the CLI), which cannot carry one key: they are invalidated, as documented
        assert state.cache.token() != token
    else:  # Redis: no invalidation, u1's candidates are still there
        assert state.cache.token() == token
        assert all(state.cache.get(key) is not None for key in cached)


def _keys(state: ServiceState) -> list[str]:
    """The cache's keys, without the namespace and generation prefix on Redis."""
    cache: Any = state.cache
    if hasattr(cache, "entry_keys"):
        return list(cache.entry_keys())
    prefix = f"{cache.namespace}:{cache.token()}:"
    names = (n.decode() for n in cache._client.scan_iter(match=prefix + "*"))
    return [n[len(prefix) :] for n in names]


def test_erasure_reaches_store_caches_logs_and_models(
    service: tuple[TestClient, dict[str, str], ServiceState, Any],
) -> None:
    client, keys, state, redis_client = service
    admin = bearer(keys["admin"])
    client.put(
        f"/v1/users/{ERASED}/consent",
        json={"personalisation": True, "training": True, "generative": True},
        headers=bearer(keys["client"]),
    )
    before = recommend(client, keys["client"], ERASED)  # fills the candidate cache
    talk = client.post(
        "/v1/conversations",
        json={"user_id": ERASED, "message": "something like Item 1"},
        headers=bearer(keys["client"]),
    )
    assert talk.status_code == 200, talk.text
    conversation = talk.json()["conversation_id"]
    assert before["personalised"] is True
    state.slates.flush()
    assert state.loop.log.slate(before["slate_id"]) is not None
    assert ERASED in state.registry.user_ids("v0001")

    started = time.time()
    answer = client.delete(f"/v1/users/{ERASED}", headers=admin)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert time.time() - started < 1.0
    assert report["events"] == 3 and report["slates"] == 1 and report["impressions"] > 0
    assert report["consent"] is True
    assert report["cache_entries_purged"] >= 1
    assert report["models_holding_user"] == ["v0001"]
    assert report["model_rebuild_by"] == pytest.approx(
        report["erased_at"] + state.settings.erasure_rebuild_s
    )

    # the store: nothing left but the tombstone, which refuses replayed events
    assert state.store.history(ERASED) == []
    assert state.store.get_user(ERASED) is None
    assert state.loop.log.slate(before["slate_id"]) is None
    replay = [{"event_id": "x9", "user_id": ERASED, "item_id": "i9", "kind": "click"}]
    posted = client.post("/v1/events", json={"events": replay}, headers=bearer(keys["client"]))
    assert posted.json()["stored"] == 0 and posted.json()["refused_erased"] == 1

    # every GET route: nothing derived from the user (the audit log records the request)
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        if "get" not in operations or path in ("/v1/audit", "/openapi.json"):
            continue
        url = re.sub(r"\{user_id\}", ERASED, path)
        url = re.sub(r"\{slate_id\}", before["slate_id"], url)
        url = re.sub(r"\{[a-z_]+\}", "0", url)
        response = client.get(url, headers=admin)
        assert response.status_code < 500, (url, response.text)
        if response.status_code == 200 and "{user_id}" in path:
            body = response.json()
            if "personalised" in body:
                assert body["personalised"] is False, url
            if "generative" in body:  # consent: back to the defaults
                assert body == {
                    "personalisation": True,
                    "training": True,
                    "generative": False,
                }
        elif "{user_id}" not in path:
            assert ERASED not in response.text, url
    scope = user_scope(ERASED)
    gone = client.get(f"/v1/conversations/{conversation}", headers=bearer(keys["client"]))
    assert gone.status_code == 404
    if redis_client is not None:
        client_, namespace = redis_client
        for name in client_.scan_iter(match=f"{namespace}:*"):
            assert ERASED.encode() not in name and scope.encode() not in name
            value = client_.get(name) or b""
            assert ERASED.encode() not in value, name
    else:
        assert not [k for k in state.cache.entry_keys() if scope in k]  # type: ignore[attr-defined]

    # the audit log: request and completion
    entries = client.get("/v1/audit", params={"subject": ERASED}, headers=admin).json()
    actions = [e["action"] for e in entries["entries"]]
    assert actions[:3] == ["erasure-complete", "erasure-stored-data-deleted", "erasure-requested"]

    # models: rebuilt without the user at the loop updater's next run
    assert state.updater.retrain is not None
    assert state.updater.retrain.due(time.time()) == "erasure"
    state.updater.update()
    new = state.registry.active()
    assert new != "v0001" and ERASED not in state.registry.user_ids(new)
    assert state.updater.retrain.due(time.time()) is None
    history = state.loop.log.retrain_history(1)
    assert history[0].trigger == "erasure" and history[0].status == "done"


def test_erasure_needs_admin_and_a_per_user_model_forgets_at_once(tmp_path: Path) -> None:
    settings = ServiceSettings(home=tmp_path / "home", key_cache_s=0.0, loop=False)
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")
    train_version(state.store, state.registry, "BPR", {"factors": 8, "epochs": 5})
    keys = {role: create_key(state.store, role, role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        assert client.delete("/v1/users/u3", headers=bearer(keys["client"])).status_code == 403
        assert recommend(client, keys["client"], "u3")["personalised"] is True
        assert client.delete("/v1/users/u3", headers=bearer(keys["admin"])).status_code == 200
        # BPR still holds u3's factors until the rebuild, but may no longer use them
        assert "u3" in state.models.current().users.ids()
        slate = recommend(client, keys["client"], "u3")
        assert slate["personalised"] is False
        assert {it["source"] for it in slate["items"]} == {"popular"}
    state.close()


def test_data_minimisation_drops_and_counts_fields_outside_the_allow_lists(
    tmp_path: Path,
) -> None:
    settings = ServiceSettings(
        home=tmp_path / "home", loop=False, allowed_context_keys="device", key_cache_s=0.0
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")
    key = create_key(state.store, "c", "client")[1]
    with TestClient(create_app(state=state)) as client:
        users = [{"user_id": "p1", "attributes": {"age": 30, "email": "a@b.c", "gender": "F"}}]
        answer = client.post("/v1/users", json={"users": users}, headers=bearer(key)).json()
        assert answer == {"stored": 1, "fields_dropped": 1, "refused_erased": 0}
        assert state.store.get_user("p1") == {"age": 30, "gender": "F"}
        event = {
            "event_id": "c1",
            "user_id": "p1",
            "item_id": "i1",
            "kind": "click",
            "context": {"device": "phone", "gps": "51.5,-0.1"},
            "shoe_size": 42,
        }
        answer = client.post("/v1/events", json={"events": [event]}, headers=bearer(key)).json()
        assert answer["stored"] == 1 and answer["unknown_fields_dropped"] == 2
    state.close()


def test_retention_purges_old_events_by_kind_and_old_slates(tmp_path: Path) -> None:
    settings = ServiceSettings(
        home=tmp_path / "home", loop=False, retention_days="view=1", slate_retention_days=2
    )
    state = ServiceState.open(settings)
    now = time.time()
    day = 86400.0
    events = [
        {"event_id": "old-view", "user_id": "a", "item_id": "i1", "kind": "view"},
        {"event_id": "new-view", "user_id": "a", "item_id": "i2", "kind": "view"},
        {"event_id": "old-click", "user_id": "a", "item_id": "i3", "kind": "click"},
    ]
    stamps = {"old-view": now - 3 * day, "new-view": now - 0.5 * day, "old-click": now - 9 * day}
    from recloop.service.schemas import parse_events
    from recloop.store.slates import Impression, SlateRecord

    records, _, _ = parse_events([{**e, "timestamp": stamps[e["event_id"]]} for e in events])
    state.store.add_events(records)
    state.loop.log.add_slates(
        [
            SlateRecord(
                f"s{age}", "a", now - age * day, "v1", "new", (Impression(0, "i1", "m", 1.0),)
            )
            for age in (1, 3)
        ]
    )
    removed = state.updater.purge(now)  # type: ignore[misc]
    assert removed == {"view": 1, "slates": 1}
    assert [item for item, _, _ in state.store.history("a")] == ["i3", "i2"]
    assert state.loop.log.slate("s1") is not None and state.loop.log.slate("s3") is None
    assert state.privacy.audit(subject="*")[0].action == "purge"
    state.close()
