"""The live service's caches in the simulator: candidate and explanation hit rates per policy.

:class:`CacheAccounting`, passed to :meth:`recloop.engine.simulator.Simulator.run` as its
``observer``, counts what the service's caches would see if each policy served the run's
users. It only watches: it draws no random number the run uses, so clicks are the same with
and without it.

- **Candidates.** The service keeps a user's top model candidates under a key holding the
  length and last event of their history (``recloop.service.app._candidates``), so any new
  event misses. Here every slate is one lookup, a hit when the policy showed the user a slate
  before and the user has not clicked since (a click is an event). Only the key is simulated:
  the simulator's candidates never change (sources are not refitted, slates do not react to
  clicks), and nothing is hidden or expires mid-run.
- **Explanations.** Every shown item is explained, as if every user opened every
  explanation, by an :class:`~recloop.generative.explain.Explainer` with the deterministic
  template, through one :class:`~recloop.generative.budget.ExplanationCache` per policy whose
  keys carry the user's scope, as in ``recloop.service.routes_explain``. The evidence is built
  the same way: the item, the user's history (their train rows, then the items they clicked in
  this policy's run, so a click can change it), the item's source and blended score (what the
  service logs with a shown item), and the item-weight attribution of a source that has one
  (EASE, ItemKNN); other sources get the most similar history items, as the service's
  content and popular items do.
- **Pregenerated.** A second explanation cache per policy is filled before each round with
  :func:`~recloop.generative.budget.pregenerate`, off the request path, from the slates a
  batch job would have precomputed for that round's users: each user's slate under the arm the
  policy is then most likely to play in their segment, from their history as it stands. The
  job is told who comes next (an upper bound for a job that must guess); a static policy's
  precomputed slates are exactly what it shows, so only a bandit exploring another arm (other
  items or blended scores) misses. Policies without named arms are not pregenerated for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.engine.simulator import ArmPolicy
from recloop.errors import ConfigError
from recloop.generative.budget import ExplanationCache, MemoryCache, pregenerate
from recloop.generative.evidence import (
    Attribution,
    Evidence,
    ItemFacts,
    build_evidence,
    catalog_facts,
    model_attribution,
    model_semantic_ids,
)
from recloop.generative.explain import Explainer
from recloop.generative.faithfulness import FaithfulnessChecker, Verdict
from recloop.generative.llm import TemplateGenerator
from recloop.store.cache import user_scope

if TYPE_CHECKING:
    from recloop.data.types import Catalog, Interactions
    from recloop.engine.simulator import Decisions, Policy, Setup, Simulator

__all__ = ["CacheAccounting", "CacheRates"]

MAX_HISTORY = 200  # history items the evidence looks at, as the explanation route does
MAX_ENTRIES = 10_000_000  # per cache: nothing is evicted in a run of the simulator's size


@dataclass(frozen=True)
class CacheRates:
    """One policy's cache lookups over a run.

    ``explanations`` is the number of shown items explained: one lookup in the cold cache and
    one in the pregenerated cache each. ``pregenerated`` counts the explanations generated off
    the request path; ``distinct_explanations`` the entries the cold cache stored.
    """

    slates: int
    candidate_hits: int
    explanations: int = 0
    explanation_hits: int = 0
    pregenerated_hits: int = 0
    pregenerated: int = 0
    distinct_explanations: int = 0
    precomputed: bool = False  # whether the policy's slates could be precomputed at all

    @property
    def candidate_hit_rate(self) -> float:
        return self.candidate_hits / self.slates if self.slates else 0.0

    @property
    def explanation_hit_rate(self) -> float:
        """Cold: hits / lookups with only what earlier requests left in the cache."""
        return self.explanation_hits / self.explanations if self.explanations else 0.0

    @property
    def pregenerated_hit_rate(self) -> float:
        """Hits / lookups when every round's precomputed slates were pregenerated first."""
        return self.pregenerated_hits / self.explanations if self.explanations else 0.0

    def to_dict(
        self, *, explanations: bool = True, pregenerated: bool = True
    ) -> dict[str, float | int | bool]:
        """Plain values; ``explanations``/``pregenerated`` False leave out what was not
        counted."""
        out: dict[str, float | int | bool] = {
            "slates": self.slates,
            "candidate_hits": self.candidate_hits,
            "candidate_hit_rate": self.candidate_hit_rate,
        }
        if explanations:
            out |= {
                "explanations": self.explanations,
                "explanation_hits": self.explanation_hits,
                "explanation_hit_rate": self.explanation_hit_rate,
                "distinct_explanations": self.distinct_explanations,
            }
        if explanations and pregenerated:
            out |= {
                "pregenerated_hits": self.pregenerated_hits,
                "pregenerated_hit_rate": self.pregenerated_hit_rate,
                "pregenerated": self.pregenerated,
                "precomputed": self.precomputed,
            }
        return out


@dataclass
class _World:
    """One policy's view of the service: its users' history versions and its caches."""

    version: np.ndarray  # per user, the number of clicks so far (the history's fingerprint)
    cached: np.ndarray  # per user, the version the candidate cache holds (−1: none)
    cold: ExplanationCache
    warm: ExplanationCache
    clicked: dict[int, list[str]] = field(default_factory=dict)
    evidence: dict[int, tuple[int, dict[tuple[int, str, float | None], Evidence]]] = field(
        default_factory=dict
    )
    slates: int = 0
    candidate_hits: int = 0
    explanations: int = 0
    explanation_hits: int = 0
    pregenerated_hits: int = 0
    pregenerated: int = 0
    precomputed: bool = False


class _RememberingChecker(FaithfulnessChecker):
    """The catalogue checker, remembering its verdicts: a policy's cold and pregenerated
    caches make the same template text from the same evidence, and checking is most of the
    cost of a miss. The verdicts are the checker's own (it is deterministic)."""

    def __init__(self, inner: FaithfulnessChecker) -> None:
        super().__init__(inner.vocabulary, flag_unknown_names=inner.flag_unknown_names)
        self._verdicts: dict[tuple[str, Evidence], Verdict] = {}

    def check(self, text: str, evidence: Evidence | Mapping[str, Any]) -> Verdict:
        if not isinstance(evidence, Evidence):
            return super().check(text, evidence)
        found = self._verdicts.get((text, evidence))
        if found is None:
            found = super().check(text, evidence)
            self._verdicts[(text, evidence)] = found
        return found

    def forget(self) -> None:
        self._verdicts.clear()


class CacheAccounting:
    """Counts candidate- and explanation-cache hits per policy during a simulator run.

    ``train`` gives each user's observed history (and the external user and item ids the
    cache keys and evidence use), ``sources`` the fitted candidate models (for the evidence's
    attribution), ``catalog`` the item facts; without a catalog only the candidate cache is
    counted. ``pregenerated=False`` skips the pregenerated cache.
    One accounting serves one run at a time; :meth:`start` clears it.
    """

    def __init__(
        self,
        train: Interactions,
        sources: Mapping[str, Any],
        catalog: Catalog | None = None,
        *,
        pregenerated: bool = True,
        max_history: int = MAX_HISTORY,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if max_history < 1 or max_entries < 1:
            raise ConfigError("max_history and max_entries must be at least 1")
        self.user_ids = train.users.ids()
        self.item_ids = train.items.ids()
        indptr, items = train.histories()
        self.histories = [
            tuple(self.item_ids[int(i)] for i in items[indptr[u] : indptr[u + 1]])
            for u in range(len(indptr) - 1)
        ]
        self.explanations = catalog is not None
        self.pregenerated = pregenerated and self.explanations
        self.max_history = max_history
        self.max_entries = max_entries
        self.facts: dict[str, ItemFacts] = catalog_facts(catalog) if catalog is not None else {}
        missing = [i for i in self.item_ids if i not in self.facts] if self.explanations else []
        if missing:
            raise ConfigError(
                f"the catalogue lacks {len(missing)} of the train items (e.g. {missing[0]!r})"
            )
        self.checker = (
            _RememberingChecker(FaithfulnessChecker.from_items(self.facts.values()))
            if self.explanations
            else None
        )
        self.attribution: dict[str, Attribution] = {}
        self.semantic_ids: Callable[[str], tuple[int, ...] | None] | None = None
        for name, src in sources.items():
            if not callable(getattr(src, "recommend", None)):
                continue  # a plain callable source has nothing to attribute
            found = model_attribution(src, train.items)
            if found is not None and found.method == "item_weights":
                self.attribution[name] = found
            if self.semantic_ids is None:
                self.semantic_ids = model_semantic_ids(src, train.items)
        self._worlds: dict[str, _World] = {}

    @classmethod
    def for_setup(cls, setup: Setup, **options: Any) -> CacheAccounting:
        """The accounting of a ready-made set-up (its catalogue, sources and train rows)."""
        return cls(setup.train, setup.sources, setup.catalog, **options)

    # -- the observer ----------------------------------------------------------------------
    def start(self, policies: Mapping[str, Policy], simulator: Simulator) -> None:
        n_users = simulator.population.n_users
        if n_users != len(self.user_ids):
            raise ConfigError(f"the accounting has {len(self.user_ids)} users, the run {n_users}")
        if self.explanations and simulator.population.n_items > len(self.item_ids):
            raise ConfigError(
                f"the population has {simulator.population.n_items} items, the train id map "
                f"{len(self.item_ids)}: explanations need an id for every item"
            )
        self._worlds = {
            name: _World(
                version=np.zeros(n_users, dtype=np.int64),
                cached=np.full(n_users, -1, dtype=np.int64),
                cold=self._cache(),
                warm=self._cache(),
            )
            for name in policies
        }

    def before_choose(
        self, name: str, policy: Policy, round: int, users: np.ndarray, simulator: Simulator
    ) -> None:
        """Pregenerate the explanations of this round's precomputed slates."""
        if not self.pregenerated or not isinstance(policy, ArmPolicy):
            return
        world = self._worlds[name]
        world.precomputed = True
        segments = simulator.population.segments
        likeliest: dict[str, int] = {}
        for user in users.tolist():
            segment = str(segments[user])
            if segment not in likeliest:
                likeliest[segment] = int(np.argmax(policy.probabilities(segment)))
            weights = policy.arms[likeliest[segment]]
            items, sources = simulator.slate(user, weights)
            scores = simulator.slate_scores(user, weights)
            slate = [
                self._evidence(world, user, int(item), sources[pos], float(scores[pos]))
                for pos, item in enumerate(items.tolist())
                if item >= 0
            ]
            report = pregenerate([slate], self._explainer(world.warm, user))
            world.pregenerated += report.generated

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
        """Count this round's lookups, then let the clicks change the users' histories."""
        world = self._worlds[name]
        world.slates += len(users)
        world.candidate_hits += int((world.cached[users] == world.version[users]).sum())
        world.cached[users] = world.version[users]
        if self.explanations:
            for row, user in enumerate(users.tolist()):
                self._explain_slate(world, policy, user, decisions, row, simulator)
            assert self.checker is not None
            self.checker.forget()  # the verdicts are shared within one policy's round only
        for row in np.flatnonzero(clicks.any(axis=1)).tolist():
            user = int(users[row])
            world.version[user] += int(clicks[row].sum())
            shown = decisions.items[row][clicks[row]]
            world.clicked.setdefault(user, []).extend(self.item_ids[int(i)] for i in shown)

    # -- results ---------------------------------------------------------------------------
    def rates(self) -> dict[str, CacheRates]:
        """Per policy of the last run, its lookups and hits."""
        return {
            name: CacheRates(
                slates=w.slates,
                candidate_hits=w.candidate_hits,
                explanations=w.explanations,
                explanation_hits=w.explanation_hits,
                pregenerated_hits=w.pregenerated_hits,
                pregenerated=w.pregenerated,
                distinct_explanations=w.cold.stores,
                precomputed=w.precomputed,
            )
            for name, w in self._worlds.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: what was simulated and each policy's rates."""
        simulated = {
            "candidates": "one lookup per slate; a hit when the policy showed the user a slate "
            "before and the user has not clicked since (the service's key holds the history's "
            "length and last event); the candidates themselves never change in the simulator",
        }
        if self.explanations:
            simulated |= {
                "explanations": "every shown item explained by the template Explainer through "
                "a content-hash ExplanationCache per policy, keys scoped to the user; evidence "
                "from the train history plus the items clicked in the run, the item's source "
                "and blended score, item-weight attribution for "
                + (", ".join(sorted(self.attribution)) or "no source"),
                "pregenerated": (
                    "before each round, pregenerate() filled a second cache with the "
                    "explanations of the round's users' slates under the arm the policy was "
                    "then most likely to play in their segment (the job knows who comes next)"
                    if self.pregenerated
                    else "off"
                ),
            }
        return {
            "simulated": simulated,
            "policies": {
                name: r.to_dict(explanations=self.explanations, pregenerated=self.pregenerated)
                for name, r in self.rates().items()
            },
        }

    # -- steps -----------------------------------------------------------------------------
    def _cache(self) -> ExplanationCache:
        # no TTL: the simulator has no clock
        return ExplanationCache(MemoryCache(max_entries=self.max_entries), ttl_s=None)

    def _explainer(self, cache: ExplanationCache, user: int) -> Explainer:
        assert self.checker is not None
        return Explainer(
            TemplateGenerator(), self.checker, cache=cache, scope=user_scope(self.user_ids[user])
        )

    def _explain_slate(
        self,
        world: _World,
        policy: Policy,
        user: int,
        decisions: Decisions,
        row: int,
        simulator: Simulator,
    ) -> None:
        items = decisions.items[row]
        scores: np.ndarray | None = None
        if isinstance(policy, ArmPolicy):  # the blended scores of the arm that built the slate
            weights = policy.arms[int(decisions.arms[row])]
            if np.array_equal(simulator.slate(user, weights)[0], items):
                scores = simulator.slate_scores(user, weights)
        cold = self._explainer(world.cold, user)
        warm = self._explainer(world.warm, user) if self.pregenerated else None
        for pos, item in enumerate(items.tolist()):
            if item < 0:
                continue
            score = float(scores[pos]) if scores is not None else None
            evidence = self._evidence(world, user, item, decisions.sources[row][pos], score)
            world.explanations += 1
            world.explanation_hits += cold.explain(evidence).cached
            if warm is not None:
                world.pregenerated_hits += warm.explain(evidence).cached

    def _evidence(
        self, world: _World, user: int, item: int, source: str, score: float | None
    ) -> Evidence:
        """The evidence for ``item`` shown to ``user`` now, built once per history version."""
        version = int(world.version[user])
        held = world.evidence.get(user)
        if held is None or held[0] != version:
            held = (version, {})
            world.evidence[user] = held
        key = (item, source, score)
        found = held[1].get(key)
        if found is None:
            history = [*self.histories[user], *world.clicked.get(user, ())]
            found = build_evidence(
                self.item_ids[item],
                history,
                self.facts,
                attribution=self.attribution.get(source),
                source=source,
                score=score,
                semantic_ids=self.semantic_ids,
                max_history=self.max_history,
            )
            held[1][key] = found
        return found
