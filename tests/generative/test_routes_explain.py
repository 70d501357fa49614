"""GET /v1/explanations/{slate_id}/{position} on the real app with a trained EASE."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from recloop.data.types import Catalog, Dataset
from recloop.generative.faithfulness import FaithfulnessChecker
from recloop.generative.llm import Generation, GenerationError, GenerationRequest, Message
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.generation import GENERATOR
from recloop.service.routes_explain import EXPLAIN
from recloop.service.settings import ServiceSettings
from recloop.store.slates import Impression, SlateLog, SlateRecord
from service.test_app import tiny_dataset

N_USERS, N_ITEMS = 30, 12
TITLES = [
    "Toy Story",
    "Aladdin",
    "Lion King, The",
    "Pinocchio",
    "Dumbo",
    "Fantasia",
    "Heat",
    "Usual Suspects, The",
    "Casino",
    "Fargo",
    "Seven (Se7en)",
    "Reservoir Dogs",
]


def films() -> Dataset:
    """The service tests' two taste groups (users 0-14 watch items 0-5, users 15-29 items
    6-11), with real titles: animated films first, crime films after."""
    inter = tiny_dataset().interactions
    genres = [
        ["Animation", "Children's"] if i < 6 else ["Crime", "Thriller"] for i in range(N_ITEMS)
    ]
    catalog = Catalog(
        inter.items,
        TITLES,
        [f"{t}." for t in TITLES],
        {"genres": genres, "year": [1990 + i for i in range(N_ITEMS)]},
    )
    return Dataset("films", inter, catalog)


class FakeLLM:
    """A scripted backend; ``hosted`` decides whether consent is needed."""

    def __init__(self, text: str, *, hosted: bool) -> None:
        self.name = "fake-hosted" if hosted else "fake-local"
        self.hosted = hosted
        self.model = "fake-1"
        self.text = text
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        return Generation(text=self.text, backend=self.name, model=self.model)

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        raise GenerationError("no scoring")


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], ServiceState]]:
    yield from films_service(tmp_path)


def films_service(
    tmp_path: Path, **settings_: Any
) -> Iterator[tuple[TestClient, dict[str, str], ServiceState]]:
    """The films catalogue served by EASE, without the loop; ``settings_`` add settings."""
    settings = ServiceSettings(
        home=tmp_path / "home", key_cache_s=0.0, model_check_s=0.05, loop=False, **settings_
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, films(), source="films")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    keys = {role: create_key(state.store, f"test {role}", role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def logged_slate(
    client: TestClient, key: str, state: ServiceState, user: str, sources: Sequence[str] = ()
) -> dict[str, Any]:
    """Ask for recommendations, then log the slate ourselves (the app's writer skips a
    slate_id already stored), with ``sources`` replacing the first items' sources."""
    answer = client.get(f"/v1/users/{user}/recommendations", params={"n": 3}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    slate = answer.json()
    for item, source in zip(slate["items"], sources, strict=False):
        item["source"] = source
    SlateLog(state.store).add_slates(
        [
            SlateRecord(
                slate_id=slate["slate_id"],
                user_id=user,
                created_at=time.time(),
                model_version=slate["model_version"],
                segment="all",
                items=tuple(
                    Impression(it["position"], it["item_id"], it["source"], it["score"])
                    for it in slate["items"]
                ),
            )
        ]
    )
    return slate  # type: ignore[no-any-return]


def explain(client: TestClient, key: str, handle: str) -> Any:
    return client.get(f"/v1/explanations/{handle}", headers=bearer(key))


def test_explanation_of_a_logged_slate(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    slate = logged_slate(client, keys["client"], state, "u0")
    item = slate["items"][0]
    answer = explain(client, keys["client"], item["explanation"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["handle"] == item["explanation"] and body["item_id"] == item["item_id"]
    assert body["generated"] is True and body["backend"] == "template"
    assert body["faithful"] is True and body["fallback_used"] is False and body["cached"] is False
    evidence = body["evidence"]
    assert evidence["source"] == "EASE" and evidence["score"] == pytest.approx(item["score"])
    assert evidence["method"] == "item_weights"
    history = {i for i, _, _ in state.store.history("u0")}
    drivers = [d["item"]["item_id"] for d in evidence["drivers"]]
    assert drivers and set(drivers) <= history  # drivers come from the user's history
    assert all(int(d[1:]) < 6 for d in drivers)  # ... from the user's taste group
    assert evidence["shared_genres"] == ["Animation", "Children's"]
    assert body["text"].startswith("Because you watched ")
    checker = FaithfulnessChecker.from_items([])
    from recloop.generative.evidence import Evidence

    assert checker.check(body["text"], Evidence.from_dict(evidence)).faithful
    again = explain(client, keys["client"], item["explanation"]).json()
    assert again["cached"] is True and again["text"] == body["text"]


def test_items_from_the_popularity_source_say_so(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    slate = logged_slate(client, keys["client"], state, "u5", sources=["popular"])
    body = explain(client, keys["client"], slate["items"][0]["explanation"]).json()
    assert body["evidence"]["source"] == "popular"
    assert body["evidence"]["method"] == "similarity"  # not the model's weights
    assert "most popular titles with other viewers" in body["text"] and body["faithful"]


def test_slates_the_app_logs_itself_are_explained(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, _ = service
    answer = client.get(
        "/v1/users/u16/recommendations", params={"n": 2}, headers=bearer(keys["client"])
    )
    handle = answer.json()["items"][1]["explanation"]
    deadline = time.monotonic() + 5.0
    found = explain(client, keys["client"], handle)
    while found.status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)  # the background writer logs slates within ~0.2 s
        found = explain(client, keys["client"], handle)
    assert found.status_code == 200, found.text
    assert found.json()["faithful"] and found.json()["evidence"]["shared_genres"] == [
        "Crime",
        "Thriller",
    ]


def test_unknown_slates_and_positions_answer_404(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    missing = explain(client, keys["client"], "f" * 32 + "/0")
    assert missing.status_code == 404 and "not found (yet)" in missing.json()["detail"]
    slate = logged_slate(client, keys["client"], state, "u1")
    beyond = explain(client, keys["client"], f"{slate['slate_id']}/7")
    assert beyond.status_code == 404 and "no position 7" in beyond.json()["detail"]
    assert explain(client, keys["client"], f"{slate['slate_id']}/-1").status_code == 422
    assert client.get(f"/v1/explanations/{slate['slate_id']}/0").status_code == 401


def test_hosted_backend_needs_generative_consent(
    service: tuple[TestClient, dict[str, str], ServiceState], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys, state = service
    monkeypatch.setenv("RECLOOP_EXPLAIN_POLICY", "everyone")
    hosted = FakeLLM("Like the films you watched, it is an animated film.", hosted=True)
    state.extensions[GENERATOR] = hosted
    slate = logged_slate(client, keys["client"], state, "u2")
    handle = slate["items"][0]["explanation"]
    refused = explain(client, keys["client"], handle).json()
    assert refused["backend"] == "template" and refused["fallback_reason"] == "consent"
    assert refused["fallback_used"] is True and not hosted.requests
    consent = {"personalisation": True, "training": True, "generative": True}
    put = client.put("/v1/users/u2/consent", json=consent, headers=bearer(keys["client"]))
    assert put.status_code == 200, put.text
    allowed = explain(client, keys["client"], handle).json()
    assert allowed["backend"] == "fake-hosted" and allowed["cached"] is False
    assert len(hosted.requests) == 1 and hosted.requests[0].contains_personal_data
    drivers = [d["item"]["title"] for d in allowed["evidence"]["drivers"]]
    assert any(title in hosted.requests[0].messages[1].content for title in drivers)
    assert allowed["faithful"] and allowed["text"] == hosted.text
    assert allowed["fallback_used"] is False
    # consent has one home, the consent API: a look-alike key in the preferences is ignored
    other = logged_slate(client, keys["client"], state, "u6")
    prefs = {"preferences": {"consent": {"generative": True}}}
    put = client.put("/v1/users/u6/preferences", json=prefs, headers=bearer(keys["client"]))
    assert put.status_code == 200, put.text
    answer = explain(client, keys["client"], other["items"][0]["explanation"]).json()
    assert answer["backend"] == "template" and answer["fallback_reason"] == "consent"


def test_policy_and_unfaithful_local_text(
    service: tuple[TestClient, dict[str, str], ServiceState], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys, state = service
    monkeypatch.setenv("RECLOOP_EXPLAIN_POLICY", "nobody")
    local = FakeLLM("Because you watched Heat, you will love this thriller.", hosted=False)
    state.extensions[GENERATOR] = local
    slate = logged_slate(client, keys["client"], state, "u3")
    handle = slate["items"][0]["explanation"]
    reserved = explain(client, keys["client"], handle).json()
    assert reserved["fallback_reason"] == "policy" and not local.requests
    monkeypatch.setenv("RECLOOP_EXPLAIN_POLICY", "everyone")
    state.extensions.pop(EXPLAIN)  # settings are read once per worker: rebuild them
    unfaithful = explain(client, keys["client"], handle).json()
    assert unfaithful["fallback_reason"] == "unfaithful" and unfaithful["faithful"] is True
    assert unfaithful["backend"] == "template" and len(local.requests) == 2


def test_catalogue_changes_reach_the_checker(
    service: tuple[TestClient, dict[str, str], ServiceState],
) -> None:
    client, keys, state = service
    slate = logged_slate(client, keys["client"], state, "u4")
    handle = slate["items"][0]["explanation"]
    assert explain(client, keys["client"], handle).status_code == 200
    checker = state.extensions[EXPLAIN].checker
    new_item = {"items": [{"item_id": "i99", "title": "Brand New Film", "attributes": {}}]}
    assert client.post("/v1/items", json=new_item, headers=bearer(keys["admin"])).status_code == 200
    assert explain(client, keys["client"], handle).status_code == 200
    rebuilt = state.extensions[EXPLAIN].checker
    assert rebuilt is not checker
    assert [m.kind for m in rebuilt.mentions("You may like Brand New Film.")] == ["title"]
