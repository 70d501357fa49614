"""The review routes and ``recloop review generate`` on a real app with a trained model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recloop.cli import app as cli_app
from recloop.data.types import Catalog, Dataset
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.routes_review import generated_source
from recloop.service.settings import ServiceSettings
from recloop.store.artifacts import ArtifactRegistry
from recloop.store.events import EventStore

from .test_content import ITEMS, TITLES, interactions

Service = tuple[TestClient, dict[str, str], ServiceState]
GENERATE = {"segments": 2, "top": 2, "items_per_collection": 4}


def dataset() -> Dataset:
    """Two taste groups (see test_content): comedies 0-5 and dramas 6-11."""
    catalog = Catalog(
        ITEMS,
        list(TITLES),
        [f"{t}. A {'comedy' if i < 6 else 'drama'}." for i, t in enumerate(TITLES)],
        {"genres": [["Comedy"] if i < 6 else ["Drama"] for i in range(12)]},
    )
    return Dataset("tiny", interactions(), catalog)


@pytest.fixture(params=["sqlite"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    stores: dict[str, Any] = {}
    if request.param == "postgresql":
        stores = {"db": request.getfixturevalue("postgres_url")}
    settings = ServiceSettings(home=tmp_path / "home", key_cache_s=0.0, **stores)
    state = ServiceState.open(settings)
    import_dataset(state.store, dataset(), source="tiny")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    keys = {role: create_key(state.store, f"test {role}", role)[1] for role in ("client", "admin")}
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(client: TestClient, key: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    response = client.request(method, path, headers=bearer(key), **kw)
    assert response.status_code == status, response.text
    return response.json()


@pytest.mark.parametrize("service", ["sqlite", "postgresql"], indirect=True)
def test_generate_then_review_through_the_api(service: Service) -> None:
    client, keys, state = service
    admin = keys["admin"]
    out = call(client, admin, "POST", "/v1/review/generate", json=GENERATE)
    assert out["model_version"] == "v0001" and out["segments_analysed"] == 2
    submitted = out["submitted"]
    assert len(submitted) == 2 and out["counts"] == {"pending": 2, "approved": 0, "rejected": 0}
    for piece in submitted:
        assert piece["status"] == "pending" and piece["generated"] is True
        assert len(piece["items"]) == 4 and piece["audience_size"] in (8, 12)
        assert {f["check"] for f in piece["findings"]} == {
            "blocklist",
            "catalogue",
            "near_duplicate",
            "length_language",
        }
        assert piece["provenance"]["model_version"] == "v0001"
        assert piece["provenance"]["backend"] == "template"
    listed = call(client, admin, "GET", "/v1/review", params={"status": "pending"})
    assert [p["content_id"] for p in listed["pieces"]] == [p["content_id"] for p in submitted]
    first, second = (p["content_id"] for p in submitted)
    shown = call(client, admin, "GET", f"/v1/review/{first}")
    assert [h["action"] for h in shown["history"]] == ["submit"]

    approved = call(client, admin, "POST", f"/v1/review/{first}/approve")
    assert approved["status"] == "approved" and approved["reviewer"].startswith("key:")
    assert [h["action"] for h in approved["history"]] == ["submit", "approve"]
    again = call(client, admin, "POST", f"/v1/review/{first}/approve", status=409)
    assert "only a pending piece can be approved" in again["detail"]

    # only the approved collection becomes candidates, for the users it was made for
    source = generated_source(state)
    audience = source.queue.audience(first)
    others = source.queue.audience(second)
    assert len(audience) == submitted[0]["audience_size"] and not set(audience) & set(others)
    found = source.candidates(audience[0], n=10)
    assert [c.item_id for c in found] == submitted[0]["items"]
    assert all(c.generated and c.source == "generated" for c in found)
    assert source.candidates(others[0], n=10) == []  # the other piece is still pending

    rejected = call(
        client, admin, "POST", f"/v1/review/{first}/reject", json={"reason": "off-season"}
    )
    assert rejected["status"] == "rejected" and rejected["reason"] == "off-season"
    assert source.candidates(audience[0], n=10) == []


def test_review_validation_errors_and_roles(service: Service) -> None:
    client, keys, _ = service
    admin, client_key = keys["admin"], keys["client"]
    for method, path in [
        ("GET", "/v1/review"),
        ("GET", "/v1/review/x"),
        ("POST", "/v1/review/x/approve"),
        ("POST", "/v1/review/generate"),
    ]:
        assert client.request(method, path, headers=bearer(client_key)).status_code == 403
        assert client.request(method, path).status_code == 401
    missing = call(client, admin, "GET", "/v1/review/nope", status=404)
    assert missing["detail"] == "unknown generated piece 'nope'"
    assert call(client, admin, "POST", "/v1/review/nope/approve", status=404)
    piece = call(client, admin, "POST", "/v1/review/generate", json=GENERATE)["submitted"][0]
    path = f"/v1/review/{piece['content_id']}"
    no_reason = call(client, admin, "POST", f"{path}/reject", status=422, json={})
    assert no_reason["errors"][0]["field"] == "reason"
    blank = call(client, admin, "POST", f"{path}/reject", status=422, json={"reason": "  "})
    assert blank["errors"][0]["message"] == "Value error, reason must not be blank"
    nothing = call(client, admin, "POST", f"{path}/edit", status=422, json={"approve": True})
    assert "give at least one of title, description or items" in nothing["errors"][0]["message"]
    assert call(client, admin, "POST", f"{path}/edit", status=422, json={"colour": "red"})
    assert call(client, admin, "GET", "/v1/review", status=422, params={"status": "maybe"})
    assert call(client, admin, "POST", "/v1/review/generate", status=422, json={"top": 0})
    assert call(client, admin, "POST", f"{path}/reject", json={"reason": "no"})["status"] == (
        "rejected"
    )
    conflict = call(client, admin, "POST", f"{path}/reject", status=409, json={"reason": "no"})
    assert conflict["detail"] == f"piece '{piece['content_id']}' is already rejected"


def test_edit_reruns_checks_and_can_approve(service: Service) -> None:
    client, keys, _ = service
    admin = keys["admin"]
    piece = call(client, admin, "POST", "/v1/review/generate", json=GENERATE)["submitted"][0]
    path = f"/v1/review/{piece['content_id']}"
    bad = call(client, admin, "POST", f"{path}/edit", json={"title": "Utter shit picks"})
    assert bad["status"] == "rejected" and bad["reviewer"] == "checks"
    (blocked,) = [f for f in bad["findings"] if not f["passed"]]
    assert blocked["check"] == "blocklist" and blocked["field"] == "title"
    assert bad["title"][blocked["span"][0] : blocked["span"][1]] == "shit"
    assert call(client, admin, "POST", f"{path}/approve", status=409)
    invented = call(
        client,
        admin,
        "POST",
        f"{path}/edit",
        json={"title": "Evening picks", "description": piece["description"] + ' And "Ghost Ship".'},
    )
    assert invented["status"] == "rejected"
    assert "'Ghost Ship' names none of the piece's items" in " ".join(
        f["message"] for f in invented["findings"]
    )
    good = call(
        client,
        admin,
        "POST",
        f"{path}/edit",
        json={"description": piece["description"], "approve": True},
    )
    assert good["status"] == "approved" and good["revision"] == 4
    assert [h["action"] for h in good["history"]] == ["submit", "edit", "edit", "edit", "approve"]
    everything = call(client, admin, "GET", "/v1/review", params={"status": "all"})
    assert everything["counts"] == {"pending": 1, "approved": 1, "rejected": 0}
    assert "/v1/review/{content_id}/edit" in client.get("/openapi.json").json()["paths"]


def test_cli_generate_uses_the_active_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with EventStore(f"sqlite:///{home / 'recloop.db'}") as store:
        import_dataset(store, dataset(), source="tiny")
        train_version(store, ArtifactRegistry(home / "models"), "EASE", {"l2": 1.0})
    result = CliRunner().invoke(
        cli_app,
        [
            "review",
            "generate",
            "--home",
            str(home),
            "--segments",
            "2",
            "--top",
            "2",
            "--items",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "submitted 2 pieces" in result.output and result.output.count("pending") == 2
    empty = tmp_path / "empty"
    failed = CliRunner().invoke(cli_app, ["review", "generate", "--home", str(empty)])
    assert failed.exit_code == 2 and "no active model version" in failed.output
