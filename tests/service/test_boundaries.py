"""Input the service must refuse at the boundary, field by field, and data it must never take
back after an erasure or without consent (SQLite; PostgreSQL + Redis)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from recloop.service.privacy import erase

from .test_app import bearer
from .test_user_owners import Service, click, post_events, service

__all__ = ["service"]  # the fixture, shared with test_user_owners


def post_raw(client: TestClient, path: str, body: str, key: str, method: str = "POST") -> object:
    """Send ``body`` as it is: JSON escapes such as ``\\ud800`` reach the server unchanged."""
    headers = {**bearer(key), "Content-Type": "application/json"}
    return client.request(method, path, content=body.encode(), headers=headers)


def test_text_that_is_not_unicode_is_refused_by_its_field(service: Service) -> None:
    client, keys, _ = service
    lone = "\\ud800"  # valid JSON, but a lone surrogate no database or answer can hold
    events = [
        '{"event_id": "ok", "user_id": "u1", "item_id": "i1", "kind": "click"}',
        f'{{"event_id": "x{lone}", "user_id": "u1", "item_id": "i1", "kind": "click"}}',
        f'{{"event_id": "c", "user_id": "u1", "kind": "view", "context": {{"page": "{lone}"}}}}',
    ]
    answer = post_raw(client, "/v1/events", '{"events": [' + ", ".join(events) + "]}", keys["a"])
    assert answer.status_code == 200, answer.text  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    assert body["stored"] == 1, body
    rejected = {r["index"]: r for r in body["rejected"]}
    assert rejected[1]["event_id"] is None  # not echoed: it could not be sent back
    assert [e["field"] for e in rejected[1]["errors"]] == ["event_id"]
    assert rejected[2]["event_id"] == "c"
    assert [e["field"] for e in rejected[2]["errors"]] == ["context"]
    prefs = post_raw(
        client,
        "/v1/users/u1/preferences",
        f'{{"preferences": {{"n": "{lone}"}}}}',
        keys["a"],
        "PUT",
    )
    assert prefs.status_code == 422  # type: ignore[attr-defined]
    item = f'{{"items": [{{"item_id": "i99", "title": "T{lone}"}}]}}'
    refused = post_raw(client, "/v1/items", item, keys["admin"])
    assert refused.status_code == 422  # type: ignore[attr-defined]
    assert refused.json()["errors"][0]["field"] == "items.0.title"  # type: ignore[attr-defined]


def test_control_characters_in_ids_are_refused(service: Service) -> None:
    client, keys, _ = service
    a = bearer(keys["a"])
    for path in ("/v1/users/%00/recommendations", "/v1/users/u%01x/consent"):
        answer = client.get(path, headers=a)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["errors"][0]["field"] == "path.user_id"
    bad = {**click("bad", "u1"), "slate_id": "s\x00"}
    body = post_events(client, keys["a"], click("good", "u1"), bad)
    assert body["stored"] == 1  # PostgreSQL refuses NUL: the good event must not go with it
    assert body["rejected"][0]["errors"][0]["field"] == "slate_id"


def test_preferences_are_checked_when_stored(service: Service) -> None:
    client, keys, _ = service
    a = bearer(keys["a"])
    for prefs, key in (
        ({"diversity": "lots"}, "diversity"),
        ({"blocked_genres": "Horror"}, "blocked_genres"),
        ({"max_generated_share": 2}, "max_generated_share"),
    ):
        answer = client.put("/v1/users/u2/preferences", json={"preferences": prefs}, headers=a)
        assert answer.status_code == 422, answer.text
        error = answer.json()["errors"][0]
        assert error["field"] == "preferences" and key in error["message"]
    assert client.get("/v1/users/u2/recommendations", headers=a).status_code == 200
    good = {"preferences": {"diversity": 0.3, "blocked_genres": ["B"], "theme": "dark"}}
    assert client.put("/v1/users/u2/preferences", json=good, headers=a).json() == good


@pytest.mark.parametrize("field", ["timestamp", "value"])
def test_booleans_are_neither_times_nor_values(service: Service, field: str) -> None:
    client, keys, state = service
    body = post_events(client, keys["a"], {**click("b1", "u3"), field: True})
    assert body["stored"] == 0
    assert body["rejected"][0]["errors"][0]["field"] == field
    assert all(ts >= 1_000_000 for _, ts, _ in state.store.history("u3"))  # none from 1970


def test_availability_bounds_must_be_finite(service: Service) -> None:
    client, keys, state = service
    for bound in ("available_from", "available_until"):
        answer = post_raw(client, "/v1/items/i5", f'{{"{bound}": 1e999}}', keys["admin"], "PATCH")
        assert answer.status_code == 422, answer.text  # type: ignore[attr-defined]
    item = state.store.get_item("i5")
    assert item is not None and item.available_from is None and item.available_until is None


def test_similar_items_carry_no_explanation_handle(service: Service) -> None:
    client, keys, _ = service
    answer = client.get("/v1/items/i1/similar", headers=bearer(keys["a"]))
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert items and all(it["explanation"] is None for it in items)  # nothing is logged


def test_an_erased_users_profile_and_preferences_are_refused(service: Service) -> None:
    client, keys, state = service
    a, admin = bearer(keys["a"]), bearer(keys["admin"])
    post_events(client, keys["a"], click("e1", "u4"))
    assert client.delete("/v1/users/u4", headers=admin).status_code == 200
    replay = {"users": [{"user_id": "u4", "attributes": {"age": 33}}, {"user_id": "u5"}]}
    answer = client.post("/v1/users", json=replay, headers=a)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 1 and answer.json()["refused_erased"] == 1
    assert state.store.get_user("u4") is None and state.store.get_user("u5") == {}
    prefs = client.put("/v1/users/u4/preferences", json={"preferences": {}}, headers=a)
    assert prefs.status_code == 410, prefs.text
    assert "erased" in prefs.json()["detail"]
    assert state.store.get_preferences("u4") == {}
    # every copy of a replayed event is accounted for: the first refused, the repeat a duplicate
    body = post_events(client, keys["a"], click("e2", "u4"), click("e2", "u4"))
    assert (body["stored"], body["refused_erased"], body["duplicates"]) == (0, 1, 1)


def test_an_explanation_reads_no_history_without_personalisation(service: Service) -> None:
    client, keys, state = service
    a = bearer(keys["a"])
    post_events(client, keys["a"], click("e1", "u6"))
    off = {"personalisation": False, "training": True, "generative": False}
    assert client.put("/v1/users/u6/consent", json=off, headers=a).status_code == 200
    slate = client.get("/v1/users/u6/recommendations?n=3", headers=a).json()
    assert slate["personalised"] is False
    state.slates.flush()
    for position in range(len(slate["items"])):
        explained = client.get(f"/v1/explanations/{slate['slate_id']}/{position}", headers=a)
        assert explained.status_code == 200, explained.text
        assert explained.json()["evidence"]["drivers"] == []  # nothing from their history
        assert "watched" not in explained.json()["text"]


def test_an_erased_users_slate_has_no_explanation_handles(service: Service) -> None:
    client, keys, state = service
    erase(state, "u7", "test")
    slate = client.get("/v1/users/u7/recommendations?n=3", headers=bearer(keys["admin"])).json()
    assert slate["personalised"] is False
    assert slate["items"] and all(it["explanation"] is None for it in slate["items"])
    assert json.dumps(slate).count("u7") == 1  # only the answer's own user_id


def test_an_explanation_made_during_an_erasure_is_not_cached(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recloop.generative.explain import Explainer
    from recloop.store.cache import user_scope

    client, keys, state = service
    a = bearer(keys["a"])
    post_events(client, keys["a"], click("e1", "u8"))
    slate = client.get("/v1/users/u8/recommendations?n=3", headers=a).json()
    state.slates.flush()
    explain = Explainer.explain

    def erased_meanwhile(self: Explainer, *args: object, **kw: object) -> object:
        erase(state, "u8", "test")  # the user's evidence is already read: as a slow LLM call
        return explain(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Explainer, "explain", erased_meanwhile)
    client.get(f"/v1/explanations/{slate['slate_id']}/0", headers=a)
    scope = user_scope("u8")
    if hasattr(state.cache, "entry_keys"):
        assert not [key for key in state.cache.entry_keys() if scope in key]
    else:  # Redis: the forget marker refuses the write too; nothing under any generation
        names = state.cache._client.scan_iter(match=f"{state.cache.namespace}:*")  # type: ignore[attr-defined]
        assert not [name for name in names if scope.encode() in name]
