"""Simulator: click model, common random numbers, the loop adapting per segment, the CLI."""

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
from recloop.data.synthetic import SyntheticConfig, generate
from recloop.engine.bandit import BanditConfig
from recloop.engine.cli import register
from recloop.engine.offpolicy import ips, snips
from recloop.engine.simulator import (
    BanditBlend,
    Decisions,
    Feedback,
    Policy,
    Population,
    Simulator,
    StaticBlend,
    click_probability,
    default_arms,
    equal_weights,
    weight_grid,
)
from recloop.errors import ConfigError
from recloop.models import EASE, Popular

N_USERS, N_ITEMS = 120, 80
SOURCES = ("alpha", "beta")


# ---------------------------------------------------------------------------- fixtures
def planted() -> tuple[Population, dict[str, object], Interactions]:
    """Segment "a" likes items 0-39 (source alpha), segment "b" items 40-79 (source beta)."""
    segment = np.where(np.arange(N_USERS) < N_USERS // 2, "a", "b")
    likes_alpha = (segment == "a")[:, None]
    alpha_item = (np.arange(N_ITEMS) < 40)[None, :]
    logits = np.where(likes_alpha == alpha_item, 0.5, -4.0)

    def source(first: int) -> object:
        def candidates(users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            items = np.broadcast_to(np.arange(first, first + 40), (len(users), 40))
            return items.copy(), np.broadcast_to(-np.arange(40.0), (len(users), 40)).copy()

        return candidates

    train = Interactions.from_arrays(np.arange(N_USERS), np.zeros(N_USERS, dtype=np.int64))
    return Population(logits, segment), {"alpha": source(0), "beta": source(40)}, train


def simulator(seed: int = 0) -> Simulator:
    population, sources, train = planted()
    return Simulator(population, sources, train, k=10, candidates=40, seed=seed)


def bandit(seed: int = 0) -> BanditBlend:
    return BanditBlend(weight_grid(SOURCES, 2), BanditConfig(seed=seed))


class SlatesOf:
    """A hand-written policy that shows a given blend's slates (to check common draws)."""

    arms = ()

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights

    def reset(self) -> None:
        return None

    def choose(self, users: np.ndarray, segments: np.ndarray, sim: Simulator) -> Decisions:
        rows = [sim.slate(int(u), self.weights) for u in users]
        items = np.stack([r[0] for r in rows])
        n = len(users)
        return Decisions(items, tuple(r[1] for r in rows), np.zeros(n, np.int64), np.ones(n))

    def update(self, feedback: Feedback) -> None:
        return None


# ---------------------------------------------------------------------------- click model
def test_click_probability_by_hand() -> None:
    assert click_probability(0.0, 1) == pytest.approx(0.5)
    assert click_probability(0.0, 3) == pytest.approx(0.25)  # log2(4) = 2
    assert click_probability(np.log(3.0), 1) == pytest.approx(0.75)
    assert click_probability(np.log(3.0), 7) == pytest.approx(0.25)  # log2(8) = 3
    discount = click_probability(np.zeros(10), np.arange(1, 11)) / 0.5
    assert discount == pytest.approx(1.0 / np.log2(np.arange(2, 12)))
    assert np.all(np.diff(discount) < 0)
    assert click_probability(-np.inf, 1) == 0.0
    with pytest.raises(ConfigError, match="1-based"):
        click_probability(0.0, 0)


def test_affinity_shapes_and_padding() -> None:
    population, _, _ = planted()
    users = np.array([0, 100])
    cross = population.affinity(users, np.array([0, 79]))
    assert cross.tolist() == [[0.5, -4.0], [-4.0, 0.5]]
    per_row = population.affinity(users, np.array([[1, -1], [2, 41]]))
    assert per_row[0, 0] == 0.5 and per_row[0, 1] == -np.inf
    assert per_row[1].tolist() == [-4.0, 0.5]
    assert population.segment_names == ("a", "b")


def test_synthetic_population_is_realistic_and_segments_come_from_observed_rows() -> None:
    data = generate(SyntheticConfig(n_users=200, n_items=60, n_interactions=3000, seed=1))
    population = Population.from_synthetic(data)
    assert population.logits.shape == (200, 60)
    top = click_probability(population.logits.max(axis=1), 1)
    assert 0.2 < top.mean() < 0.7
    assert click_probability(np.median(population.logits), 1) < 0.1
    counts = data.dataset.interactions.user_counts()
    heavy, light = population.segments == "high", population.segments == "low"
    assert counts[heavy].min() > counts[light].max()


# ---------------------------------------------------------------------------- common draws
def test_identical_policies_get_identical_clicks_and_static_slates_repeat() -> None:
    sim = simulator()
    equal = equal_weights(SOURCES)
    result = sim.run(
        {"one": StaticBlend(equal), "two": StaticBlend(equal), "bandit": bandit()}, 6, 40
    )
    one, two = result.policies["one"], result.policies["two"]
    assert one.clicks.tolist() == two.clicks.tolist()
    assert one.logs.clicks.tolist() == two.logs.clicks.tolist()
    assert one.clicks.sum() > 0
    assert np.all(one.regret_vs_equal == 0)  # the equal-weight reference reads the same draws
    # the same slates, shown by another policy in another run, get the same clicks
    alone = simulator().run({"hand": SlatesOf(equal)}, 6, 40)
    assert alone.policies["hand"].clicks.tolist() == one.clicks.tolist()
    # a longer horizon keeps the first rounds' draws
    longer = simulator().run({"one": StaticBlend(equal)}, 9, 40)
    assert longer.policies["one"].clicks[:6].tolist() == one.clicks.tolist()


def test_runs_are_deterministic_given_the_seed() -> None:
    def run(seed: int) -> dict[str, object]:
        policies: dict[str, Policy] = {
            "bandit": bandit(seed),
            "equal": StaticBlend(equal_weights(SOURCES)),
        }
        return simulator(seed).run(policies, 5, 30).to_dict(logs=True)

    assert json.dumps(run(3)) == json.dumps(run(3))
    assert json.dumps(run(3)) != json.dumps(run(4))
    sim, policy = simulator(), bandit()
    first = sim.run({"b": policy}, 4, 30).to_dict(logs=True)
    assert sim.run({"b": policy}, 4, 30).to_dict(logs=True) == first  # reset, then re-run


# ---------------------------------------------------------------------------- the loop adapts
def test_bandit_learns_each_segments_best_arm_and_beats_equal_weights() -> None:
    sim = simulator()
    equal = equal_weights(SOURCES)
    policies: dict[str, Policy] = {
        "bandit": bandit(),
        "equal": StaticBlend(equal),
        "alpha only": StaticBlend({"alpha": 1.0}),
        "beta only": StaticBlend({"beta": 1.0}),
    }
    result = sim.run(policies, 25, 60)
    res = result.policies["bandit"]
    assert res.arm_names == ("alpha=1,beta=0", "alpha=0.5,beta=0.5", "alpha=0,beta=1")
    assert res.best_arm == {"a": 0, "b": 2}
    assert result.best_fixed_arms() == {"a": "alpha=1,beta=0", "b": "alpha=0,beta=1"}
    final = {s: float(p[-1]) for s, p in res.best_arm_probability(result.segments).items()}
    assert min(final.values()) > 0.8 > 1 / 3
    assert res.arm_probabilities is not None and res.arm_probabilities.shape == (25, 2, 3)
    assert all(r is not None for r in result.rounds_to("bandit").values())
    assert res.ctr > result.policies["equal"].ctr + 0.05
    assert res.regret_vs_equal[-1] < 0
    # each single source is best for one segment only, so it loses to the bandit overall
    assert res.ctr > max(result.policies[n].ctr for n in ("alpha only", "beta only"))
    assert res.regret_vs_best_fixed[-1] < result.policies["equal"].regret_vs_best_fixed[-1]
    # logs: one row per slate, exact propensities, usable off-policy
    logs = res.logs
    assert len(logs.arm) == 25 * 60 and np.all((logs.propensity > 0) & (logs.propensity <= 1))
    target = (logs.arm == 1).astype(float)
    truth = result.policies["equal"].logs.reward.mean()
    for estimate in (
        ips(logs.reward, logs.propensity, target),
        snips(logs.reward, logs.propensity, target),
    ):
        assert abs(estimate.value - truth) < 0.1


def test_default_arms_include_equal_weights() -> None:
    arms = default_arms(["EASE", "Popular"])
    assert len(arms) == 5 and {"EASE": 0.5, "Popular": 0.5} in arms
    three = default_arms(["a", "b", "c"])
    assert len(three) == 7 and any(np.allclose(list(a.values()), 1 / 3) for a in three)
    with pytest.raises(ConfigError, match="at most 16"):
        weight_grid(["a", "b", "c"], 5)


def test_bad_inputs_are_one_line_errors() -> None:
    sim = simulator()
    with pytest.raises(ConfigError, match="exceeds the population"):
        sim.run({"e": StaticBlend(equal_weights(SOURCES))}, 2, N_USERS + 1)
    with pytest.raises(ConfigError, match="unknown source"):
        sim.run({"e": StaticBlend({"gamma": 1.0})}, 2, 10)
    with pytest.raises(ConfigError, match="positive weight"):
        StaticBlend({"alpha": 0.0})


# ---------------------------------------------------------------------------- the oracle
def test_the_oracle_is_never_a_candidate_source() -> None:
    data = generate(SyntheticConfig(n_users=150, n_items=60, n_interactions=2000, seed=2))
    inter = data.dataset.interactions
    oracle = EASE().fit(inter)
    population = Population.from_model(oracle, inter, scale=0.5, bias=-3.5)
    assert population.oracle is oracle and population.logits.shape == (150, 60)
    for sources in ({"EASE": oracle}, {"pop": Popular().fit(inter), "score": oracle.recommend}):
        with pytest.raises(ConfigError, match="oracle"):
            Simulator(population, sources, inter)
    other = EASE().fit(inter)  # same class and config, but a separately fitted model
    Simulator(population, {"EASE": other}, inter, candidates=20)


# ---------------------------------------------------------------------------- the CLI
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """Test app."""

    register(app, Console(width=200), user_errors)
    return app


def test_simulate_command_writes_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli(), ["simulate", "--rounds", "3", "--users-per-round", "30", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "BanditBlend" in result.output and "EqualWeights" in result.output
    data = json.loads((tmp_path / "simulation.json").read_text())
    assert data["rounds"] == 3 and data["segments"] == ["low", "mid", "high"]
    assert set(data["policies"]) == {"BanditBlend", "EqualWeights", "EASE only", "Popular only"}
    assert len(data["policies"]["BanditBlend"]["clicks_per_round"]) == 3
    assert data["population"]["kind"] == "synthetic"


def test_simulate_without_movielens_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECLOOP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECLOOP_MOVIELENS_URL", (tmp_path / "missing.zip").as_uri())
    result = CliRunner().invoke(
        cli(), ["simulate", "--population", "movielens", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "MovieLens-100K" in lines[0], result.output
    assert not (tmp_path / "out" / "simulation.json").exists()
