"""Shared fixtures. Under ``CI=true`` a missing dataset fails the test instead of skipping it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false, except under ``CI=true`` where it is a failure."""
    if condition:
        return
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: nothing the tests need may be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The RecBole-format MovieLens-100K folder under ``RECLOOP_DATA``."""
    root = os.environ.get("RECLOOP_DATA")
    path = Path(root) / "ml-100k" if root else None
    require(
        path is not None and (path / "ml-100k.inter").is_file(),
        "MovieLens-100K not found: set RECLOOP_DATA to the folder holding ml-100k/",
    )
    assert path is not None
    return path


@pytest.fixture(scope="session")
def ml100k(ml100k_dir: Path):  # type: ignore[no-untyped-def]
    """MovieLens-100K as a :class:`recloop.data.Dataset` (loaded once per session)."""
    from recloop.datasets import movielens_100k

    return movielens_100k(data_dir=ml100k_dir.parent, download=False)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tests' embedding cache out of the user's ``~/.cache/recloop``."""
    if "RECLOOP_CACHE" not in os.environ:
        os.environ["RECLOOP_CACHE"] = str(tmp_path_factory.mktemp("recloop-cache"))


POSTGRES_ADMIN_URL = os.environ.get("RECLOOP_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("RECLOOP_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def postgres_url() -> object:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    The server is the local one (``RECLOOP_TEST_POSTGRES`` overrides it); under ``CI=true`` a
    server that cannot be reached is a failure, never a skip.
    """
    import uuid

    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        require(False, f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
        raise
    name = f"recloop_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture()
def redis_url() -> object:
    """The local Redis (``RECLOOP_TEST_REDIS`` overrides it) and a namespace of its own.

    Yields ``(url, namespace)``; every key under the namespace is deleted afterwards. Under
    ``CI=true`` a server that cannot be reached is a failure, never a skip.
    """
    import uuid

    try:
        import redis

        client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
        client.ping()
    except Exception as exc:
        require(False, f"Redis not reachable at {REDIS_TEST_URL}: {exc}")
        raise
    namespace = f"recloop-test-{uuid.uuid4().hex[:12]}"
    try:
        yield REDIS_TEST_URL, namespace
    finally:
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)
        client.close()
