"""MovieLens lookup order, download with checksum into the cache, and the real data."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from recloop.data import Dataset
from recloop.datasets import ML_1M, ML_100K, movielens_1m, movielens_100k
from recloop.errors import DatasetNotFoundError

GENRES = "|".join(["0"] * 19)


def ml100k_files(n_ratings: int) -> dict[str, str]:
    """A tiny ml-100k in the GroupLens layout with ``n_ratings`` rows (to tell copies apart)."""
    data = "".join(
        f"{1 + i % 3}\t{1 + i % 2}\t{1 + i % 5}\t{880000000 + i}\n" for i in range(n_ratings)
    )
    return {
        "u.data": data,
        "u.item": f"1|Toy Story (1995)|01-Jan-1995||u|{GENRES}\n2|Heat (1995)|||u|{GENRES}\n",
        "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n",
        "README": "tiny test copy\n",
    }


def make_zip(folder: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text.encode("latin-1"))
    return buffer.getvalue()


def write_folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="latin-1")
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback HTTP server serving ``tmp_path/www``: (base URL, folder, requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Quiet,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=www))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens/", www, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests choose every location themselves; nothing may reach the internet."""
    monkeypatch.delenv("RECLOOP_DATA", raising=False)
    monkeypatch.delenv("RECLOOP_MOVIELENS_URL", raising=False)
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "default-cache"))


def serve_zip(www: Path, name: str, payload: bytes) -> str:
    (www / "movielens").mkdir(exist_ok=True)
    (www / "movielens" / f"{name}.zip").write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def test_download_verifies_and_extracts(
    server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, www, requests = server
    digest = serve_zip(www, "ml-100k", make_zip("ml-100k", ml100k_files(7)))
    cache = tmp_path / "cache"
    ds = movielens_100k(cache_dir=cache, url=url, sha256=digest)
    assert ds.name == "ml-100k" and len(ds.interactions) == 7
    assert ds.catalog is not None and ds.catalog.title[:2] == ["Toy Story", "Heat"]
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no temporary leftovers
    assert (cache / "ml-100k" / "u.data").is_file()
    assert requests == ["/movielens/ml-100k.zip"]
    again = movielens_100k(cache_dir=cache, url=url, sha256=digest, download=False)
    assert len(again.interactions) == 7 and len(requests) == 1  # served from the cache


def test_checksum_mismatch_leaves_nothing(
    server: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, www, _ = server
    serve_zip(www, "ml-100k", make_zip("ml-100k", ml100k_files(3)))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError, match="SHA-256") as info:
        movielens_100k(cache_dir=cache, url=url, sha256="0" * 64)
    assert "\n" not in str(info.value) and "discarded" in str(info.value)
    assert list(cache.iterdir()) == []
    # the pinned official checksum applies when none is given: a test zip never matches it
    with pytest.raises(DatasetNotFoundError, match=ML_100K.sha256):
        movielens_100k(cache_dir=cache, url=url)
    assert list(cache.iterdir()) == []


def test_download_failures_are_clear(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    url, www, _ = server
    with pytest.raises(DatasetNotFoundError, match="HTTP 404"):
        movielens_100k(cache_dir=tmp_path / "c", url=url)
    digest = serve_zip(www, "ml-100k", b"this is not a zip")
    with pytest.raises(DatasetNotFoundError, match="cannot be extracted"):
        movielens_100k(cache_dir=tmp_path / "c", url=url, sha256=digest)
    assert list((tmp_path / "c").iterdir()) == []
    with pytest.raises(DatasetNotFoundError, match="not found"):
        movielens_100k(cache_dir=tmp_path / "empty", download=False)


def test_url_from_environment_and_full_zip_url(
    server: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www, requests = server
    digest = serve_zip(www, "ml-100k", make_zip("ml-100k", ml100k_files(4)))
    monkeypatch.setenv("RECLOOP_MOVIELENS_URL", url)
    assert len(movielens_100k(cache_dir=tmp_path / "a", sha256=digest).interactions) == 4
    full = url + "ml-100k.zip"
    assert len(movielens_100k(cache_dir=tmp_path / "b", url=full, sha256=digest).interactions) == 4
    assert requests == ["/movielens/ml-100k.zip"] * 2


def test_lookup_order(
    server: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, www, requests = server
    explicit = tmp_path / "explicit"
    write_folder(explicit / "ml-100k", ml100k_files(2))
    env = tmp_path / "env"
    write_folder(env / "ml-100k", ml100k_files(3))
    cache = tmp_path / "cache"
    write_folder(cache / "ml-100k", ml100k_files(4))
    digest = serve_zip(www, "ml-100k", make_zip("ml-100k", ml100k_files(5)))

    def rows(**kwargs: object) -> int:
        ds = movielens_100k(cache_dir=cache, url=url, sha256=digest, **kwargs)  # type: ignore[arg-type]
        return len(ds.interactions)

    monkeypatch.setenv("RECLOOP_DATA", str(env))
    assert rows(data_dir=explicit) == 2  # the argument first
    assert rows(data_dir=explicit / "ml-100k") == 2  # or the dataset folder itself
    assert rows() == 3  # then RECLOOP_DATA
    monkeypatch.delenv("RECLOOP_DATA")
    assert rows() == 4  # then the cache
    monkeypatch.setenv("RECLOOP_CACHE", str(cache))
    assert len(movielens_100k(download=False).interactions) == 4  # RECLOOP_CACHE as the cache
    monkeypatch.setenv("RECLOOP_DATA", str(tmp_path / "nothing-here"))
    assert rows() == 4  # a RECLOOP_DATA without the dataset falls through to the cache
    assert requests == []
    for child in (cache / "ml-100k").iterdir():
        child.unlink()
    (cache / "ml-100k").rmdir()
    assert rows() == 5 and requests == ["/movielens/ml-100k.zip"]  # finally the download


def test_recbole_layout_under_recloop_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t10\n3\t2\t4\t11\n"
    )
    monkeypatch.setenv("RECLOOP_DATA", str(tmp_path / "data"))
    ds = movielens_100k(download=False)
    assert ds.interactions.users.ids() == ["1", "3"] and ds.catalog is None


def test_movielens_1m_download(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    url, www, _ = server
    files = {
        "ratings.dat": "1::10::5::978300760\n2::10::3::978300761\n",
        "movies.dat": "10::GoldenEye (1995)::Action|Adventure|Thriller\n",
        "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    }
    digest = serve_zip(www, "ml-1m", make_zip("ml-1m", files))
    ds = movielens_1m(cache_dir=tmp_path / "cache", url=url, sha256=digest)
    assert ds.name == "ml-1m" and len(ds.interactions) == 2
    assert ds.catalog is not None and ds.catalog.attribute("genres")[0][0] == "Action"
    assert ML_1M.sha256 != ML_100K.sha256


# --------------------------------------------------------------------------- the real data
def test_ml100k_real(ml100k: Dataset) -> None:
    inter, catalog, users = ml100k.interactions, ml100k.catalog, ml100k.users
    assert ml100k.name == "ml-100k"
    assert (len(inter), inter.n_users, inter.n_items) == (100_000, 943, 1682)
    assert float(inter.value.min()) == 1.0 and float(inter.value.max()) == 5.0
    assert catalog is not None and users is not None
    toy = int(catalog.items.index(["1"])[0])
    assert catalog.attribute("genres")[toy] == ["Animation", "Children's", "Comedy"]
    assert catalog.text[toy] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert set(users.attribute("gender")) == {"M", "F"}
    ages = np.array(users.attribute("age"))
    assert ages.min() == 7 and ages.max() == 73
    assert inter.user_counts().min() == 20  # every ml-100k user rated at least 20 movies
