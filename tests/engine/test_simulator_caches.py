"""Cache accounting in the simulator: hand-counted hits, unchanged clicks, pregeneration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from recloop.cli import user_errors
from recloop.data import Interactions
from recloop.data.types import Catalog, IdMap
from recloop.engine.bandit import BanditConfig
from recloop.engine.cli import register
from recloop.engine.sim_caches import CacheAccounting
from recloop.engine.simulator import (
    BanditBlend,
    Policy,
    Population,
    Simulator,
    StaticBlend,
    weight_grid,
)
from recloop.errors import ConfigError

ITEMS = ("m0", "m1", "m2", "m3", "m4", "m5")
TITLES = ("Alpha (1990)", "Bravo (1991)", "Charlie (1992)", "Delta (1993)", "Echo (1994)")
GENRES = (["Comedy"], ["Comedy"], ["Drama"], ["Drama"], ["Horror"], ["Comedy", "Drama"])


def catalog() -> Catalog:
    titles = [*TITLES, "Foxtrot (1995)"]
    return Catalog(IdMap(ITEMS), titles, titles, {"genres": [list(g) for g in GENRES]})


def train(n_users: int = 3) -> Interactions:
    """Every user watched m5 (Comedy, Drama) and nothing else."""
    return Interactions.from_arrays(
        np.arange(n_users),
        np.full(n_users, 5),
        users=IdMap(f"u{u}" for u in range(n_users)),
        items=IdMap(ITEMS),
    )


def fixed(first: int) -> object:
    """A source that proposes items ``first``, ``first + 1``, ... to every user."""

    def candidates(users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        items = (first + np.arange(n)) % 5
        return np.tile(items, (len(users), 1)), np.tile(-np.arange(n, dtype=float), (len(users), 1))

    return candidates


def hand_case() -> tuple[Simulator, Interactions, dict[str, object]]:
    """User 0 clicks m0 (always first on the slate) and nothing else; users 1 and 2 never
    click. Slates are m0, m1 for everyone."""
    logits = np.full((3, 6), -50.0)
    logits[0, 0] = 50.0
    sources = {"alpha": fixed(0)}
    population = Population(logits, ["low", "low", "low"])
    rows = train()
    return Simulator(population, sources, rows, k=2, candidates=4, seed=0), rows, sources


def test_hits_counted_by_hand() -> None:
    sim, rows, sources = hand_case()
    accounting = CacheAccounting(rows, sources, catalog())
    result = sim.run({"static": StaticBlend({"alpha": 1.0})}, 3, 3, observer=accounting)
    logs = result.policies["static"].logs
    assert np.bincount(logs.user, weights=logs.clicks).tolist() == [3, 0, 0]
    rates = accounting.rates()["static"]
    # candidates: user 0 clicked before each revisit (3 misses); users 1 and 2 miss once
    assert (rates.slates, rates.candidate_hits) == (9, 4)
    # explanations, 2 per slate. Users 1 and 2: 2 misses, then 4 hits each; their evidence
    # is the same, but keys carry the user's scope, so user 2 does not hit user 1's entries.
    # User 0 after clicking m0: m0's evidence leaves m0 out (same as before: a hit); m1's
    # gains m0 as its top driver (a miss); in round 2 the history's distinct items are
    # unchanged, so both hit.
    assert (rates.explanations, rates.explanation_hits) == (18, 8 + 3)
    assert rates.distinct_explanations == 7
    # the static policy's precomputed slates are the slates it shows: everything was ready
    assert rates.precomputed and rates.pregenerated == 7
    assert rates.pregenerated_hits == 18 and rates.pregenerated_hit_rate == 1.0
    data = accounting.to_dict()["policies"]["static"]
    assert data["candidate_hit_rate"] == pytest.approx(4 / 9)
    assert data["explanation_hit_rate"] == pytest.approx(11 / 18)


def planted() -> tuple[Simulator, Interactions, dict[str, object]]:
    """Half the users like items 0-1 (source alpha), half 2-4 (source beta); the clicks vary."""
    n_users = 40
    likes_alpha = (np.arange(n_users) < n_users // 2)[:, None]
    alpha_item = (np.arange(6) < 2)[None, :]
    logits = np.where(likes_alpha == alpha_item, 0.5, -3.0)
    segments = np.where(likes_alpha[:, 0], "a", "b")
    sources = {"alpha": fixed(0), "beta": fixed(2)}
    rows = train(n_users)
    sim = Simulator(Population(logits, segments), sources, rows, k=3, candidates=5, seed=1)
    return sim, rows, sources


def policies() -> dict[str, Policy]:
    return {
        "bandit": BanditBlend(weight_grid(("alpha", "beta"), 2), BanditConfig(seed=3)),
        "equal": StaticBlend({"alpha": 0.5, "beta": 0.5}),
    }


def test_clicks_are_the_same_with_and_without_the_accounting() -> None:
    sim, rows, sources = planted()
    plain = sim.run(policies(), 8, 15).to_dict(logs=True)
    for accounting in (
        CacheAccounting(rows, sources, catalog()),
        CacheAccounting(rows, sources),  # candidates only
    ):
        sim, _, _ = planted()
        watched = sim.run(policies(), 8, 15, observer=accounting)
        assert watched.to_dict(logs=True) == plain
        assert sum(watched.policies["bandit"].clicks) > 0
        assert accounting.rates()["bandit"].slates == 8 * 15


def test_pregenerated_hit_rate_is_at_least_the_cold_one() -> None:
    sim, rows, sources = planted()
    accounting = CacheAccounting(rows, sources, catalog())
    sim.run(policies(), 8, 15, observer=accounting)
    rates = accounting.rates()
    for r in rates.values():
        assert r.explanations == 8 * 15 * 3
        assert r.pregenerated_hits >= r.explanation_hits
        assert r.pregenerated_hit_rate >= r.explanation_hit_rate > 0
    assert rates["equal"].pregenerated_hit_rate == 1.0
    # the bandit's precomputed slates use its likeliest arm; exploring another one misses
    assert rates["bandit"].precomputed
    assert rates["bandit"].pregenerated_hit_rate < 1.0


def test_without_a_catalogue_only_candidates_are_counted() -> None:
    sim, rows, sources = hand_case()
    accounting = CacheAccounting(rows, sources)
    sim.run({"static": StaticBlend({"alpha": 1.0})}, 3, 3, observer=accounting)
    data = accounting.to_dict()
    assert set(data["simulated"]) == {"candidates"}
    assert data["policies"]["static"] == {
        "slates": 9,
        "candidate_hits": 4,
        "candidate_hit_rate": pytest.approx(4 / 9),
    }


def test_a_mismatched_run_is_refused() -> None:
    sim, _, sources = hand_case()
    with pytest.raises(ConfigError, match="users"):
        sim.run(
            {"static": StaticBlend({"alpha": 1.0})},
            1,
            1,
            observer=CacheAccounting(train(5), sources),
        )
    small = Catalog(IdMap(ITEMS[:2]), list(TITLES[:2]), list(TITLES[:2]))
    with pytest.raises(ConfigError, match="catalogue lacks"):
        CacheAccounting(train(), sources, small)


def test_simulate_caches_writes_the_rates(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app, Console(width=200), user_errors)
    args = ["simulate", "--rounds", "2", "--users-per-round", "20", "--caches"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "cache hit rates" in result.output
    caches = json.loads((tmp_path / "simulation.json").read_text())["caches"]
    assert set(caches["policies"]) == {"BanditBlend", "EqualWeights", "EASE only", "Popular only"}
    for r in caches["policies"].values():
        assert r["slates"] == 40 and r["explanations"] == 400
        assert r["pregenerated_hit_rate"] >= r["explanation_hit_rate"]
