"""API keys and roles: key format, the key cache (TTL, negative cache) and a real FastAPI app."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from recloop.service.auth import (
    KEY_PREFIX,
    ROLES,
    AuthError,
    KeyCache,
    Principal,
    authenticate,
    hash_key,
    key_id_of,
    new_key,
    require_role,
)
from recloop.store.events import KeyRecord


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """Keys by hash, counting lookups like a database would see them."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.lookups = 0

    def add(self, name: str, role: str) -> tuple[str, KeyRecord]:
        key_id, secret, key_hash = new_key()
        record = KeyRecord(key_id, name, role, key_hash, created_at=time.time())
        self.records[key_hash] = record
        return secret, record

    def revoke(self, record: KeyRecord, at: float) -> None:
        self.records[record.key_hash] = replace(record, revoked_at=at)

    def lookup(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return self.records.get(key_hash)


# --- key format ------------------------------------------------------------------------------


def test_new_key_format_and_hash() -> None:
    key_id, secret, key_hash = new_key()
    assert len(key_id) == 12 and all(c in "0123456789abcdef" for c in key_id)
    assert secret.startswith(f"{KEY_PREFIX}{key_id}_")
    assert len(secret) > len(KEY_PREFIX) + 12 + 32
    assert key_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_key(secret)
    assert key_id_of(secret) == key_id
    assert new_key()[1] != secret


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "rlk_",
        "rlk_0123456789ab",
        "rlk_0123456789ab_",
        "rlk_0123456789AB_" + "x" * 43,  # upper-case hex is not ours
        "rlk_0123456789a_" + "x" * 43,  # 11-digit id
        "xyz_0123456789ab_" + "x" * 43,
        "rlk_0123456789ab_" + "x" * 43 + " ",
        "rlk_0123456789ab_" + "x" * 10 + "!" + "x" * 20,
    ],
)
def test_key_id_of_rejects_malformed_keys(bad: str) -> None:
    assert key_id_of(bad) is None


def test_principal_roles() -> None:
    admin = Principal("a", "ops", "admin")
    client = Principal("c", "shop", "client")
    assert all(admin.can(role) for role in ROLES)
    assert client.can("client") and not client.can("admin")
    require_role(admin, "admin")
    require_role(client, "client")
    with pytest.raises(AuthError) as info:
        require_role(client, "admin")
    assert info.value.status == 403 and "admin" in info.value.message
    with pytest.raises(ValueError, match="unknown role"):
        require_role(admin, "root")


# --- KeyCache --------------------------------------------------------------------------------


def test_cache_hits_do_not_look_up_again() -> None:
    store = FakeStore()
    secret, record = store.add("shop", "client")
    keys = KeyCache(store.lookup, clock=FakeClock())
    for _ in range(10):
        assert keys.principal(secret) == Principal(record.key_id, "shop", "client")
    assert store.lookups == 1


def test_revocation_takes_effect_after_ttl() -> None:
    store, clock = FakeStore(), FakeClock()
    secret, record = store.add("shop", "client")
    keys = KeyCache(store.lookup, ttl_s=5.0, clock=clock)
    assert keys.principal(secret) is not None
    store.revoke(record, at=time.time() - 1)
    clock.now += 4.9
    assert keys.principal(secret) is not None  # still cached
    clock.now += 0.2
    assert keys.principal(secret) is None
    assert store.lookups == 2


def test_clear_forgets_at_once() -> None:
    store = FakeStore()
    secret, record = store.add("shop", "client")
    keys = KeyCache(store.lookup, clock=FakeClock())
    assert keys.principal(secret) is not None
    store.revoke(record, at=time.time() - 1)
    keys.clear()
    assert keys.principal(secret) is None


def test_rotation_grace_period_is_honoured() -> None:
    """A revocation dated in the future lets the old key work until then."""
    store, wall = FakeStore(), FakeClock(now=5000.0)
    old_secret, old = store.add("shop", "client")
    store.revoke(old, at=5060.0)
    new_secret, _ = store.add("shop (rotated)", "client")
    keys = KeyCache(store.lookup, clock=FakeClock(), wall_clock=wall)
    assert keys.principal(old_secret) is not None
    assert keys.principal(new_secret) is not None
    wall.now = 5060.0
    assert keys.principal(old_secret) is None  # no reload needed: the entry knows revoked_at
    assert keys.principal(new_secret) is not None


def test_unknown_keys_are_negatively_cached() -> None:
    store, clock = FakeStore(), FakeClock()
    keys = KeyCache(store.lookup, ttl_s=5.0, clock=clock)
    _, unknown, _ = new_key()
    for _ in range(20):
        assert keys.principal(unknown) is None
    assert store.lookups == 1
    clock.now += 5.0
    assert keys.principal(unknown) is None
    assert store.lookups == 2


def test_malformed_keys_never_reach_the_store() -> None:
    store = FakeStore()
    keys = KeyCache(store.lookup)
    for junk in ("", "hunter2", "rlk_nothex", "Bearer x" * 100):
        assert keys.principal(junk) is None
    assert store.lookups == 0


def test_a_record_with_another_hash_or_role_is_refused() -> None:
    _, secret, key_hash = new_key()
    wrong_hash = KeyRecord("0" * 12, "x", "client", "0" * 64, 0.0)
    wrong_role = KeyRecord("0" * 12, "x", "root", key_hash, 0.0)
    assert KeyCache(lambda _: wrong_hash).principal(secret) is None
    assert KeyCache(lambda _: wrong_role).principal(secret) is None


def test_cache_size_is_bounded() -> None:
    store, clock = FakeStore(), FakeClock()
    keys = KeyCache(store.lookup, ttl_s=5.0, max_entries=50, clock=clock)
    secrets = [new_key()[1] for _ in range(200)]
    for secret in secrets:
        keys.principal(secret)
    assert len(keys) == 50
    clock.now += 10  # everything expired: the next insert sweeps them
    keys.principal(secrets[0])
    assert len(keys) == 1


def test_cache_is_thread_safe() -> None:
    store = FakeStore()
    added = [store.add(f"k{i}", "client") for i in range(20)]
    keys = KeyCache(store.lookup, ttl_s=0.0, max_entries=8)  # ttl 0: every call reloads
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                for secret, record in added:
                    principal = keys.principal(secret)
                    assert principal is not None and principal.key_id == record.key_id
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(keys) <= 8


# --- authenticate in a FastAPI app -----------------------------------------------------------


def _principal(request: Request, role: str) -> Principal:
    """What the service's dependencies do: authenticate, check the role, map errors to HTTP."""
    try:
        principal = authenticate(request.headers, request.app.state.keys)
        require_role(principal, role)
    except AuthError as exc:
        raise HTTPException(exc.status, exc.message, headers=exc.headers) from None
    return principal


def client_key(request: Request) -> Principal:
    return _principal(request, "client")


def admin_key(request: Request) -> Principal:
    return _principal(request, "admin")


ClientKey = Annotated[Principal, Depends(client_key)]
AdminKey = Annotated[Principal, Depends(admin_key)]


def _app(keys: KeyCache) -> FastAPI:
    app = FastAPI()
    app.state.keys = keys

    @app.get("/v1/users/{user_id}/recommendations")
    def recommendations(user_id: str, who: ClientKey) -> dict[str, str]:
        return {"key_id": who.key_id, "role": who.role}

    @app.post("/v1/admin/models")
    def activate(who: AdminKey) -> dict[str, str]:
        return {"key_id": who.key_id}

    return app


@pytest.fixture()
def world() -> tuple[TestClient, FakeStore, dict[str, tuple[str, KeyRecord]]]:
    store = FakeStore()
    keys = {"client": store.add("shop", "client"), "admin": store.add("ops", "admin")}
    client = TestClient(_app(KeyCache(store.lookup, ttl_s=60.0)))
    return client, store, keys


World = tuple[TestClient, FakeStore, dict[str, tuple[str, KeyRecord]]]
RECS = "/v1/users/u1/recommendations"


def test_bearer_and_x_api_key_both_work(world: World) -> None:
    client, _, keys = world
    secret, record = keys["client"]
    for headers in (
        {"Authorization": f"Bearer {secret}"},
        {"authorization": f"bearer {secret}"},
        {"X-API-Key": secret},
    ):
        response = client.get(RECS, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"key_id": record.key_id, "role": "client"}


def test_authenticate_reads_plain_mappings() -> None:
    store = FakeStore()
    secret, record = store.add("shop", "client")
    keys = KeyCache(store.lookup)
    assert authenticate({"Authorization": f"Bearer {secret}"}, keys).key_id == record.key_id
    assert authenticate({"x-api-key": secret}, keys).key_id == record.key_id
    with pytest.raises(AuthError) as info:
        authenticate({"Authorization": f"Basic {secret}"}, keys)
    assert info.value.status == 401 and info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_missing_unknown_and_revoked_keys_get_401(world: World) -> None:
    client = world[0]
    assert client.get(RECS).status_code == 401
    assert client.get(RECS, headers={"Authorization": "Bearer "}).status_code == 401
    _, unknown, _ = new_key()
    unknown_response = client.get(RECS, headers={"X-API-Key": unknown})
    assert unknown_response.status_code == 401
    assert unknown_response.headers["www-authenticate"] == "Bearer"
    assert unknown not in unknown_response.text

    store2 = FakeStore()
    secret, record = store2.add("gone", "client")
    store2.revoke(record, at=time.time() - 1)
    revoked_client = TestClient(_app(KeyCache(store2.lookup)))
    revoked_response = revoked_client.get(RECS, headers={"Authorization": f"Bearer {secret}"})
    assert revoked_response.status_code == 401
    assert secret not in revoked_response.text
    assert record.key_hash not in revoked_response.text


def test_client_key_on_admin_route_gets_403(world: World) -> None:
    client, _, keys = world
    client_secret, _ = keys["client"]
    admin_secret, admin = keys["admin"]
    forbidden = client.post("/v1/admin/models", headers={"X-API-Key": client_secret})
    assert forbidden.status_code == 403
    assert client_secret not in forbidden.text
    ok = client.post("/v1/admin/models", headers={"X-API-Key": admin_secret})
    assert ok.status_code == 200 and ok.json() == {"key_id": admin.key_id}
    assert client.get(RECS, headers={"X-API-Key": admin_secret}).status_code == 200


def test_error_bodies_never_echo_the_key(world: World) -> None:
    client, _, _ = world
    _, secret, _ = new_key()
    for headers in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret + "junk"}):
        response = client.get(RECS, headers=headers)
        assert response.status_code == 401
        assert secret not in response.text
        assert secret[len(KEY_PREFIX) + 13 :] not in response.text
