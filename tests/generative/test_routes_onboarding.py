"""POST /v1/onboarding end to end: a real SQLite store, real trained models, the real app."""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.routes_onboarding import ONBOARDING, event_id
from recloop.service.settings import ServiceSettings
from recloop.store.events import ItemRecord
from service.test_app import N_ITEMS, tiny_dataset

TITLES = (
    "Crimson Tide", "Blue Lagoon", "Iron Harvest", "Silver Comet", "Golden Fleece",
    "Amber Waves", "Quiet Meadow", "Paper Lanterns", "Velvet Night", "Hollow Pines",
    "Marble Steps", "Copper Kettle",
)  # fmt: skip
Service = tuple[TestClient, dict[str, str], ServiceState]


class WordEncoder:
    """A tiny deterministic text encoder (hashed bag of words), so no model is loaded."""

    name = "words-64"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[row, zlib.crc32(word.encode()) % 64] += 1.0
        return out


def open_service(tmp_path: Path, model: str, config: dict[str, Any]) -> Iterator[Service]:
    settings = ServiceSettings(home=tmp_path / "home", key_cache_s=0.0, model_check_s=0.05)
    state = ServiceState.open(settings)
    dataset = tiny_dataset()
    import_dataset(state.store, dataset, source="tiny")
    state.store.upsert_items(  # distinctive titles, a genre and a decade per taste group
        [
            ItemRecord(
                item_id=f"i{i}",
                title=TITLES[i],
                text=f"{TITLES[i]}. Genres: {'A' if i < 6 else 'B'}",
                attributes={"genres": ["A" if i < 6 else "B"], "year": 1975 if i < 6 else 1995},
            )
            for i in range(N_ITEMS)
        ]
    )
    train_version(state.store, state.registry, model, config)
    state.extensions["generative.conversation.encoder"] = WordEncoder()
    keys = {role: create_key(state.store, f"test {role}", role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """EASE is active: it cannot reconstruct, so onboarding fits its own Mult-VAE (shared by
    the module's tests, which use users of their own)."""
    yield from open_service(tmp_path_factory.mktemp("onboarding"), "EASE", {"l2": 1.0})


def post(client: TestClient, key: str, body: dict[str, Any], status: int = 200) -> Any:
    response = client.post("/v1/onboarding", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == status, response.text
    return response.json()


def group(item_ids: list[str]) -> set[str]:
    return {"A" if int(i[1:]) < 6 else "B" for i in item_ids}


def test_liked_items_give_a_profile_and_items_of_their_taste(service: Service) -> None:
    client, keys, state = service
    out = post(client, keys["client"], {"user_id": "new-1", "liked_items": ["i7", "i9"], "n": 3})
    items = [it["item_id"] for it in out["items"]]
    assert len(items) == 3 and group(items) == {"B"}
    assert not {"i7", "i9"} & set(items)
    assert all(it["source"] == "onboarding" for it in out["items"])
    assert out["method"] == "profile:MultVAE>EASE" and out["model_version"] == "v0001"
    profile = out["profile"]
    assert [p["item_id"] for p in profile[:2]] == ["i7", "i9"]
    assert [p["weight"] for p in profile[:2]] == [1.0, 1.0]
    assert all(0 < p["weight"] <= 1.0 for p in profile[2:])
    assert out["stored_events"] == 0 and state.store.history("new-1") == []
    assert any("Mult-VAE" in note for note in out["notes"])
    # the fitted onboarding model is kept for this model version
    first = state.extensions[ONBOARDING]
    assert first.fitted is True
    post(client, keys["client"], {"user_id": "new-2", "liked_items": ["i1"]})
    assert state.extensions[ONBOARDING] is first


def test_nothing_given_is_labelled_popularity(service: Service) -> None:
    client, keys, _ = service
    out = post(client, keys["client"], {"user_id": "new-3", "n": 4})
    assert out["method"] == "popular" and out["profile"] == []
    assert [it["source"] for it in out["items"]] == ["popular"] * 4


def test_answers_and_text_seed_the_profile(service: Service) -> None:
    client, keys, _ = service
    by_genre = post(client, keys["client"], {"user_id": "n4", "answers": {"genres": ["A"]}})
    seeds = {p["item_id"] for p in by_genre["profile"] if p["weight"] == 0.5}
    assert seeds == {f"i{i}" for i in range(6)}  # every genre-A item, most popular first
    assert group([it["item_id"] for it in by_genre["items"][:3]]) == {"A"}
    by_decade = post(client, keys["client"], {"user_id": "n5", "answers": {"decades": [1990]}})
    assert group([it["item_id"] for it in by_decade["items"][:3]]) == {"B"}
    text = post(client, keys["client"], {"user_id": "n6", "text": "Velvet Night, Hollow Pines"})
    seeds = [p["item_id"] for p in text["profile"] if p["weight"] == 1.0]
    assert sorted(seeds) == ["i8", "i9"]
    assert group([it["item_id"] for it in text["items"][:3]]) == {"B"}
    matching = [n for n in text["notes"] if n.startswith("text matching")]
    assert len(matching) == 1
    if importlib.util.find_spec("faiss") is not None:  # the retrieval stack is installed
        assert matching == ["text matching: dense"]


def test_liked_items_can_be_stored_idempotently(service: Service) -> None:
    client, keys, state = service
    body = {"user_id": "n7", "liked_items": ["i2", "i3"], "store_likes": True}
    first = post(client, keys["client"], body)
    assert first["stored_events"] == 2
    again = post(client, keys["client"], body)
    assert again["stored_events"] == 0
    history = state.store.history("n7")
    assert sorted(item for item, _, _ in history) == ["i2", "i3"]
    assert {kind.name for _, _, kind in history} == {"LIKE"}
    assert state.store.has_events([event_id("n7", "i2"), event_id("n7", "i3")]) == {
        event_id("n7", "i2"): 1,
        event_id("n7", "i3"): 1,
    }
    # the stored likes are the user's history now: still never recommended back
    assert not {"i2", "i3"} & {it["item_id"] for it in again["items"]}
    later = post(client, keys["client"], {"user_id": "n7", "liked_items": ["i4"]})
    assert any("2 earlier stored events" in note for note in later["notes"])
    assert not {"i2", "i3", "i4"} & {it["item_id"] for it in later["items"]}


def test_personalisation_off_gets_popularity(service: Service) -> None:
    from recloop.store.privacy import Consent

    client, keys, state = service
    state.consent.set("n10", Consent(personalisation=False), actor="test")
    out = post(client, keys["client"], {"user_id": "n10", "liked_items": ["i7"]})
    assert out["method"] == "popular" and out["profile"] == []
    assert {it["source"] for it in out["items"]} == {"popular"}
    assert any("personalisation is off" in note for note in out["notes"])


def test_bad_input_answers_4xx(service: Service) -> None:
    client, keys, _ = service
    unknown = post(client, keys["client"], {"user_id": "n8", "liked_items": ["nope"]}, 400)
    assert "unknown item 'nope'" in unknown["detail"]
    genre = post(client, keys["client"], {"user_id": "n8", "answers": {"genres": ["Jazz"]}}, 400)
    assert "unknown genre 'Jazz'" in genre["detail"]
    decade = post(client, keys["client"], {"user_id": "n8", "answers": {"decades": [1985]}}, 400)
    assert "1980" in decade["detail"]
    extra = post(client, keys["client"], {"user_id": "n8", "colour": "red"}, 422)
    assert extra["errors"][0]["field"] == "colour"
    post(client, keys["client"], {"user_id": "n8", "n": 0}, 422)
    response = client.post("/v1/onboarding", json={"user_id": "n8"})
    assert response.status_code == 401


def test_a_reconstructing_active_model_is_used_itself(tmp_path: Path) -> None:
    config = {"hidden_dims": [32], "latent_dim": 8, "lr": 0.01, "batch_size": 16,
              "max_epochs": 40, "early_stopping": False, "device": "cpu"}  # fmt: skip
    for client, keys, state in open_service(tmp_path, "MultVAE", config):
        out = post(client, keys["client"], {"user_id": "n9", "liked_items": ["i0"], "n": 3})
        assert out["method"] == "reconstruction:MultVAE"
        assert group([it["item_id"] for it in out["items"]]) == {"A"}
        assert not any("fitted" in note for note in out["notes"])
        assert state.extensions[ONBOARDING].fitted is False
