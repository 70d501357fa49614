"""Named datasets: MovieLens-100K and -1M, found locally or downloaded once into a cache.

Lookup order: the ``data_dir`` argument, else the ``RECLOOP_DATA`` folder (either holding
``ml-100k/`` in RecBole or GroupLens layout); then the user cache (``RECLOOP_CACHE``, default
``~/.cache/recloop``); then the official GroupLens zip, checked against its SHA-256 and
extracted into the cache atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recloop.data.loaders import MOVIELENS_RATING_RANGE, PathLike, load_movielens_raw, load_recbole
from recloop.data.types import Dataset
from recloop.errors import DataError, DatasetNotFoundError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class _Source:
    name: str  # folder and zip name, e.g. "ml-100k"
    title: str
    marker: str  # a file only the GroupLens layout has
    sha256: str
    size: int


# SHA-256 and sizes of the official zips, from TensorFlow Datasets' checksum list:
# github.com/tensorflow/datasets, tensorflow_datasets/url_checksums/movielens.txt
# (commit 1c076ac3c19c8ea83e1d1a75e0623c9a699e0d7c); the same values are pinned by several
# other public projects that download these files.
ML_100K = _Source(
    "ml-100k",
    "MovieLens-100K",
    "u.data",
    "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    4_924_029,
)
ML_1M = _Source(
    "ml-1m",
    "MovieLens-1M",
    "ratings.dat",
    "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    5_917_549,
)


def movielens_100k(
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    download: bool = True,
    *,
    url: str | None = None,
    sha256: str | None = None,
) -> Dataset:
    """MovieLens-100K (943 users, 1,682 items, 100,000 ratings 1-5) with catalogue and users.

    ``url`` (or ``RECLOOP_MOVIELENS_URL``) replaces the GroupLens base URL; a value ending in
    ``.zip`` is the archive itself. ``sha256`` replaces the pinned checksum (for mirrors).
    """
    return _movielens(ML_100K, data_dir, cache_dir, download, url, sha256)


def movielens_1m(
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    download: bool = True,
    *,
    url: str | None = None,
    sha256: str | None = None,
) -> Dataset:
    """MovieLens-1M (6,040 users, 3,706 rated movies, 1,000,209 ratings 1-5)."""
    return _movielens(ML_1M, data_dir, cache_dir, download, url, sha256)


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """Where downloads live: ``cache_dir``, else ``RECLOOP_CACHE``, else ``~/.cache/recloop``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECLOOP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recloop"


def _movielens(
    source: _Source,
    data_dir: PathLike | None,
    cache_dir: PathLike | None,
    download: bool,
    url: str | None,
    sha256: str | None,
) -> Dataset:
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    elif os.environ.get("RECLOOP_DATA"):
        roots.append(Path(os.environ["RECLOOP_DATA"]).expanduser())
    cache = cache_root(cache_dir)
    roots.append(cache)
    for root in roots:
        found = _find_local(root, source)
        if found is not None:
            return _load(found, source)
    looked = ", ".join(str(r) for r in roots)
    if not download:
        raise DatasetNotFoundError(
            f"{source.title} not found (looked in {looked}); set RECLOOP_DATA to a folder "
            f"holding {source.name}/, or allow the download"
        )
    archive_url = _archive_url(source, url)
    folder = fetch_movielens(source, cache, archive_url, sha256 or source.sha256)
    return _load(folder, source)


def _find_local(root: Path, source: _Source) -> Path | None:
    """The folder under ``root`` (or ``root`` itself) holding the dataset in either layout."""
    for folder in (root / source.name, root):
        if (folder / f"{source.name}.inter").is_file() or (folder / source.marker).is_file():
            return folder
    return None


def _load(folder: Path, source: _Source) -> Dataset:
    if (folder / f"{source.name}.inter").is_file():
        return load_recbole(
            folder / f"{source.name}.inter", rating_range=MOVIELENS_RATING_RANGE, name=source.name
        )
    return load_movielens_raw(folder, rating_range=MOVIELENS_RATING_RANGE, name=source.name)


def _archive_url(source: _Source, url: str | None) -> str:
    base = url or os.environ.get("RECLOOP_MOVIELENS_URL") or DEFAULT_BASE_URL
    if base.endswith(".zip"):
        return base
    return base.rstrip("/") + f"/{source.name}.zip"


def fetch_movielens(source: _Source, cache: Path, url: str, sha256: str) -> Path:
    """Download ``url`` into ``cache``, verify ``sha256`` and extract it; returns the folder.

    Nothing partial is ever left under the final name: the zip goes to a temporary file, is
    verified, extracted into a temporary folder and renamed into place.
    """
    try:
        return _fetch(source, cache, url, sha256)
    except DatasetNotFoundError:
        raise
    except OSError as exc:  # an unwritable or vanished cache folder, a full disk, ...
        raise DatasetNotFoundError(
            f"{source.title} could not be downloaded from {url} into the cache folder {cache}: "
            f"{exc.strerror or exc}; make that folder writable, or point cache_dir= or "
            "RECLOOP_CACHE at another folder"
        ) from None


def _fetch(source: _Source, cache: Path, url: str, sha256: str) -> Path:
    target = cache / source.name
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetNotFoundError(f"cannot create the cache folder {cache}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix=f".{source.name}-", dir=cache) as tmp:
        archive = Path(tmp) / f"{source.name}.zip"
        digest = _download(url, archive, source.title)
        if digest != sha256.lower():
            raise DatasetNotFoundError(
                f"{source.title} download from {url} failed its SHA-256 check (expected "
                f"{sha256.lower()}, got {digest}); the file was discarded"
            )
        extracted = Path(tmp) / "extracted"
        _extract(archive, extracted, url)
        folder = _find_local(extracted, source)
        if folder is None:
            raise DatasetNotFoundError(
                f"{source.title} archive from {url} holds no {source.marker}"
            )
        try:
            folder.rename(target)
        except OSError as exc:
            if _find_local(target, source) is None:  # not merely another process winning a race
                raise DatasetNotFoundError(
                    f"cannot move {source.title} into {target} ({exc.strerror or exc}); if that "
                    "folder is left over from an earlier attempt, remove it and try again"
                ) from None
    return target


def _download(url: str, dest: Path, title: str) -> str:
    """Stream ``url`` to ``dest`` with a progress bar; returns the SHA-256 hex digest."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    digest = hashlib.sha256()
    console = Console(stderr=True)
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            dest.open("wb") as out,
            Progress(
                TextColumn(f"Downloading {title}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress,
        ):
            length = response.headers.get("Content-Length")
            task = progress.add_task("download", total=int(length) if length else None)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
    except urllib.error.HTTPError as exc:
        raise DatasetNotFoundError(
            f"could not download {title} from {url}: HTTP {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetNotFoundError(f"could not download {title} from {url}: {reason}") from None
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, url: str) -> None:
    """Extract a zip, refusing members that would land outside ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = PurePosixPath(member).parts
                if member.startswith("/") or ".." in parts:
                    raise DataError(f"archive member {member!r} escapes the folder", path=url)
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise DatasetNotFoundError(f"the archive from {url} cannot be extracted: {exc}") from None
