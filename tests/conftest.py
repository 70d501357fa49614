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
