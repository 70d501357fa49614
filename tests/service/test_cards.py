"""Model cards: written at training, served as JSON and Markdown."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings

from .test_app import N_USERS, bearer, tiny_dataset


def test_every_trained_version_has_a_card(tmp_path: Path) -> None:
    state = ServiceState.open(ServiceSettings(home=tmp_path / "home", loop=False))
    import_dataset(state.store, tiny_dataset(), source="tiny")
    with_card = train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    without = train_version(state.store, state.registry, "EASE", {"l2": 1.0}, card=False)
    key = create_key(state.store, "c", "client")[1]
    with TestClient(create_app(state=state)) as client:
        card = client.get(f"/v1/models/{with_card}/card", headers=bearer(key)).json()
        assert card["model"] == "EASE" and card["config"]["l2"] == 1.0
        assert card["data"]["users"] == N_USERS and card["data"]["events"] == 120
        assert card["data"]["kinds"] == {"click": 120}
        evaluation = card["evaluation"]
        assert evaluation["users"] == N_USERS
        # the two taste groups are easy: the held-out item is in the top 10 of most users
        assert evaluation["metrics"]["hit@10"] > 0.5
        assert "activity" in evaluation["segments"]
        assert card["privacy"]["differential_privacy"] is None
        assert any("popularity" in text for text in card["limitations"])
        page = client.get(
            f"/v1/models/{with_card}/card", params={"format": "markdown"}, headers=bearer(key)
        )
        assert page.headers["content-type"].startswith("text/markdown")
        assert page.text.startswith(f"# Model card: {with_card} (EASE)")
        assert "| ndcg@10 |" in page.text
        assert client.get(f"/v1/models/{without}/card", headers=bearer(key)).status_code == 404
        assert client.get("/v1/models/v9999/card", headers=bearer(key)).status_code == 404
    state.close()
