"""Exposure prices in the service: fitted per version, applied per request, refitted on retrain."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recloop.cli import app
from recloop.data.types import Catalog, Dataset, IdMap, Interactions
from recloop.errors import ConfigError
from recloop.eval.beyond import gini
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.engine import Candidate
from recloop.service.loop import _train_and_activate
from recloop.service.prices import (
    ExposurePrices,
    PriceHolder,
    clear_prices,
    fit_prices,
    load_prices,
    prices_paths,
)
from recloop.service.settings import ServiceSettings
from recloop.store.artifacts import ArtifactRegistry
from recloop.store.events import EventStore

from .test_app import bearer, model_only_loop

N_USERS, N_ITEMS, PER_USER = 60, 24, 6


def skewed_dataset() -> Dataset:
    """Users sample items with Zipf-like popularity, so a model shows the head to everyone."""
    rng = np.random.default_rng(1)
    weights = 1.0 / np.arange(1, N_ITEMS + 1)
    users, items, stamps = [], [], []
    for u in range(N_USERS):
        for t, i in enumerate(
            rng.choice(N_ITEMS, PER_USER, replace=False, p=weights / weights.sum())
        ):
            users.append(u)
            items.append(int(i))
            stamps.append(1_000_000 + 10 * t)
    item_map = IdMap(f"i{i}" for i in range(N_ITEMS))
    inter = Interactions.from_arrays(
        users, items, stamps, users=IdMap(f"u{u}" for u in range(N_USERS)), items=item_map
    )
    catalog = Catalog(item_map, [f"Item {i}" for i in range(N_ITEMS)], [""] * N_ITEMS, {})
    return Dataset("skewed", inter, catalog)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[EventStore, ArtifactRegistry, Path]]:
    """A SQLite store with the skewed data, an active EASE version, and the prices folder."""
    store = EventStore(f"sqlite:///{tmp_path / 'recloop.db'}")
    import_dataset(store, skewed_dataset(), source="skewed")
    registry = ArtifactRegistry(tmp_path / "models")
    train_version(store, registry, "EASE", {"l2": 10.0}, card=False)
    yield store, registry, tmp_path / "exposure_prices"
    store.close()


def candidates(scores: list[float]) -> list[Candidate]:
    return [Candidate(f"i{i}", s, "EASE") for i, s in enumerate(scores)]


def prices_of(values: dict[str, float], default: float = 0.0) -> ExposurePrices:
    return ExposurePrices("v0001", values, default, 1.0, 100, {})


def test_rerank_shows_the_priced_top_n_in_model_order_then_the_rest() -> None:
    pool = candidates([4.0, 3.0, 2.0, 1.0, 0.0])
    # i0 is dear: z − price puts it below i2; i4 (unpriced) takes the default price
    out = prices_of({"i0": 5.0, "i1": 0.0, "i2": 0.0, "i3": 0.0}, default=0.0).rerank(pool, 2)
    assert [c.item_id for c in out] == ["i1", "i2", "i3", "i4", "i0"]
    assert out[0] is pool[1]  # the candidates themselves: scores and sources untouched
    # equal prices change nothing
    same = prices_of({f"i{i}": 0.7 for i in range(5)}).rerank(pool, 3)
    assert [c.item_id for c in same] == [c.item_id for c in pool]
    assert prices_of({}).rerank([], 3) == []


def test_fit_spreads_exposure_and_round_trips(
    home: tuple[EventStore, ArtifactRegistry, Path],
) -> None:
    store, registry, folder = home
    manifest = fit_prices(store, registry, folder, "v0001", 4.0, candidates=12, k=3)
    assert manifest["users"] == N_USERS and manifest["k"] == 3 and manifest["candidates"] == 12
    assert manifest["gini_after"] < manifest["gini_before"]
    prices = load_prices(folder, "v0001")
    assert prices is not None and prices.strength == 4.0 and prices.candidates == 12
    assert set(prices.prices) == {f"i{i}" for i in range(N_ITEMS)}
    assert max(prices.prices.values()) > min(prices.prices.values())  # some items are dearer
    # strength 0: every price equal, so the re-ranking keeps the model's order
    fit_prices(store, registry, folder, "v0001", 0.0, candidates=12, k=3)
    flat = load_prices(folder, "v0001")
    assert flat is not None and len(set(flat.prices.values())) == 1
    assert clear_prices(folder, "v0001") and load_prices(folder, "v0001") is None
    assert not clear_prices(folder, "v0001")


def test_fit_samples_users_and_checks_its_arguments(
    home: tuple[EventStore, ArtifactRegistry, Path],
) -> None:
    store, registry, folder = home
    manifest = fit_prices(store, registry, folder, "v0001", 2.0, candidates=10, max_users=25)
    assert manifest["users"] == 25 and manifest["max_users"] == 25
    with pytest.raises(ConfigError, match="strength"):
        fit_prices(store, registry, folder, "v0001", -1.0)
    with pytest.raises(ConfigError, match="k <= candidates"):
        fit_prices(store, registry, folder, "v0001", 1.0, candidates=5, k=10)


def test_damaged_prices_are_a_clear_error_and_the_holder_serves_without(
    home: tuple[EventStore, ArtifactRegistry, Path],
) -> None:
    store, registry, folder = home
    fit_prices(store, registry, folder, "v0001", 2.0, candidates=10)
    arrays, manifest = prices_paths(folder, "v0001")
    arrays.write_bytes(b"not an npz")
    with pytest.raises(ConfigError, match="exposure prices of v0001"):
        load_prices(folder, "v0001")
    assert PriceHolder(folder).current("v0001") is None
    fit_prices(store, registry, folder, "v0001", 2.0, candidates=10)
    text = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**text, "version": "v0002"}))
    with pytest.raises(ConfigError, match="not v0001's exposure prices"):
        load_prices(folder, "v0001")


def test_holder_follows_fits_and_clears(home: tuple[EventStore, ArtifactRegistry, Path]) -> None:
    store, registry, folder = home
    holder = PriceHolder(folder, check_every_s=0.0)
    assert holder.current("v0001") is None
    fit_prices(store, registry, folder, "v0001", 2.0, candidates=10)
    first = holder.current("v0001")
    assert first is not None and first.strength == 2.0
    time.sleep(0.01)  # a distinct modification time
    fit_prices(store, registry, folder, "v0001", 3.0, candidates=10)
    again = holder.current("v0001")
    assert again is not None and again.strength == 3.0
    assert holder.current("v0002") is None  # another version has none
    clear_prices(folder, "v0001")
    assert holder.current("v0001") is None


def top_items(client: TestClient, key: str, n: int) -> Counter[str]:
    shown: Counter[str] = Counter()
    for u in range(N_USERS):
        response = client.get(
            f"/v1/users/u{u}/recommendations", params={"n": n}, headers=bearer(key)
        )
        assert response.status_code == 200, response.text
        shown.update(item["item_id"] for item in response.json()["items"])
    return shown


def exposure_gini(shown: Counter[str]) -> float:
    counts = np.zeros(N_ITEMS)
    for item, count in shown.items():
        counts[int(item[1:])] = count
    return gini(counts)


def test_service_applies_the_active_versions_prices(tmp_path: Path) -> None:
    settings = ServiceSettings(
        home=tmp_path / "home",
        key_cache_s=0.0,
        model_check_s=0.01,
        loop_config=model_only_loop(tmp_path),
        candidates=20,
    )
    state = ServiceState.open(settings)
    import_dataset(state.store, skewed_dataset(), source="skewed")
    train_version(state.store, state.registry, "EASE", {"l2": 10.0}, card=False)
    key = create_key(state.store, "app", "client")[1]
    with TestClient(create_app(state=state)) as client:
        plain = top_items(client, key, 3)
        fit_prices(
            state.store, state.registry, settings.prices_dir, "v0001", 4.0, candidates=20, k=3
        )
        time.sleep(0.02)
        priced = top_items(client, key, 3)
        assert state.counters["priced"]._value.get() == N_USERS
        assert exposure_gini(priced) < exposure_gini(plain) and len(priced) > len(plain)
        clear_prices(settings.prices_dir, "v0001")
        time.sleep(0.02)
        assert top_items(client, key, 3) == plain


def test_retraining_refits_the_replaced_versions_prices(
    home: tuple[EventStore, ArtifactRegistry, Path],
) -> None:
    store, registry, folder = home
    fit_prices(store, registry, folder, "v0001", 2.5, candidates=10, k=3, max_users=40, seed=7)
    version = _train_and_activate(
        store.url_with_password, str(registry.root), "EASE", None, str(folder)
    )
    assert registry.active() == version == "v0002"
    refit = load_prices(folder, "v0002")
    assert refit is not None and refit.strength == 2.5 and refit.candidates == 10
    assert (refit.manifest["k"], refit.manifest["max_users"], refit.manifest["seed"]) == (3, 40, 7)
    clear_prices(folder, "v0002")
    assert (
        _train_and_activate(store.url_with_password, str(registry.root), "EASE", None, str(folder))
        == "v0003"
    )
    assert load_prices(folder, "v0003") is None and registry.active() == "v0003"


def test_cli_fits_clears_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    home.mkdir()
    store = EventStore(f"sqlite:///{home / 'recloop.db'}")
    import_dataset(store, skewed_dataset(), source="skewed")
    train_version(store, ArtifactRegistry(home / "models"), "EASE", {"l2": 10.0}, card=False)
    store.close()
    result = runner.invoke(app, ["model", "prices", "--strength", "3", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert f"v0001: exposure prices fitted on {N_USERS} users" in result.output
    assert "Gini@10" in result.output
    assert load_prices(home / "exposure_prices", "v0001") is not None
    result = runner.invoke(app, ["model", "prices", "v0001", "--clear", "--home", str(home)])
    assert result.exit_code == 0 and "removed" in result.output
    assert load_prices(home / "exposure_prices", "v0001") is None
    result = runner.invoke(app, ["model", "prices", "v0009", "--home", str(home)])
    assert result.exit_code == 2 and "v0009" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["model", "prices", "--candidates", "500", "--home", str(home)])
    assert result.exit_code == 2 and "RECLOOP_CANDIDATES" in result.output
