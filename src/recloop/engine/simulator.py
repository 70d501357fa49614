"""A click simulator for the feedback loop: hidden tastes, common random numbers, policies.

Simulated users have hidden click log-odds for every item (a :class:`Population`, built from the
synthetic generator's planted tastes or from an "oracle" model that is never a candidate
source). Each round a sample of users is shown a slate by every policy; a user clicks the item
at 1-based position ``j`` iff ``u < σ(affinity) / log2(j + 1)``, where ``u`` is one uniform per
(round, user slot, position) drawn before any policy runs (common random numbers), so every
policy, and every fixed arm it is compared with, is scored on the same draws.

Policies choose blend weights over the candidate sources; the slate itself is built by
:class:`recloop.engine.blend.Blender`. :class:`StaticBlend` always uses one weight vector,
:class:`BanditBlend` picks one of at most 16 per user segment with
:class:`recloop.engine.bandit.ThompsonBandit` and learns from the clicks after every round.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from scipy.special import expit

from recloop.data.types import Interactions, Queries
from recloop.engine.bandit import MAX_ARMS, BanditConfig, ThompsonBandit
from recloop.engine.blend import Blended, Blender, SourceCandidates
from recloop.errors import ConfigError, DataError
from recloop.eval.segments import activity_terciles

if TYPE_CHECKING:
    from recloop.data.synthetic import SyntheticData
    from recloop.data.types import Catalog, Dataset

__all__ = [
    "BanditBlend",
    "Decisions",
    "Feedback",
    "Logs",
    "Policy",
    "PolicyResult",
    "Population",
    "Reward",
    "RunObserver",
    "Setup",
    "SimulationResult",
    "Simulator",
    "StaticBlend",
    "activity_segments",
    "arm_name",
    "click_probability",
    "default_arms",
    "equal_weights",
    "movielens_setup",
    "standard_policies",
    "synthetic_setup",
    "weight_grid",
]

# Log-odds = scale · (per-user z-score of the raw affinity) + bias. Chosen so that a user's
# best item is clicked at position 1 with probability ~0.49 on average and EASE's top 10 with
# ~0.25 (see docs/loop_simulator.md).
SYNTHETIC_SCALE = 2.0
SYNTHETIC_BIAS = -3.5
MOVIELENS_SCALE = 0.5
MOVIELENS_BIAS = -3.5
ORACLE_L2 = 1000.0  # the MovieLens oracle's EASE penalty; the candidate EASE keeps its default
SEGMENT_ORDER = ("low", "mid", "high")

Reward = Literal["any_click", "ctr", "positions"]


# ---------------------------------------------------------------------------- the hidden truth
def click_probability(affinity: np.ndarray | float, positions: np.ndarray | int) -> np.ndarray:
    """σ(affinity) / log2(position + 1), positions 1-based; affinity −inf gives 0."""
    pos = np.asarray(positions, dtype=np.float64)
    if np.any(pos < 1):
        raise ConfigError("positions are 1-based: every position must be at least 1")
    return np.asarray(expit(np.asarray(affinity, dtype=np.float64)) / np.log2(pos + 1.0))


def _standardise(raw: np.ndarray) -> np.ndarray:
    """Per row: (x − mean) / std over the row's finite entries (0 for a constant row)."""
    x = np.asarray(raw, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        low = np.where(finite, x, np.inf).min(axis=1, keepdims=True)
        x = np.where(finite, x, np.where(np.isfinite(low), low, 0.0))
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    return np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)


def activity_segments(interactions: Interactions) -> np.ndarray:
    """Each user's activity tercile (low / mid / high) by positive rows in ``interactions``."""
    counts = interactions.positive().user_counts()
    return np.asarray(activity_terciles(counts), dtype=object)


class Population:
    """Hidden click log-odds per (user, item) plus the segment each user shows the policies.

    ``logits`` (users × items) is the truth and is never shown to a policy; ``segments`` is
    what a policy may condition on, and should come from observed data only (e.g.
    :func:`activity_segments` of the train interactions). ``oracle`` is the model the truth was
    derived from, if any: a :class:`Simulator` refuses it as a candidate source.
    """

    def __init__(
        self,
        logits: np.ndarray,
        segments: Sequence[str] | np.ndarray,
        *,
        oracle: object | None = None,
        description: str = "custom",
    ) -> None:
        arr = np.array(logits, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ConfigError(f"logits must be a non-empty users × items matrix, not {arr.shape}")
        if not np.isfinite(arr).all():
            raise ConfigError("logits must be finite")
        segs = np.asarray(list(segments), dtype=object)
        if segs.shape != (arr.shape[0],):
            raise ConfigError(
                f"segments needs one label per user ({arr.shape[0]}), not {segs.shape}"
            )
        if not all(isinstance(s, str) and s for s in segs):
            raise ConfigError("segments must be non-empty strings")
        arr.setflags(write=False)
        segs.setflags(write=False)
        self.logits = arr
        self.segments = segs
        self.oracle = oracle
        self.description = description
        present = set(segs.tolist())
        self.segment_names: tuple[str, ...] = tuple(
            [s for s in SEGMENT_ORDER if s in present] + sorted(present.difference(SEGMENT_ORDER))
        )

    @property
    def n_users(self) -> int:
        return int(self.logits.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.logits.shape[1])

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Hidden log-odds, users × items: ``items`` 1-D (the same items for every user) or
        2-D with one row per user (e.g. slates); item −1 (padding) gives −inf."""
        u = np.asarray(users, dtype=np.int64)
        it = np.asarray(items, dtype=np.int64)
        if u.ndim != 1:
            raise ConfigError(f"users must be 1-D, not {u.shape}")
        if len(u) and (u.min() < 0 or u.max() >= self.n_users):
            raise DataError(f"user index out of range: the population has {self.n_users} users")
        if it.ndim == 1:
            cols = np.broadcast_to(it[None, :], (len(u), len(it)))
        elif it.ndim == 2 and it.shape[0] == len(u):
            cols = it
        else:
            raise ConfigError(f"items must be 1-D or one row per user, not {it.shape}")
        if cols.size and cols.max() >= self.n_items:
            raise DataError(f"item index out of range: the population has {self.n_items} items")
        valid = cols >= 0
        out = self.logits[u[:, None], np.where(valid, cols, 0)]
        return np.where(valid, out, -np.inf)

    @classmethod
    def from_synthetic(
        cls,
        data: SyntheticData,
        *,
        scale: float = SYNTHETIC_SCALE,
        bias: float = SYNTHETIC_BIAS,
        segments: Sequence[str] | np.ndarray | None = None,
    ) -> Population:
        """Log-odds from the planted tastes: ``scale · z + bias``, z the per-user z-score of
        log P(item | user) (topic mixture × popularity within topic, the taste at the end of
        each user's sequence). Segments default to activity terciles of the observed rows."""
        _check_scale(scale, bias)
        raw = np.log(np.maximum(data.truth.affinity_matrix(), 1e-300))
        segs = activity_segments(data.dataset.interactions) if segments is None else segments
        return cls(
            scale * _standardise(raw) + bias,
            segs,
            description=f"synthetic {data.dataset.name} (scale {scale:g}, bias {bias:g})",
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        interactions: Interactions,
        *,
        scale: float = MOVIELENS_SCALE,
        bias: float = MOVIELENS_BIAS,
        segments: Sequence[str] | np.ndarray | None = None,
        batch: int = 1024,
    ) -> Population:
        """Log-odds ``scale · z + bias`` from a fitted oracle model: z is the per-user z-score
        of ``model.score`` over all items, each user's history taken from ``interactions``
        (e.g. all MovieLens data). The model is kept as ``oracle`` so that it can never be a
        candidate source. Segments default to activity terciles of ``interactions``; pass the
        train split's so policies see only observed data."""
        _check_scale(scale, bias)
        if not callable(getattr(model, "score", None)):
            raise ConfigError(f"{type(model).__name__} has no score(): the oracle must score items")
        indptr, items = interactions.histories()
        queries = Queries(np.arange(interactions.n_users), indptr, items)
        blocks = [
            np.asarray(model.score(queries.take(np.arange(lo, min(lo + batch, len(queries))))))
            for lo in range(0, len(queries), batch)
        ]
        raw = np.vstack(blocks).astype(np.float64)
        segs = activity_segments(interactions) if segments is None else segments
        name = getattr(model, "name", type(model).__name__)
        return cls(
            scale * _standardise(raw) + bias,
            segs,
            oracle=model,
            description=f"oracle {name} (scale {scale:g}, bias {bias:g})",
        )


def _check_scale(scale: float, bias: float) -> None:
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(bias)):
        raise ConfigError(f"scale must be positive and bias finite, not {scale!r}, {bias!r}")


# ---------------------------------------------------------------------------- blend weights
def equal_weights(sources: Sequence[str]) -> dict[str, float]:
    """Every source at 1/n."""
    if not sources:
        raise ConfigError("need at least one source")
    return dict.fromkeys(sources, 1.0 / len(sources))


def arm_name(weights: Mapping[str, float]) -> str:
    """A readable, stable name such as ``EASE=0.75,Popular=0.25``."""
    return ",".join(f"{name}={float(w):.3g}" for name, w in weights.items())


def weight_grid(sources: Sequence[str], steps: int) -> list[dict[str, float]]:
    """Every weight vector on the simplex with weights in multiples of 1/steps, plus equal
    weights when the grid lacks them; first source heaviest first. At most 16 arms."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, not {steps}")
    n = len(sources)
    if n == 0:
        raise ConfigError("need at least one source")
    points = [c for c in itertools.product(range(steps + 1), repeat=n) if sum(c) == steps]
    points.sort(reverse=True)
    arms = [{s: c / steps for s, c in zip(sources, p, strict=True)} for p in points]
    equal = equal_weights(sources)
    if not any(all(math.isclose(a[s], equal[s]) for s in sources) for a in arms):
        arms.append(equal)
    if len(arms) > MAX_ARMS:
        raise ConfigError(f"{len(arms)} arms from {n} sources at steps {steps}; at most {MAX_ARMS}")
    return arms


def default_arms(sources: Sequence[str]) -> list[dict[str, float]]:
    """Quarter steps for two sources, half steps for three, single sources plus equal beyond."""
    n = len(sources)
    return weight_grid(sources, 4 if n <= 2 else 2 if n == 3 else 1)


# ---------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class Decisions:
    """A policy's slates for one round's users, with the arm and the probability it had."""

    items: np.ndarray  # (n, k) item indices, −1 where a slate is short
    sources: tuple[tuple[str, ...], ...]  # per slate, the source of each shown item
    arms: np.ndarray  # (n,) arm index (0 for a policy with a single arm)
    propensities: np.ndarray  # (n,) P(policy picks that arm)


@dataclass(frozen=True)
class Feedback:
    """What one round showed and what was clicked, given back to the policy that chose it."""

    round: int  # 0-based
    users: np.ndarray
    segments: np.ndarray  # per user, the observed segment label
    arms: np.ndarray
    propensities: np.ndarray
    clicks: np.ndarray  # (n, k) bool
    shown: np.ndarray  # (n,) slate lengths


class Policy(Protocol):
    """Chooses slates for a batch of users and learns from their clicks."""

    def reset(self) -> None:
        """Forget everything learned (a run starts every policy fresh)."""

    def choose(self, users: np.ndarray, segments: np.ndarray, simulator: Simulator) -> Decisions:
        """Slates for ``users`` (segments given per user), built with ``simulator.slate``."""
        ...

    def update(self, feedback: Feedback) -> None:
        """Learn from one round's clicks."""


class RunObserver(Protocol):
    """Watches a :meth:`Simulator.run` without changing it: it sees every policy's slates
    and clicks but draws no random numbers the run uses (e.g.
    :class:`recloop.engine.sim_caches.CacheAccounting`)."""

    def start(self, policies: Mapping[str, Policy], simulator: Simulator) -> None:
        """A run begins (after every policy was reset)."""

    def before_choose(
        self, name: str, policy: Policy, round: int, users: np.ndarray, simulator: Simulator
    ) -> None:
        """Policy ``name`` is about to choose slates for ``users`` in ``round``."""

    def after_outcome(
        self,
        name: str,
        policy: Policy,
        round: int,
        users: np.ndarray,
        decisions: Decisions,
        clicks: np.ndarray,
        simulator: Simulator,
    ) -> None:
        """Policy ``name`` showed ``decisions`` and got ``clicks`` (before it learns)."""


@runtime_checkable
class ArmPolicy(Protocol):
    """A policy over named blend-weight arms whose per-segment distribution can be read."""

    arms: tuple[dict[str, float], ...]
    arm_names: tuple[str, ...]

    def probabilities(self, segment: str) -> np.ndarray: ...


def _checked_weights(weights: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, w in weights.items():
        value = float(w)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"weight of source {name!r} must be >= 0, not {w!r}")
        out[str(name)] = value
    if not out or sum(out.values()) <= 0:
        raise ConfigError("blend weights need at least one positive weight")
    return out


class StaticBlend:
    """Always the same blend weights (sources left out weigh 0); propensity 1."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = _checked_weights(weights)
        self.arms: tuple[dict[str, float], ...] = (self.weights,)
        self.arm_names: tuple[str, ...] = (arm_name(self.weights),)

    def reset(self) -> None:
        return None

    def choose(self, users: np.ndarray, segments: np.ndarray, simulator: Simulator) -> Decisions:
        items, sources = simulator.slates(users, self.weights)
        n = len(users)
        return Decisions(items, sources, np.zeros(n, dtype=np.int64), np.ones(n))

    def update(self, feedback: Feedback) -> None:
        return None

    def probabilities(self, segment: str) -> np.ndarray:
        return np.ones(1)


class BanditBlend:
    """Per segment, a :class:`ThompsonBandit` picks one of ``arms`` (blend weights) per user.

    The bandit learns after every round from ``reward``: ``any_click`` (1 if the slate got a
    click), ``ctr`` (clicks / slate length, one fractional trial) or ``positions`` (every shown
    position one Bernoulli trial). The logged propensity is the bandit's exact choice
    probability, so the logs support IPS/SNIPS.
    """

    def __init__(
        self,
        arms: Sequence[Mapping[str, float]],
        config: BanditConfig | None = None,
        *,
        reward: Reward = "positions",
    ) -> None:
        if isinstance(arms, Mapping) or not 1 <= len(arms) <= MAX_ARMS:
            raise ConfigError(f"a bandit blend needs a sequence of 1 to {MAX_ARMS} weight vectors")
        if reward not in ("any_click", "ctr", "positions"):
            raise ConfigError(f"reward must be any_click, ctr or positions, not {reward!r}")
        self.arms = tuple(_checked_weights(a) for a in arms)
        self.arm_names = tuple(arm_name(a) for a in self.arms)
        self.config = config if config is not None else BanditConfig()
        self.reward: Reward = reward
        self.bandit = ThompsonBandit(self.arm_names, self.config)

    def reset(self) -> None:
        self.bandit = ThompsonBandit(self.arm_names, self.config)

    def choose(self, users: np.ndarray, segments: np.ndarray, simulator: Simulator) -> Decisions:
        n = len(users)
        arms = np.zeros(n, dtype=np.int64)
        props = np.ones(n)
        for segment in _ordered(segments):
            rows = np.flatnonzero(segments == segment)
            arms[rows], props[rows] = self.bandit.choose_many(segment, len(rows))
        items = np.full((n, simulator.k), -1, dtype=np.int64)
        sources: list[tuple[str, ...]] = []
        for row, (user, arm) in enumerate(zip(users.tolist(), arms.tolist(), strict=True)):
            slate, labels = simulator.slate(user, self.arms[arm])
            items[row] = slate
            sources.append(labels)
        return Decisions(items, tuple(sources), arms, props)

    def update(self, feedback: Feedback) -> None:
        clicks = feedback.clicks.sum(axis=1)
        for segment in _ordered(feedback.segments):
            rows = np.flatnonzero(feedback.segments == segment)
            arms = feedback.arms[rows]
            if self.reward == "positions":
                shown = feedback.shown[rows]
                mask = np.arange(feedback.clicks.shape[1])[None, :] < shown[:, None]
                trial_arms = np.broadcast_to(arms[:, None], mask.shape)[mask]
                rewards = feedback.clicks[rows][mask].astype(np.float64)
                self.bandit.update_many(segment, trial_arms, rewards)
                continue
            if self.reward == "any_click":
                rewards = (clicks[rows] > 0).astype(np.float64)
            else:
                rewards = clicks[rows] / np.maximum(feedback.shown[rows], 1)
            self.bandit.update_many(segment, arms, rewards)

    def probabilities(self, segment: str) -> np.ndarray:
        return self.bandit.probabilities(segment)


def standard_policies(
    sources: Sequence[str], seed: int = 0, *, reward: Reward = "positions"
) -> dict[str, Policy]:
    """The bandit over :func:`default_arms`, the equal-weight blend and each source alone."""
    policies: dict[str, Policy] = {
        "BanditBlend": BanditBlend(default_arms(sources), BanditConfig(seed=seed), reward=reward),
        "EqualWeights": StaticBlend(equal_weights(sources)),
    }
    for name in sources:
        policies[f"{name} only"] = StaticBlend({name: 1.0})
    return policies


def _ordered(segments: np.ndarray) -> list[str]:
    """Distinct labels in order of first appearance."""
    return list(dict.fromkeys(str(s) for s in segments.tolist()))


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Logs:
    """One row per slate a policy showed: what a logging policy records for off-policy work."""

    round: np.ndarray
    user: np.ndarray
    segment: np.ndarray  # str labels
    arm: np.ndarray
    propensity: np.ndarray
    clicks: np.ndarray  # clicks on the slate
    shown: np.ndarray  # items on the slate

    @property
    def reward(self) -> np.ndarray:
        """Per slate, clicks / items shown (the slate's CTR)."""
        return self.clicks / np.maximum(self.shown, 1)


@dataclass(frozen=True)
class PolicyResult:
    """One policy's run; per-round arrays have one entry per round."""

    name: str
    arm_names: tuple[str, ...]
    clicks: np.ndarray  # (rounds,)
    shown: np.ndarray  # (rounds,) items shown
    expected_clicks: np.ndarray  # (rounds,) sum of click probabilities
    segment_clicks: np.ndarray  # (rounds, segments)
    segment_shown: np.ndarray  # (rounds, segments)
    regret_vs_best_fixed: np.ndarray  # (rounds,) cumulative
    regret_vs_equal: np.ndarray  # (rounds,) cumulative
    arm_probabilities: np.ndarray | None  # (rounds, segments, arms) after each update
    best_arm: dict[str, int]  # per segment, the arm with the most expected clicks there
    logs: Logs

    @property
    def ctr(self) -> float:
        return float(self.clicks.sum() / max(1, self.shown.sum()))

    @property
    def expected_ctr(self) -> float:
        return float(self.expected_clicks.sum() / max(1, self.shown.sum()))

    def best_arm_probability(self, segments: Sequence[str]) -> dict[str, np.ndarray]:
        """Per segment, the probability of its best arm after each round (bandits only)."""
        if self.arm_probabilities is None:
            return {}
        return {s: self.arm_probabilities[:, j, self.best_arm[s]] for j, s in enumerate(segments)}


@dataclass(frozen=True)
class SimulationResult:
    """All policies of one run plus every fixed arm on the same draws (for the regrets)."""

    rounds: int
    users_per_round: int
    k: int
    seed: int
    sources: tuple[str, ...]
    segments: tuple[str, ...]
    policies: dict[str, PolicyResult]
    reference_arms: tuple[str, ...]  # every arm of every policy, equal weights included
    reference_clicks: np.ndarray  # (arms, rounds, segments)
    reference_expected: np.ndarray  # (arms, rounds, segments)
    reference_shown: np.ndarray  # (arms, rounds, segments)
    equal_arm: str

    def best_fixed_arms(self) -> dict[str, str]:
        """Per segment, the reference arm with the most clicks in hindsight."""
        totals = self.reference_clicks.sum(axis=1)
        return {
            s: self.reference_arms[int(np.argmax(totals[:, j]))]
            for j, s in enumerate(self.segments)
        }

    def rounds_to(self, policy: str, threshold: float = 0.8) -> dict[str, int | None]:
        """Per segment, the first round (1-based) after which its best arm had ≥ threshold."""
        result = self.policies[policy]
        out: dict[str, int | None] = {}
        for s, probs in result.best_arm_probability(self.segments).items():
            hit = np.flatnonzero(probs >= threshold)
            out[s] = int(hit[0]) + 1 if len(hit) else None
        return out

    def to_dict(self, *, logs: bool = False) -> dict[str, Any]:
        """Plain JSON values; ``logs`` adds every policy's per-slate logs."""
        ref_totals = self.reference_clicks.sum(axis=1)
        ref_shown = self.reference_shown.sum(axis=1)
        ref_expected = self.reference_expected.sum(axis=1)
        reference = {
            name: {
                "clicks": int(ref_totals[a].sum()),
                "ctr": float(ref_totals[a].sum() / max(1, ref_shown[a].sum())),
                "expected_ctr": float(ref_expected[a].sum() / max(1, ref_shown[a].sum())),
                "clicks_by_segment": {
                    s: int(ref_totals[a, j]) for j, s in enumerate(self.segments)
                },
            }
            for a, name in enumerate(self.reference_arms)
        }
        policies: dict[str, Any] = {}
        for name, r in self.policies.items():
            seg_clicks, seg_shown = r.segment_clicks.sum(axis=0), r.segment_shown.sum(axis=0)
            entry: dict[str, Any] = {
                "ctr": r.ctr,
                "expected_ctr": r.expected_ctr,
                "clicks": int(r.clicks.sum()),
                "shown": int(r.shown.sum()),
                "regret_vs_best_fixed": float(r.regret_vs_best_fixed[-1]),
                "regret_vs_equal": float(r.regret_vs_equal[-1]),
                "ctr_by_segment": {
                    s: float(seg_clicks[j] / max(1, seg_shown[j]))
                    for j, s in enumerate(self.segments)
                },
                "arms": list(r.arm_names),
                "clicks_per_round": r.clicks.astype(int).tolist(),
                "cumulative_regret_vs_best_fixed": r.regret_vs_best_fixed.tolist(),
                "cumulative_regret_vs_equal": r.regret_vs_equal.tolist(),
            }
            if r.arm_probabilities is not None:
                entry["best_arm"] = {s: r.arm_names[a] for s, a in r.best_arm.items()}
                best = r.best_arm_probability(self.segments)
                entry["final_best_arm_probability"] = {s: float(p[-1]) for s, p in best.items()}
                entry["rounds_to_0.8"] = self.rounds_to(name)
                entry["arm_probabilities"] = {
                    s: r.arm_probabilities[:, j, :].round(6).tolist()
                    for j, s in enumerate(self.segments)
                }
            if logs:
                lg = r.logs
                entry["logs"] = {
                    "round": lg.round.tolist(),
                    "user": lg.user.tolist(),
                    "segment": [str(s) for s in lg.segment.tolist()],
                    "arm": lg.arm.tolist(),
                    "propensity": lg.propensity.tolist(),
                    "clicks": lg.clicks.tolist(),
                    "shown": lg.shown.tolist(),
                }
            policies[name] = entry
        return {
            "rounds": self.rounds,
            "users_per_round": self.users_per_round,
            "k": self.k,
            "seed": self.seed,
            "sources": list(self.sources),
            "segments": list(self.segments),
            "equal_arm": self.equal_arm,
            "best_fixed_arm": self.best_fixed_arms(),
            "reference": reference,
            "policies": policies,
        }


# ---------------------------------------------------------------------------- the simulator
Source = (
    Any  # a fitted model with recommend(queries, k), or a callable (users, n) -> (items, scores)
)


class Simulator:
    """Shows slates to a population, draws clicks with common random numbers, scores policies.

    ``sources`` maps a name to a fitted model (``recommend(queries, n)``, queries from
    ``train``'s histories, which are excluded) or to a callable ``(users, n) -> (items,
    scores)``; each gives ``candidates`` items per user, computed once. A source that is the
    population's oracle is refused. Slates are blended by ``blender`` (default
    :class:`Blender` with rank normalisation) and cached per (user, weights). A run's
    ``observer`` (e.g. :class:`recloop.engine.sim_caches.CacheAccounting`) watches it.
    """

    def __init__(
        self,
        population: Population,
        sources: Mapping[str, Source],
        train: Interactions,
        *,
        k: int = 10,
        candidates: int = 100,
        seed: int = 0,
        blender: Blender | None = None,
    ) -> None:
        if k < 1 or candidates < k:
            raise ConfigError(f"need 1 <= k <= candidates, not k={k}, candidates={candidates}")
        if not sources:
            raise ConfigError("the simulator needs at least one candidate source")
        oracle = population.oracle
        for name, src in sources.items():
            if oracle is not None and (src is oracle or getattr(src, "__self__", None) is oracle):
                raise ConfigError(
                    f"source {name!r} is the population's oracle model: the hidden truth must "
                    "never be a candidate source"
                )
        if train.n_users != population.n_users or train.n_items > population.n_items:
            raise ConfigError(
                f"train has {train.n_users} users and {train.n_items} items; the population "
                f"{population.n_users} users and {population.n_items} items"
            )
        self.population = population
        self.source_names: tuple[str, ...] = tuple(sources)
        self.k = int(k)
        self.seed = int(seed)
        self.blender = blender if blender is not None else Blender()
        self._segment_code = {s: j for j, s in enumerate(population.segment_names)}
        self._codes = np.array([self._segment_code[s] for s in population.segments.tolist()])
        indptr, items = train.histories()
        queries = Queries(np.arange(train.n_users), indptr, items)
        users = np.arange(population.n_users)
        self._candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, src in sources.items():
            if callable(getattr(src, "recommend", None)):
                got = src.recommend(queries, candidates)
            elif callable(src):
                got = src(users, candidates)
            else:
                raise ConfigError(f"source {name!r} is neither a fitted model nor a callable")
            cand_items = np.asarray(got[0], dtype=np.int64)
            cand_scores = np.asarray(got[1], dtype=np.float64)
            if cand_items.ndim != 2 or cand_items.shape[0] != population.n_users:
                raise DataError(f"source {name!r} must give one candidate row per user")
            if cand_scores.shape != cand_items.shape:
                raise DataError(f"source {name!r}: items and scores differ in shape")
            if cand_items.size and cand_items.max() >= population.n_items:
                raise DataError(f"source {name!r} names an item beyond the population's")
            self._candidates[name] = (cand_items, cand_scores)
        self._cache: dict[tuple[int, tuple[float, ...]], tuple[np.ndarray, tuple[str, ...]]] = {}
        self._score_cache: dict[tuple[int, tuple[float, ...]], np.ndarray] = {}

    # -- slates -------------------------------------------------------------------------
    def _key(self, weights: Mapping[str, float]) -> tuple[float, ...]:
        unknown = set(weights).difference(self.source_names)
        if unknown:
            raise ConfigError(
                f"unknown source(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(self.source_names)}"
            )
        key = tuple(float(weights.get(s, 0.0)) for s in self.source_names)
        if any(not math.isfinite(w) or w < 0 for w in key) or sum(key) <= 0:
            raise ConfigError(f"blend weights must be >= 0 with one positive: {dict(weights)}")
        return key

    def slate(self, user: int, weights: Mapping[str, float]) -> tuple[np.ndarray, tuple[str, ...]]:
        """The top-k blend for ``user`` (padded with −1) and each item's source; cached.

        Sources missing from ``weights`` weigh 0 here (the Blender's own default is 1).
        """
        key = self._key(weights)
        cached = self._cache.get((user, key))
        if cached is not None:
            return cached
        blended = self._blend(user, key)
        items = np.full(self.k, -1, dtype=np.int64)
        items[: len(blended)] = blended.items
        items.setflags(write=False)
        self._cache[(user, key)] = (items, blended.sources)
        return items, blended.sources

    def slate_scores(self, user: int, weights: Mapping[str, float]) -> np.ndarray:
        """The blended score of each item of :meth:`slate` (NaN where the slate is short):
        what the service logs with a shown item. Computed on demand and cached apart from
        the slates, so runs that never ask for scores do no extra work."""
        key = self._key(weights)
        cached = self._score_cache.get((user, key))
        if cached is not None:
            return cached
        blended = self._blend(user, key)
        scores = np.full(self.k, np.nan)
        scores[: len(blended)] = blended.scores
        scores.setflags(write=False)
        self._score_cache[(user, key)] = scores
        return scores

    def _blend(self, user: int, key: tuple[float, ...]) -> Blended:
        pools = [
            SourceCandidates(name, self._candidates[name][0][user], self._candidates[name][1][user])
            for name in self.source_names
        ]
        return self.blender.blend(
            pools, self.k, weights=dict(zip(self.source_names, key, strict=True))
        )

    def slates(
        self, users: np.ndarray, weights: Mapping[str, float]
    ) -> tuple[np.ndarray, tuple[tuple[str, ...], ...]]:
        """:meth:`slate` for several users with the same weights: (n, k) items and sources."""
        items = np.full((len(users), self.k), -1, dtype=np.int64)
        labels: list[tuple[str, ...]] = []
        for row, user in enumerate(np.asarray(users).tolist()):
            items[row], src = self.slate(int(user), weights)
            labels.append(src)
        return items, tuple(labels)

    # -- draws and outcomes ---------------------------------------------------------------
    def draws(self, rounds: int, users_per_round: int) -> tuple[np.ndarray, np.ndarray]:
        """The common random numbers: users (rounds, n) and uniforms (rounds, n, k).

        Users are drawn without replacement within a round, from a stream apart from the
        uniforms', so the first R rounds are the same whatever the horizon.
        """
        if rounds < 1 or users_per_round < 1:
            raise ConfigError("rounds and users_per_round must be at least 1")
        if users_per_round > self.population.n_users:
            raise ConfigError(
                f"users_per_round ({users_per_round}) exceeds the population "
                f"({self.population.n_users} users)"
            )
        user_seq, click_seq = np.random.SeedSequence([self.seed, 0x51A]).spawn(2)
        user_rng, click_rng = np.random.default_rng(user_seq), np.random.default_rng(click_seq)
        users = np.stack(
            [
                user_rng.choice(self.population.n_users, users_per_round, replace=False)
                for _ in range(rounds)
            ]
        ).astype(np.int64)
        uniforms = click_rng.random((rounds, users_per_round, self.k))
        return users, uniforms

    def outcome(
        self, users: np.ndarray, items: np.ndarray, uniforms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(clicks (n, k) bool, expected clicks (n,), shown (n,)) of slates on given draws."""
        prob = click_probability(
            self.population.affinity(users, items), np.arange(1, items.shape[1] + 1)
        )
        return uniforms < prob, prob.sum(axis=1), (items >= 0).sum(axis=1)

    # -- a run --------------------------------------------------------------------------------
    def run(
        self,
        policies: Mapping[str, Policy],
        rounds: int,
        users_per_round: int,
        *,
        progress: Callable[[int], None] | None = None,
        observer: RunObserver | None = None,
    ) -> SimulationResult:
        """Run every policy (reset first) on the same draws; updates after each round.

        Every arm any policy can play, and equal weights, also run as fixed arms on the same
        draws: they give the best fixed arm per segment in hindsight and the equal-weight
        baseline for the regrets. ``progress`` is called with the number of rounds done;
        ``observer`` sees every policy's slates and clicks (it cannot change them).
        """
        if not policies:
            raise ConfigError("run needs at least one policy")
        users, uniforms = self.draws(rounds, users_per_round)
        equal = equal_weights(self.source_names)
        ref_keys: list[tuple[float, ...]] = [self._key(equal)]
        for policy in policies.values():
            for weights in getattr(policy, "arms", ()):
                key = self._key(weights)
                if not any(np.allclose(key, other) for other in ref_keys):
                    ref_keys.append(key)
        ref_weights = [dict(zip(self.source_names, key, strict=True)) for key in ref_keys]
        n_seg, n_ref = len(self.population.segment_names), len(ref_keys)
        ref_clicks = np.zeros((n_ref, rounds, n_seg))
        ref_expected = np.zeros((n_ref, rounds, n_seg))
        ref_shown = np.zeros((n_ref, rounds, n_seg))
        runs = {
            name: _Accumulator(name, policy, rounds, n_seg) for name, policy in policies.items()
        }
        for policy in policies.values():
            policy.reset()
        if observer is not None:
            observer.start(policies, self)
        for t in range(rounds):
            u = users[t]
            codes = self._codes[u]
            segments = self.population.segments[u]
            for a, weights in enumerate(ref_weights):
                items, _ = self.slates(u, weights)
                clicks, expected, shown = self.outcome(u, items, uniforms[t])
                ref_clicks[a, t] = np.bincount(codes, clicks.sum(axis=1), minlength=n_seg)
                ref_expected[a, t] = np.bincount(codes, expected, minlength=n_seg)
                ref_shown[a, t] = np.bincount(codes, shown, minlength=n_seg)
            for name, policy in policies.items():
                if observer is not None:
                    observer.before_choose(name, policy, t, u, self)
                d = policy.choose(u, segments, self)
                if d.items.shape != (len(u), self.k):
                    raise DataError(
                        f"policy {name!r} returned slates of shape {d.items.shape}, "
                        f"not {(len(u), self.k)}"
                    )
                clicks, expected, shown = self.outcome(u, d.items, uniforms[t])
                if observer is not None:
                    observer.after_outcome(name, policy, t, u, d, clicks, self)
                policy.update(Feedback(t, u, segments, d.arms, d.propensities, clicks, shown))
                runs[name].add(t, u, segments, codes, d, clicks, expected, shown, self)
            if progress is not None:
                progress(t + 1)
        ref_names = tuple(arm_name(w) for w in ref_weights)
        best = ref_clicks.sum(axis=1).argmax(axis=0)  # per segment, in hindsight
        best_per_round = ref_clicks[best, :, np.arange(n_seg)].sum(axis=0)
        equal_per_round = ref_clicks[0].sum(axis=1)
        results = {
            name: acc.result(best_per_round, equal_per_round, ref_keys, ref_expected, self)
            for name, acc in runs.items()
        }
        return SimulationResult(
            rounds=rounds,
            users_per_round=users_per_round,
            k=self.k,
            seed=self.seed,
            sources=self.source_names,
            segments=self.population.segment_names,
            policies=results,
            reference_arms=ref_names,
            reference_clicks=ref_clicks,
            reference_expected=ref_expected,
            reference_shown=ref_shown,
            equal_arm=ref_names[0],
        )


class _Accumulator:
    """One policy's running totals and logs during :meth:`Simulator.run`."""

    def __init__(self, name: str, policy: Policy, rounds: int, n_seg: int) -> None:
        self.name = name
        self.policy = policy
        self.clicks = np.zeros(rounds)
        self.shown = np.zeros(rounds)
        self.expected = np.zeros(rounds)
        self.seg_clicks = np.zeros((rounds, n_seg))
        self.seg_shown = np.zeros((rounds, n_seg))
        self.probs: list[np.ndarray] | None = [] if isinstance(policy, BanditBlend) else None
        if self.probs is None and isinstance(policy, ArmPolicy) and len(policy.arms) > 1:
            self.probs = []
        self.logs: dict[str, list[np.ndarray]] = {
            k: [] for k in ("round", "user", "segment", "arm", "propensity", "clicks", "shown")
        }

    def add(
        self,
        t: int,
        users: np.ndarray,
        segments: np.ndarray,
        codes: np.ndarray,
        d: Decisions,
        clicks: np.ndarray,
        expected: np.ndarray,
        shown: np.ndarray,
        sim: Simulator,
    ) -> None:
        n_seg = self.seg_clicks.shape[1]
        per_slate = clicks.sum(axis=1)
        self.clicks[t] = per_slate.sum()
        self.shown[t] = shown.sum()
        self.expected[t] = expected.sum()
        self.seg_clicks[t] = np.bincount(codes, per_slate, minlength=n_seg)
        self.seg_shown[t] = np.bincount(codes, shown, minlength=n_seg)
        for key, value in (
            ("round", np.full(len(users), t)),
            ("user", users),
            ("segment", segments),
            ("arm", np.asarray(d.arms, dtype=np.int64)),
            ("propensity", np.asarray(d.propensities, dtype=np.float64)),
            ("clicks", per_slate),
            ("shown", shown),
        ):
            self.logs[key].append(value)
        if self.probs is not None:
            assert isinstance(self.policy, ArmPolicy)
            names = sim.population.segment_names
            self.probs.append(np.stack([self.policy.probabilities(s) for s in names]))

    def result(
        self,
        best_per_round: np.ndarray,
        equal_per_round: np.ndarray,
        ref_keys: list[tuple[float, ...]],
        ref_expected: np.ndarray,
        sim: Simulator,
    ) -> PolicyResult:
        arms: tuple[dict[str, float], ...] = getattr(self.policy, "arms", ())
        names: tuple[str, ...] = getattr(self.policy, "arm_names", ())
        best_arm: dict[str, int] = {}
        if arms:
            totals = ref_expected.sum(axis=1)  # (refs, segments)
            index = [
                next(i for i, key in enumerate(ref_keys) if np.allclose(key, sim._key(w)))
                for w in arms
            ]
            for j, s in enumerate(sim.population.segment_names):
                best_arm[s] = int(np.argmax(totals[index, j]))
        logs = Logs(**{k: np.concatenate(v) for k, v in self.logs.items()})
        return PolicyResult(
            name=self.name,
            arm_names=tuple(names),
            clicks=self.clicks,
            shown=self.shown,
            expected_clicks=self.expected,
            segment_clicks=self.seg_clicks,
            segment_shown=self.seg_shown,
            regret_vs_best_fixed=np.cumsum(best_per_round - self.clicks),
            regret_vs_equal=np.cumsum(equal_per_round - self.clicks),
            arm_probabilities=np.stack(self.probs) if self.probs else None,
            best_arm=best_arm,
            logs=logs,
        )


# ---------------------------------------------------------------------------- ready-made set-ups
@dataclass(frozen=True)
class Setup:
    """A population, its candidate sources and the train data they were fitted on."""

    dataset: str  # the benchmark dataset name
    population: Population
    sources: dict[str, Any]
    train: Interactions
    notes: dict[str, Any]
    catalog: Catalog | None = None  # item facts, for explanations (sim_caches)


def synthetic_setup(
    data: SyntheticData,
    *,
    scale: float = SYNTHETIC_SCALE,
    bias: float = SYNTHETIC_BIAS,
) -> Setup:
    """Planted tastes as the truth; EASE and Popular fitted on the observed synthetic rows."""
    from recloop.models import EASE, Popular

    train = data.dataset.interactions
    sources: dict[str, Any] = {"EASE": EASE().fit(train), "Popular": Popular().fit(train)}
    population = Population.from_synthetic(data, scale=scale, bias=bias)
    notes = {
        "truth": "planted tastes: z-scored log P(item | user)",
        "scale": scale,
        "bias": bias,
        "sources": "EASE (l2=300), Popular, fitted on all observed synthetic rows",
        "segments": "activity terciles of the observed rows",
    }
    return Setup(data.dataset.name, population, sources, train, notes, data.dataset.catalog)


def movielens_setup(
    dataset: Dataset,
    seed: int,
    *,
    scale: float = MOVIELENS_SCALE,
    bias: float = MOVIELENS_BIAS,
    oracle_l2: float = ORACLE_L2,
) -> Setup:
    """Oracle EASE (``oracle_l2``) fitted on all rows is the truth; the candidate EASE (default
    l2) and Popular are fitted on the train part of a ratio split (``seed``) only, and the
    segments are that train part's activity terciles."""
    from recloop.data.split import ratio
    from recloop.models import EASE, Popular
    from recloop.models.ease import EASEConfig

    everything = dataset.interactions
    train = ratio(everything, seed=seed).train
    sources: dict[str, Any] = {"EASE": EASE().fit(train), "Popular": Popular().fit(train)}
    if math.isclose(EASEConfig().l2, oracle_l2):
        raise ConfigError("the oracle EASE must differ from the candidate EASE (another l2)")
    oracle = EASE(EASEConfig(l2=oracle_l2)).fit(everything)
    population = Population.from_model(
        oracle, everything, scale=scale, bias=bias, segments=activity_segments(train)
    )
    notes = {
        "truth": f"oracle EASE l2={oracle_l2:g} on all rows: z-scored scores",
        "scale": scale,
        "bias": bias,
        "sources": f"EASE (l2={EASEConfig().l2:g}), Popular, fitted on ratio split {seed} train",
        "segments": "activity terciles of the train split",
    }
    return Setup(dataset.name, population, sources, train, notes, dataset.catalog)
