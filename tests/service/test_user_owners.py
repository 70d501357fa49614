"""Client keys act only for their own application's users: claims, 403s, per-event rejections,
rotation, reassignment and erasure, end to end (SQLite; PostgreSQL + Redis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recloop.service.app import ServiceState, create_app
from recloop.service.auth import Principal
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings
from recloop.store.events import ForeignUserError

from .test_app import bearer, model_only_loop, store_settings, tiny_dataset

Service = tuple[TestClient, dict[str, str], ServiceState]
CONSENT = {"personalisation": True, "training": False, "generative": False}


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    stores = store_settings(request)
    settings = ServiceSettings(
        home=tmp_path / "home",
        key_cache_s=0.0,
        loop_config=model_only_loop(tmp_path),
        **stores,
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, tiny_dataset(), source="tiny")  # u0..u29: nobody's yet
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    keys = {
        "a": create_key(state.store, "shop web", "client", owner="shop")[1],
        "b": create_key(state.store, "other app", "client", owner="other")[1],
        "admin": create_key(state.store, "ops", "admin")[1],
    }
    with TestClient(create_app(state=state)) as client:
        yield client, keys, state
    state.close()


def click(event_id: str, user: str) -> dict[str, str]:
    return {"event_id": event_id, "user_id": user, "item_id": "i1", "kind": "click"}


def post_events(client: TestClient, key: str, *events: dict[str, str]) -> dict[str, Any]:
    answer = client.post("/v1/events", json={"events": list(events)}, headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return answer.json()


def forbidden(response: Any) -> bool:
    return bool(
        response.status_code == 403
        and "to another client application: this key may" in response.json()["detail"]
    )


def test_a_client_key_acts_only_for_its_applications_users(service: Service) -> None:
    client, keys, state = service
    a, b, admin = bearer(keys["a"]), bearer(keys["b"]), bearer(keys["admin"])
    assert post_events(client, keys["a"], click("a1", "n1"))["stored"] == 1  # A claims n1
    assert state.privacy.owner("n1").owner == "shop"  # type: ignore[union-attr]

    consent = "/v1/users/n1/consent"
    assert forbidden(client.get(consent, headers=b))
    assert forbidden(client.put(consent, json=CONSENT, headers=b))
    prefs = {"preferences": {"diversity": 0.5}}
    assert forbidden(client.put("/v1/users/n1/preferences", json=prefs, headers=b))
    assert forbidden(client.get("/v1/users/n1/recommendations", headers=b))
    users = {"users": [{"user_id": "n9", "attributes": {}}, {"user_id": "n1", "attributes": {}}]}
    assert forbidden(client.post("/v1/users", json=users, headers=b))
    assert state.store.get_user("n9") is None  # nothing of that batch was stored
    message = client.get(consent, headers=b).json()["detail"]
    assert "shop" not in message  # the owner is not told to others
    assert state.privacy.consent("n1").training is True  # B changed nothing
    assert state.store.get_preferences("n1") == {}

    # B's batch: its event for n1 is rejected with its index, its event for n2 is stored
    answer = post_events(client, keys["b"], click("b1", "n1"), {"kind": "?"}, click("b2", "n2"))
    assert answer["stored"] == 1 and answer["duplicates"] == 0
    assert [(r["index"], r["event_id"]) for r in answer["rejected"]] == [(0, "b1"), (1, None)]
    assert answer["rejected"][0]["errors"][0]["field"] == "user_id"
    assert "another client application" in answer["rejected"][0]["errors"][0]["message"]
    assert [item for item, _, _ in state.store.history("n1")] == ["i1"]  # A's only
    assert client.get("/v1/users/n2/consent", headers=b).status_code == 200
    assert forbidden(client.get("/v1/users/n2/consent", headers=a))

    # the owner and admins may do everything
    assert client.put(consent, json=CONSENT, headers=a).json() == CONSENT
    assert client.put("/v1/users/n1/preferences", json=prefs, headers=a).json() == prefs
    assert client.get("/v1/users/n1/recommendations", headers=a).status_code == 200
    assert client.get(consent, headers=admin).json() == CONSENT
    assert post_events(client, keys["admin"], click("x1", "n1"))["stored"] == 1
    assert client.get("/v1/users/n1/owner", headers=admin).json()["owner"] == "shop"
    assert client.get("/v1/users/n1/owner", headers=a).status_code == 403  # admin only


def test_applications_choosing_the_same_event_id_both_store(service: Service) -> None:
    client, keys, state = service
    assert post_events(client, keys["a"], click("e1", "n1"))["stored"] == 1
    # the same id from another application, about its own user: stored, not a duplicate
    answer = post_events(client, keys["b"], click("e1", "n2"))
    assert (answer["stored"], answer["duplicates"], answer["rejected"]) == (1, 0, [])
    assert state.privacy.owner("n2").owner == "other"  # type: ignore[union-attr]
    assert post_events(client, keys["b"], click("e1", "n2"))["duplicates"] == 1  # a resend
    # an id B reused for A's user is rejected as foreign, and A's event is untouched
    rejected = post_events(client, keys["b"], click("e1", "n1"))["rejected"]
    assert [(r["index"], r["event_id"]) for r in rejected] == [(0, "e1")]
    assert [len(state.store.history(user)) for user in ("n1", "n2")] == [1, 1]


def test_unclaimed_users_are_open_until_a_client_writes_for_them(service: Service) -> None:
    client, keys, state = service
    a, b = bearer(keys["a"]), bearer(keys["b"])
    for key in (a, b):  # imported users: readable by every client, and reading claims nothing
        assert client.get("/v1/users/u3/consent", headers=key).status_code == 200
        assert client.get("/v1/users/u3/recommendations", headers=key).status_code == 200
    assert state.privacy.owner("u3") is None
    assert client.put("/v1/users/u3/consent", json=CONSENT, headers=b).status_code == 200
    assert forbidden(client.get("/v1/users/u3/consent", headers=a))  # seen at once
    assert forbidden(client.get("/v1/users/u3/recommendations", headers=a))
    # preferences and profiles claim too
    assert client.put("/v1/users/u4/preferences", json={"preferences": {}}, headers=a).is_success
    users = {"users": [{"user_id": "u5", "attributes": {"age": 30}}]}
    assert client.post("/v1/users", json=users, headers=a).is_success
    assert forbidden(client.get("/v1/users/u4/consent", headers=b))
    assert forbidden(client.get("/v1/users/u5/consent", headers=b))


def test_events_claim_over_a_cached_unowned_answer(service: Service) -> None:
    client, keys, _ = service
    b = bearer(keys["b"])
    assert client.get("/v1/users/u6/recommendations", headers=b).status_code == 200  # cached
    post_events(client, keys["a"], click("a6", "u6"))  # A claims u6 in the same worker
    assert forbidden(client.get("/v1/users/u6/recommendations", headers=b))


def test_a_rotated_key_keeps_its_applications_users(service: Service) -> None:
    client, keys, state = service
    post_events(client, keys["a"], click("a1", "n1"))
    old = next(k for k in state.store.list_keys() if k.owner == "shop")
    rotated = create_key(state.store, "shop web", "client", owner=old.owner)[1]
    state.store.revoke_key(old.key_id, time.time())
    assert client.get("/v1/users/n1/consent", headers=bearer(keys["a"])).status_code == 401
    assert client.get("/v1/users/n1/consent", headers=bearer(rotated)).status_code == 200
    assert post_events(client, rotated, click("a2", "n1"))["stored"] == 1
    # a new key with another owner does not
    stranger = create_key(state.store, "shop web", "client", owner="not shop")[1]
    assert forbidden(client.get("/v1/users/n1/consent", headers=bearer(stranger)))


def test_an_admin_reassigns_and_releases_a_user(service: Service) -> None:
    client, keys, _ = service
    a, b, admin = bearer(keys["a"]), bearer(keys["b"]), bearer(keys["admin"])
    post_events(client, keys["a"], click("a1", "n1"))
    assert client.get("/v1/users/n1/consent", headers=a).status_code == 200  # cached for A
    given = client.put("/v1/users/n1/owner", json={"owner": "other"}, headers=admin)
    assert given.status_code == 200 and given.json()["owner"] == "other"
    assert client.get("/v1/users/n1/consent", headers=b).status_code == 200
    assert forbidden(client.get("/v1/users/n1/consent", headers=a))
    assert client.put("/v1/users/n1/owner", json={"owner": "x"}, headers=b).status_code == 403
    assert client.put("/v1/users/n1/owner", json={"owner": ""}, headers=admin).status_code == 422
    released = client.put("/v1/users/n1/owner", json={"owner": None}, headers=admin)
    assert released.json() == {"user_id": "n1", "owner": None, "claimed_at": None}
    assert client.get("/v1/users/n1/consent", headers=a).status_code == 200
    assert post_events(client, keys["a"], click("a2", "n1"))["stored"] == 1  # A claims again
    assert forbidden(client.get("/v1/users/n1/consent", headers=b))
    audit = client.get("/v1/audit", params={"subject": "n1"}, headers=admin).json()["entries"]
    assert [(e["action"], e["detail"]["owner"]) for e in audit] == [
        ("owner", None),
        ("owner", "other"),
    ]


def test_erasure_frees_the_users_id(service: Service) -> None:
    client, keys, state = service
    a, b = bearer(keys["a"]), bearer(keys["b"])
    post_events(client, keys["a"], click("a1", "n1"))
    assert forbidden(client.get("/v1/users/n1/consent", headers=b))  # cached in this worker
    erased = client.delete("/v1/users/n1", headers=bearer(keys["admin"]))
    assert erased.status_code == 200, erased.text
    assert state.privacy.owner("n1") is None
    assert client.get("/v1/users/n1/consent", headers=b).status_code == 200
    # the tombstone still refuses events (from anyone); consent may be set and claims
    assert post_events(client, keys["a"], click("a2", "n1"))["refused_erased"] == 1
    assert client.put("/v1/users/n1/consent", json=CONSENT, headers=b).status_code == 200
    assert forbidden(client.get("/v1/users/n1/consent", headers=a))


def test_other_routes_about_a_user_refuse_other_applications(service: Service) -> None:
    client, keys, state = service
    a, b = bearer(keys["a"]), bearer(keys["b"])
    post_events(client, keys["a"], click("a1", "n1"))
    slate = client.get("/v1/users/n1/recommendations", headers=a).json()
    state.slates.flush()
    assert forbidden(client.get(f"/v1/explanations/{slate['slate_id']}/0", headers=b))
    talk = {"user_id": "n1", "message": "a comedy"}
    assert forbidden(client.post("/v1/conversations", json=talk, headers=b))
    onboarding = {"user_id": "n1", "liked_items": ["i1"], "n": 3}
    assert forbidden(client.post("/v1/onboarding", json=onboarding, headers=b))


def test_the_recommendations_route_reads_owners_from_its_mirror(service: Service) -> None:
    client, keys, state = service
    post_events(client, keys["a"], click("a1", "n1"))
    state.owners.refresh_s = 3600.0
    assert state.owners.owner("n1") == "shop"  # the mirror is read now, then not again
    reads: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "user_owners" in statement:
            reads.append(statement)

    sa.event.listen(state.store._engine, "before_cursor_execute", record)
    try:
        for user in ("n1", "u7", "n1", "u7", "n1"):
            answer = client.get(f"/v1/users/{user}/recommendations", headers=bearer(keys["a"]))
            assert answer.status_code == 200
    finally:
        sa.event.remove(state.store._engine, "before_cursor_execute", record)
    assert reads == []  # owned n1 and unowned u7 alike: no store read on the request path


def test_racing_claims_through_the_service_give_one_owner(service: Service) -> None:
    _, _, state = service
    principals = [Principal(f"k{i}", f"key {i}", "client", f"app{i}") for i in range(8)]
    barrier = threading.Barrier(len(principals))
    outcomes: dict[str, str] = {}

    def claim(principal: Principal) -> None:
        barrier.wait()
        try:
            state.owners.check(principal, "contested", claim=True)
            outcomes[principal.owner] = "owner"
        except ForeignUserError:
            outcomes[principal.owner] = "refused"

    threads = [threading.Thread(target=claim, args=(p,)) for p in principals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [owner for owner, outcome in outcomes.items() if outcome == "owner"]
    assert len(outcomes) == len(principals) and len(winners) == 1
    assert state.privacy.owner("contested").owner == winners[0]  # type: ignore[union-attr]


def test_a_reassignment_reaches_another_worker_at_once(service: Service) -> None:
    client, keys, state = service
    post_events(client, keys["a"], click("a1", "n1"))
    other = ServiceState.open(state.settings)  # a second worker on the same stores
    try:
        shop, rival = (Principal("k", "k", "client", owner) for owner in ("shop", "other"))
        other.owners.check(shop, "n1")  # now cached there for a minute
        with pytest.raises(ForeignUserError):
            other.owners.check(rival, "n1")
        given = {"owner": "other"}
        client.put("/v1/users/n1/owner", json=given, headers=bearer(keys["admin"]))
        deadline = time.monotonic() + 2.0  # Redis announces by pub/sub; files are stat'ed
        while time.monotonic() < deadline and other.owners.owner("n1") != "other":
            time.sleep(0.01)
        other.owners.check(rival, "n1")
        with pytest.raises(ForeignUserError):
            other.owners.check(shop, "n1")
    finally:
        other.close()


def test_cli_keys_with_owners_and_privacy_owner(tmp_path: Path) -> None:
    from recloop.cli import app

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--home", str(tmp_path / "home")])
        assert result.exit_code == 0, result.output
        return result.output

    run("keys", "create", "--name", "web", "--owner", "shop")
    run("keys", "create", "--name", "ops", "--role", "admin")
    settings = ServiceSettings(home=tmp_path / "home")
    state = ServiceState.open(settings)
    try:
        keys = {k.name: k for k in state.store.list_keys()}
        assert keys["web"].owner == "shop" and keys["ops"].owner == "ops"
        assert "shop" in run("keys", "list")
        run("keys", "rotate", keys["web"].key_id)
        rotated = next(
            k for k in state.store.list_keys() if k.revoked_at is None and k.name == "web"
        )
        assert rotated.key_id != keys["web"].key_id and rotated.owner == "shop"

        state.store.claim_users(["n1"], "shop")
        assert '"owner": "shop"' in run("privacy", "owner", "n1")
        assert '"owner": "other"' in run("privacy", "owner", "n1", "--set", "other")
        assert state.privacy.owner("n1").owner == "other"  # type: ignore[union-attr]
        assert '"owner": null' in run("privacy", "owner", "n1", "--release")
        assert state.privacy.owner("n1") is None
        both = CliRunner().invoke(
            app, ["privacy", "owner", "n1", "--set", "x", "--release", "--home", str(settings.home)]
        )
        assert both.exit_code != 0 and "not both" in both.output
        actions = [e.action for e in state.privacy.audit(subject="n1")]
        assert actions == ["owner", "owner"]
    finally:
        state.close()


def test_the_ownership_mirror_reads_new_claims_and_forgets_erased_users(tmp_path: Path) -> None:
    from recloop.service.owners import UserOwners
    from recloop.service.privacy import ErasedUsers
    from recloop.store.events import EventStore
    from recloop.store.privacy import PrivacyLog

    now = [0.0]
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        here = UserOwners(store, refresh_s=0.5, clock=lambda: now[0])
        there = UserOwners(store, refresh_s=0.5, clock=lambda: now[0])  # another worker
        shop = Principal("k1", "web", "client", "shop")
        other = Principal("k2", "app", "client", "other")
        assert there.owner("u1") is None  # read now: nobody has claimed u1
        here.check(shop, "u1", claim=True)
        assert here.owner("u1") == "shop"
        assert there.owner("u1") is None  # not yet read there...
        now[0] += 0.6
        assert there.owner("u1") == "shop"  # ...but within refresh_s
        with pytest.raises(ForeignUserError):
            there.check(other, "u1")
        privacy = PrivacyLog(store)
        erased = ErasedUsers(privacy, refresh_s=0.0, listeners=[there.forget])
        privacy.erase_user("u1", "test")
        assert "u1" in erased and there.owner("u1") is None
        now[0] += 0.6
        assert there.owner("u1") is None  # the deleted claim does not come back
        there.check(other, "u1")  # and the id is free
