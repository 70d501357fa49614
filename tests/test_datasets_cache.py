"""A cache folder the download cannot write into is a DatasetNotFoundError, not an OSError,
so ``recloop quickstart`` still falls back to synthetic data."""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recloop.datasets import movielens_100k
from recloop.errors import DatasetNotFoundError

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: nothing listens, a download would fail


@pytest.fixture(autouse=True)
def no_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECLOOP_DATA", "RECLOOP_CACHE", "RECLOOP_MOVIELENS_URL", "CI"):
        monkeypatch.delenv(name, raising=False)


def refuse_temporary_folders(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    def refuse(*args: object, **kwargs: object) -> tempfile.TemporaryDirectory[str]:
        raise error

    monkeypatch.setattr("recloop.datasets.tempfile.TemporaryDirectory", refuse)


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied", "cache/.ml-100k-x"),
        PermissionError(errno.EPERM, "Operation not permitted", "cache/.ml-100k-x"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "cache/.ml-100k-x"),
    ],
)
def test_unwritable_cache_is_dataset_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    refuse_temporary_folders(monkeypatch, error)
    with pytest.raises(DatasetNotFoundError) as info:
        movielens_100k(cache_dir=cache, url=UNREACHABLE)
    text = str(info.value)
    assert "\n" not in text
    assert f"into the cache folder {cache}: {error.strerror}" in text
    assert "ml-100k.zip" in text and "RECLOOP_CACHE" in text


@pytest.fixture
def quiet_console() -> Iterator[None]:
    from recloop import cli

    quiet = cli.console.quiet
    cli.console.quiet = True
    yield
    cli.console.quiet = quiet


def test_quickstart_falls_back_to_synthetic_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_console: None
) -> None:
    from recloop.cli import movielens_or_synthetic

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("RECLOOP_CACHE", str(cache))
    monkeypatch.setenv("RECLOOP_MOVIELENS_URL", UNREACHABLE)
    refuse_temporary_folders(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    dataset, name = movielens_or_synthetic(seed=0)
    assert name.startswith("synthetic-") and len(dataset.interactions) > 0
