"""Cost control: the content-hash cache, budgets, the generation policy, pregeneration."""

from __future__ import annotations

import time

import pytest

from recloop.errors import ConfigError
from recloop.generative.budget import (
    Budget,
    ExplainSettings,
    ExplanationCache,
    GenerationPolicy,
    MemoryCache,
    pregenerate,
)
from recloop.generative.evidence import Attribution, ItemFacts, build_evidence
from recloop.generative.explain import Explainer
from recloop.generative.faithfulness import FaithfulnessChecker
from recloop.generative.llm import TemplateGenerator
from recloop.store.cache import InProcessCache

FACTS = {
    "a": ItemFacts("a", "Toy Story", 1995, ("Animation", "Comedy")),
    "b": ItemFacts("b", "Aladdin", 1992, ("Animation", "Comedy")),
    "c": ItemFacts("c", "Heat", 1995, ("Action", "Crime")),
}
CHECKER = FaithfulnessChecker.from_items(FACTS.values())
EVERY = Attribution("item_weights", lambda history, item: [1.0] * len(history))


def evidence(item: str, history: list[str]):  # type: ignore[no-untyped-def]
    return build_evidence(item, history, FACTS, attribution=EVERY, source="EASE")


def test_cache_key_is_a_content_hash_of_evidence_backend_model_and_prompt() -> None:
    cache = ExplanationCache()
    key = cache.key(evidence("a", ["b"]), "transformers", "smollm2", "v1")
    assert key.startswith("explanation:") and len(key) == len("explanation:") + 64
    assert key == cache.key(evidence("a", ["b"]), "transformers", "smollm2", "v1")
    assert key != cache.key(evidence("a", ["c"]), "transformers", "smollm2", "v1")
    assert key != cache.key(evidence("a", ["b"]), "openai", "smollm2", "v1")
    assert key != cache.key(evidence("a", ["b"]), "transformers", "other", "v1")
    assert key != cache.key(evidence("a", ["b"]), "transformers", "smollm2", "v2")


def test_cache_counts_hits_and_misses_on_the_service_cache() -> None:
    cache = ExplanationCache(InProcessCache(), ttl_s=60)
    assert cache.get("k") is None
    cache.put("k", {"text": "hello"})
    assert cache.get("k") == {"text": "hello"}
    assert (cache.hits, cache.misses, cache.stores) == (1, 1, 1) and cache.hit_rate == 0.5
    cache.backend.set("broken", b"not json")
    assert cache.get("broken") is None and cache.misses == 2
    cache.reset_counters()
    assert cache.lookups == 0 and cache.hit_rate == 0.0


def test_memory_cache_is_a_bounded_lru_with_ttl() -> None:
    memory = MemoryCache(max_entries=2)
    memory.set("a", b"1")
    memory.set("b", b"2")
    memory.get("a")
    memory.set("c", b"3")  # evicts b, the least recently used
    assert memory.get("b") is None and memory.get("a") == b"1" and len(memory) == 2
    memory.set("short", b"x", ttl=0.01)
    time.sleep(0.02)
    assert memory.get("short") is None
    with pytest.raises(ConfigError):
        MemoryCache(max_entries=0)


def test_budget_gives_what_is_left_and_refuses_when_spent() -> None:
    budget = Budget(time_s=5.0, tokens=200)
    timeout, tokens = budget.limits(max_tokens=96, prompt_tokens=50) or (None, 0)
    assert timeout is not None and 4.0 < timeout <= 5.0 and tokens == 96
    budget.charge(120)
    assert budget.limits(max_tokens=96, prompt_tokens=50) == pytest.approx(
        (budget.time_left(), 30), abs=0.05
    )
    assert budget.limits(max_tokens=96, prompt_tokens=70) is None  # 10 < 16 completion tokens
    budget.charge(100)
    assert budget.spent
    late = Budget(time_s=0.01)
    time.sleep(0.02)
    assert late.spent and late.limits(96, 10) is None
    assert Budget().limits(96, 10_000) == (None, 96)  # unlimited
    with pytest.raises(ConfigError, match="time_s"):
        Budget(time_s=0)
    with pytest.raises(ConfigError, match="tokens"):
        Budget(tokens=0)


def test_policy_reserves_the_model_for_new_users_and_gap_segments() -> None:
    policy = GenerationPolicy("targeted", new_user_events=10, gap_segments=frozenset({"s3"}))
    assert policy.decide(n_events=2).use_llm
    assert not policy.decide(n_events=50, segment="s1").use_llm
    decision = policy.decide(n_events=50, segment="s3")
    assert decision.use_llm and "s3" in decision.reason
    assert GenerationPolicy("everyone").decide(n_events=1000).use_llm
    assert not GenerationPolicy("nobody").decide(n_events=0).use_llm
    with pytest.raises(ConfigError, match="mode"):
        GenerationPolicy("some")  # type: ignore[arg-type]


def test_settings_from_the_environment_name_the_variable_at_fault() -> None:
    env = {
        "RECLOOP_EXPLAIN_POLICY": "targeted",
        "RECLOOP_EXPLAIN_NEW_USER_EVENTS": "5",
        "RECLOOP_EXPLAIN_GAP_SEGMENTS": "s1, s2,",
        "RECLOOP_EXPLAIN_TIME_S": "2.5",
        "RECLOOP_EXPLAIN_TOKENS": "0",
    }
    settings = ExplainSettings.from_env(env)
    assert settings.policy == GenerationPolicy("targeted", 5, frozenset({"s1", "s2"}))
    assert settings.time_s == 2.5 and settings.tokens is None
    assert settings.budget().time_s == 2.5
    assert ExplainSettings.from_env({}) == ExplainSettings()
    with pytest.raises(ConfigError, match="RECLOOP_EXPLAIN_POLICY"):
        ExplainSettings.from_env({"RECLOOP_EXPLAIN_POLICY": "all"})
    with pytest.raises(ConfigError, match="RECLOOP_EXPLAIN_TIME_S"):
        ExplainSettings.from_env({"RECLOOP_EXPLAIN_TIME_S": "soon"})
    with pytest.raises(ConfigError, match="RECLOOP_EXPLAIN_NEW_USER_EVENTS"):
        ExplainSettings.from_env({"RECLOOP_EXPLAIN_NEW_USER_EVENTS": "-1"})


def test_pregenerate_fills_the_cache_off_the_request_path() -> None:
    cache = ExplanationCache()
    explainer = Explainer(TemplateGenerator(), CHECKER, cache=cache)
    slates = [[evidence("a", ["b"]), evidence("c", ["b"])], [evidence("a", ["b"])]]
    report = pregenerate(slates, explainer)
    assert (report.slates, report.items, report.generated, report.already_cached) == (2, 3, 2, 1)
    cache.reset_counters()
    served = explainer.explain(evidence("c", ["b"]))
    assert served.cached and cache.hits == 1
    with pytest.raises(ConfigError, match="cache"):
        pregenerate(slates, Explainer(TemplateGenerator(), CHECKER))


def test_pregenerate_sends_a_local_model_batches_of_distinct_items() -> None:
    from .test_explain import BatchLLM

    toy = "Because you watched Aladdin, you may like Toy Story: both are animated comedies."
    heat = "Because you watched Aladdin, you may like Heat."
    llm = BatchLLM({"a": [toy], "c": [heat]})
    explainer = Explainer(llm, CHECKER, cache=ExplanationCache())
    slates = [[evidence("a", ["b"]), evidence("c", ["b"])], [evidence("a", ["b"])]]
    report = pregenerate(slates, explainer, chunk=8)
    # one batch of the two distinct items; the repeated one comes from the first's result
    assert llm.batches == [2]
    assert (report.items, report.generated, report.already_cached) == (3, 2, 1)
    assert pregenerate(slates, explainer).already_cached == 3 and llm.batches == [2]
    with pytest.raises(ConfigError, match="chunk"):
        pregenerate(slates, explainer, chunk=0)
