"""The HTTP service end to end: a real SQLite store, a real trained EASE, the real app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recloop.data.types import Catalog, Dataset, IdMap, Interactions
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings

N_USERS, N_ITEMS = 30, 12


def tiny_dataset() -> Dataset:
    """Two taste groups: users 0-14 like items 0-5, users 15-29 like items 6-11."""
    rng = np.random.default_rng(0)
    users, items, stamps = [], [], []
    for u in range(N_USERS):
        group = range(0, 6) if u < 15 else range(6, 12)
        for t, i in enumerate(rng.permutation(list(group))[:4]):
            users.append(u)
            items.append(int(i))
            stamps.append(1_000_000 + 10 * t)
    user_map = IdMap(f"u{u}" for u in range(N_USERS))
    item_map = IdMap(f"i{i}" for i in range(N_ITEMS))
    inter = Interactions.from_arrays(users, items, stamps, users=user_map, items=item_map)
    catalog = Catalog(
        item_map,
        [f"Item {i}" for i in range(N_ITEMS)],
        [f"text {i}" for i in range(N_ITEMS)],
        {"genres": [["A"] if i < 6 else ["B"] for i in range(N_ITEMS)]},
    )
    return Dataset("tiny", inter, catalog)


def model_only_loop(folder: Path) -> Path:
    """A loop config whose one arm is the model alone: the blend then keeps the model's order,
    so these tests see the model's answers (tests/service/test_loop.py covers the bandit)."""
    path = folder / "loop.json"
    path.write_text('{"arms": [{"name": "model", "weights": {"model": 1.0}}]}')
    return path


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[TestClient, dict[str, str], ServiceState]]:
    """The app on the embedded defaults, and on the local PostgreSQL and Redis."""
    stores = store_settings(request)
    settings = ServiceSettings(
        home=tmp_path / "home",
        key_cache_s=0.0,
        model_check_s=0.05,
        loop_config=model_only_loop(tmp_path),
        **stores,
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    keys = {role: create_key(state.store, f"test {role}", role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state


def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the local PostgreSQL and Redis under the "postgresql+redis" param."""
    if request.param != "postgresql+redis":
        return {}
    cache_url, namespace = request.getfixturevalue("redis_url")
    return {
        "db": request.getfixturevalue("postgres_url"),
        "cache_url": cache_url,
        "cache_namespace": namespace,
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def recommend(client: TestClient, key: str, user: str, n: int = 5) -> dict:  # type: ignore[type-arg]
    response = client.get(f"/v1/users/{user}/recommendations", params={"n": n}, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_health_and_readiness(service: tuple[TestClient, dict[str, str], ServiceState]) -> None:
    client, _, _ = service
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready == {"status": "ok", "model_version": "v0001", "detail": None}


def test_recommendations_are_labelled_and_follow_taste(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, _ = service
    slate = recommend(client, keys["client"], "u0", n=2)
    assert slate["user_id"] == "u0" and slate["model_version"] == "v0001"
    assert len(slate["slate_id"]) == 32
    items = slate["items"]
    assert [it["position"] for it in items] == [0, 1]
    assert all(it["source"] == "EASE" and it["generated"] is False for it in items)
    assert all(it["explanation"] == f"{slate['slate_id']}/{it['position']}" for it in items)
    # user u0 is in the first taste group: its best unseen items come from i0..i5
    assert all(int(it["item_id"][1:]) < 6 for it in items)
    assert items[0]["score"] >= items[1]["score"]


def test_unknown_user_gets_labelled_popularity(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, _ = service
    slate = recommend(client, keys["client"], "someone-new", n=3)
    assert [it["source"] for it in slate["items"]] == ["popular"] * 3


def test_consumed_and_hidden_items_never_appear(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    before = [it["item_id"] for it in recommend(client, keys["client"], "u1", n=N_ITEMS)["items"]]
    consumed, hidden = before[0], before[1]
    event = {
        "event_id": "e-consumed",
        "user_id": "u1",
        "item_id": consumed,
        "kind": "click",
        "timestamp": time.time() - 1,
    }
    posted = client.post("/v1/events", json={"events": [event]}, headers=bearer(keys["client"]))
    assert posted.json()["stored"] == 1
    patched = client.patch(
        f"/v1/items/{hidden}", json={"hidden": True}, headers=bearer(keys["admin"])
    )
    assert patched.status_code == 200 and patched.json()["hidden"] is True
    after = [it["item_id"] for it in recommend(client, keys["client"], "u1", n=N_ITEMS)["items"]]
    assert consumed not in after and hidden not in after
    history = {item for item, _, _ in state.store.history("u1")}
    assert not history & set(after)
    # and for an unknown user too, who gets popularity
    fresh = [it["item_id"] for it in recommend(client, keys["client"], "new", N_ITEMS)["items"]]
    assert hidden not in fresh
    # an item whose availability window has not opened yet is blocked as well
    later = client.patch(
        f"/v1/items/{fresh[0]}",
        json={"available_from": time.time() + 3600},
        headers=bearer(keys["admin"]),
    )
    assert later.status_code == 200
    fresh_after = [it["item_id"] for it in recommend(client, keys["client"], "new", 5)["items"]]
    assert fresh[0] not in fresh_after


def test_events_are_idempotent_and_checked_one_by_one(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    count = state.store.count_events()
    batch = {
        "events": [
            {"event_id": "a", "user_id": "u2", "item_id": "i3", "kind": "like", "extra": 1},
            {"event_id": "b", "user_id": "u2", "item_id": "i4", "kind": "teleport"},
            {"event_id": "c", "user_id": "u2", "kind": "view", "timestamp": "2024-01-02T03:04:05Z"},
            "not an object",
            {"user_id": "u2", "item_id": "i4", "kind": "skip"},
        ]
    }
    first = client.post("/v1/events", json=batch, headers=bearer(keys["client"])).json()
    assert first["stored"] == 2 and first["duplicates"] == 0
    assert first["unknown_fields_dropped"] == 1
    rejected = {r["index"]: r for r in first["rejected"]}
    assert set(rejected) == {1, 3, 4}
    assert rejected[1]["event_id"] == "b" and rejected[1]["errors"][0]["field"] == "kind"
    assert rejected[4]["errors"][0]["field"] == "event_id"
    retry = client.post("/v1/events", json=batch, headers=bearer(keys["client"])).json()
    assert retry["stored"] == 0 and retry["duplicates"] == 2
    assert state.store.count_events() == count + 2


def test_bad_requests_answer_4xx_with_the_field(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, _ = service
    headers = bearer(keys["admin"])
    too_many = {"events": [{}] * 10_001}
    response = client.post("/v1/events", json=too_many, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "events"
    response = client.get("/v1/users/u1/recommendations", params={"n": 0}, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "query.n"
    response = client.post("/v1/events", content=b"{not json", headers=headers)
    assert response.status_code == 422
    response = client.post("/v1/items", json={"items": [{"title": "x"}]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "items.0.item_id"
    response = client.patch("/v1/items/nope", json={"hidden": True}, headers=headers)
    assert response.status_code == 404
    response = client.patch("/v1/items/i1", json={"title": None}, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "title"
    response = client.patch("/v1/items/i1", json={"available_from": None}, headers=headers)
    assert response.status_code == 200 and response.json()["title"] == "Item 1"
    response = client.get("/v1/items/nope/similar", headers=headers)
    assert response.status_code == 404


def test_keys_and_roles(service: tuple[TestClient, dict[str, str], ServiceState]) -> None:
    client, keys, state = service
    url = "/v1/users/u1/recommendations"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=bearer("rlk_000000000000_wrong")).status_code == 401
    assert client.get(url, headers={"X-API-Key": keys["client"]}).status_code == 200
    item = {"items": [{"item_id": "i99", "title": "New"}]}
    assert client.post("/v1/items", json=item, headers=bearer(keys["client"])).status_code == 403
    assert client.get("/v1/models", headers=bearer(keys["client"])).status_code == 403
    assert client.post("/v1/items", json=item, headers=bearer(keys["admin"])).status_code == 200
    assert state.store.get_item("i99") is not None
    # a revoked key stops working (the test's key cache keeps nothing)
    key_id = next(k.key_id for k in state.store.list_keys() if k.role == "client")
    state.store.revoke_key(key_id, time.time())
    assert client.get(url, headers=bearer(keys["client"])).status_code == 401


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = ServiceSettings(home=tmp_path / "home", rate_limit=0.5, rate_burst=2)
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    key = create_key(state.store, "limited", "client")[1]
    with TestClient(create_app(state=state)) as client:
        codes = [client.get("/v1/users/u1/recommendations", headers=bearer(key)) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1


def test_models_list_and_hot_swap(service: tuple[TestClient, dict[str, str], ServiceState]) -> None:
    client, keys, state = service
    second = train_version(state.store, state.registry, "ItemKNN", {}, activate=False)
    admin = bearer(keys["admin"])
    listing = client.get("/v1/models", headers=admin).json()
    assert listing["active"] == "v0001" and [v["version"] for v in listing["versions"]] == [
        "v0001",
        second,
    ]
    swapped = client.post(f"/v1/models/{second}/activate", headers=admin)
    assert swapped.status_code == 200 and swapped.json()["active"] == second
    slate = recommend(client, keys["client"], "u3")
    assert slate["model_version"] == second
    assert {it["source"] for it in slate["items"]} == {"ItemKNN"}
    assert client.post("/v1/models/v0404/activate", headers=admin).status_code == 404


def test_similar_items_preferences_users_metrics_openapi(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    headers = bearer(keys["client"])
    similar = client.get("/v1/items/i0/similar", params={"n": 3}, headers=headers).json()
    assert similar["item_id"] == "i0" and len(similar["items"]) == 3
    assert "i0" not in [it["item_id"] for it in similar["items"]]
    prefs = {"preferences": {"diversity": 0.5}}
    put = client.put("/v1/users/u5/preferences", json=prefs, headers=headers)
    assert put.status_code == 200 and put.json() == prefs
    assert state.store.get_preferences("u5") == {"diversity": 0.5}
    users = {"users": [{"user_id": "u100", "attributes": {"age": 30}}]}
    answer = client.post("/v1/users", json=users, headers=headers).json()
    assert answer == {"stored": 1, "fields_dropped": 0, "refused_erased": 0}
    assert state.store.get_user("u100") == {"age": 30}
    metrics = client.get("/metrics").text
    assert "recloop_http_requests_total" in metrics and "recloop_events_stored" in metrics
    spec = client.get("/openapi.json").json()
    assert "/v1/users/{user_id}/recommendations" in spec["paths"]
    assert "EventIn" in spec["components"]["schemas"]


def test_candidate_cache_gives_the_same_slates(tmp_path: Path) -> None:
    """Cached candidates change nothing a user sees, and a new event refreshes them."""
    slates: dict[bool, list[list[str]]] = {}
    for cached in (True, False):
        settings = ServiceSettings(
            home=tmp_path / f"home-{cached}",
            candidate_cache=cached,
            loop_config=model_only_loop(tmp_path),
        )
        state = ServiceState.open(settings)
        import_dataset(state.store, tiny_dataset(), source="tiny")
        train_version(state.store, state.registry, "EASE", {"l2": 1.0})
        key = create_key(state.store, "k", "client")[1]
        with TestClient(create_app(state=state)) as client:
            runs = []
            for user in ("u0", "u20", "u0", "nobody"):
                runs.append([it["item_id"] for it in recommend(client, key, user, 3)["items"]])
            event = {"event_id": "x", "user_id": "u0", "item_id": runs[0][0], "kind": "view"}
            client.post("/v1/events", json={"events": [event]}, headers=bearer(key))
            runs.append([it["item_id"] for it in recommend(client, key, "u0", 3)["items"]])
            # candidates are cached only when asked to be
            keys = state.cache.entry_keys()  # type: ignore[attr-defined]
            assert any(k.startswith("candidates:") for k in keys) == cached
        slates[cached] = runs
    assert slates[True] == slates[False]
    assert slates[True][0] == slates[True][2] and slates[True][0][0] not in slates[True][4]


def test_gaps_rank_the_segments_of_the_stored_users(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    assert client.get("/v1/gaps", headers=bearer(keys["client"])).status_code == 403
    response = client.get("/v1/gaps", params={"segments": 2}, headers=bearer(keys["admin"]))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["model_version"] == "v0001"
    assert report["events"] == state.store.count_events()
    segments = report["segments"]
    assert sum(s["size"] for s in segments) == N_USERS
    gaps = [s["gap"] for s in segments]
    assert gaps == sorted(gaps, reverse=True)
    assert all(item.startswith("i") for s in segments for item in s["top_items"])
    # the two taste groups of the tiny dataset are the two segments
    tops = [{int(i[1:]) < 6 for i in s["top_items"]} for s in segments]
    assert all(len(t) == 1 for t in tops) and tops[0] != tops[1]
    # the 2-D map: every user a point, each segment's centroid apart from the other's
    points, centroids = report["map"]["points"], report["map"]["centroids"]
    assert len(points) == N_USERS and {p["segment"] for p in points} == {0, 1}
    assert len(centroids) == 2
    assert (
        abs(centroids[0]["x"] - centroids[1]["x"]) + abs(centroids[0]["y"] - centroids[1]["y"])
        > 0.1
    )
    again = client.get("/v1/gaps", params={"segments": 2}, headers=bearer(keys["admin"]))
    assert again.json() == report  # cached until events or the model change
