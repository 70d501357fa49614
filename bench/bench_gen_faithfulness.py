"""Faithful explanations on MovieLens-100K: the checker, the explanations shown, the cache.

    python bench/bench_gen_faithfulness.py             # all parts; the LLM on all 500
    python bench/bench_gen_faithfulness.py --llm-n 0   # without the local LLM

Recommendations: EASE (the tuned l2 of configs/ml-100k/ratio/EASE.toml) fitted on seed 0's
ratio split; 500 users drawn with seed 0, each with one item drawn from their top 5. Evidence
per item: the three history items with the largest EASE weights towards it, and what they
share with it.

1. The checker. 200 faithful texts (a third the template's, the rest paraphrases built only
   from the evidence: catalogue "Title, The" forms, lower case, quotes, years and decades)
   and 200 unfaithful ones: a faithful text plus one planted mention, the kinds mixed evenly:
   a real catalogue title outside the evidence (written as said, with its year, in the
   catalogue's form or in lower case), a genre outside it (by name or adjective), a wrong year
   (alone or after a named title), a decade no evidence item is from, a well-known person
   (ML-100K has no people: caught as an unknown capitalised name), or a studio, award,
   language or place (likewise; one variant is lower case, "it won an oscar", which the
   checker cannot see). catch_rate = share of unfaithful texts flagged, false_alarm_rate =
   share of faithful ones flagged.
2. Explanations shown (after regeneration and fallback) for the 500 recommendations with the
   template, and with SmolLM2-135M-Instruct (Q4_1 GGUF, transformers on this CPU, 2 threads,
   greedy, at most 64 new tokens) for the first ``--llm-n`` of them (all 500 by default),
   explained ``--batch`` at a time through ``Explainer.explain_many`` (prompts decoded
   together, as pregeneration does; one at a time a generation takes about 10 s on this CPU).
   raw_* rates are the LLM's first attempts, before the regeneration and fallback logic.
   hallucinated_item_rate = share of texts naming a catalogue title outside the evidence.
3. The explanation cache on a stream of repeated slates: 300 users with Zipf(1) activity
   make 3,000 requests for their top 5; after each request the user consumes one of the five
   with probability 0.3 (so their next slate and evidence may change). hit_rate = cache hits /
   lookups with a cold cache; hit_rate_pregenerated = the same stream after every user's first
   slate was pregenerated off the request path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data.split import make_split
from recloop.data.types import Queries
from recloop.datasets import movielens_100k
from recloop.generative.budget import ExplanationCache, MemoryCache, pregenerate
from recloop.generative.evidence import (
    Evidence,
    ItemFacts,
    build_evidence,
    catalog_facts,
    decade_of,
    model_attribution,
)
from recloop.generative.explain import Explainer, Explanation, render_explanation
from recloop.generative.faithfulness import FaithfulnessChecker, Verdict, title_key
from recloop.generative.llm import (
    Generation,
    GenerationRequest,
    Message,
    TemplateGenerator,
    generate_many,
)
from recloop.models import EASE, EASEConfig
from recloop.runconfig import load_run_config

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
N_EACH = 200
N_SHOWN = 500
KINDS = ("title", "genre", "year", "decade", "person", "attribute")
PEOPLE = (
    "Tom Hanks",
    "Meryl Streep",
    "Steven Spielberg",
    "Julia Roberts",
    "Denzel Washington",
    "Martin Scorsese",
    "Sigourney Weaver",
    "Harrison Ford",
    "Jodie Foster",
    "Quentin Tarantino",
    "Emma Thompson",
    "Robin Williams",
    "Michelle Pfeiffer",
    "Kevin Costner",
    "Whoopi Goldberg",
    "Al Pacino",
)
ATTRIBUTES = (
    "It won the Academy Award for Best Picture.",
    "It is a Pixar production.",
    "It was shot in New Zealand.",
    "It is in French with subtitles.",
    "Like most Miramax releases, it found a cult audience.",
    "It is a Disney classic.",
    "It premiered at the Cannes festival.",
    "it won an oscar.",
)
DECADE_FORMS = ("the {d}s", "the '{dd}s", "the {word}")
DECADE_WORDS = {1930: "thirties", 1940: "forties", 1950: "fifties", 1960: "sixties"}
DECADE_WORDS |= {1970: "seventies", 1980: "eighties", 1990: "nineties"}
STREAM_USERS, STREAM_REQUESTS, CONSUME_P, SLATE = 300, 3000, 0.3, 5
COLUMNS = [
    "catch_rate",
    "false_alarm_rate",
    "shown_faithful_rate",
    "hallucinated_item_rate",
    "raw_faithful_rate",
    "raw_hallucinated_item_rate",
    "fallback_rate",
    "hit_rate",
    "hit_rate_pregenerated",
    "explanations",
]
DESCRIPTION = (
    "MovieLens-100K, EASE (tuned l2) on seed 0's ratio split; evidence = the 3 history items "
    "with the largest EASE weights towards the item. FaithfulnessChecker: 200 planted "
    "unfaithful explanations (a catalogue title, genre, year, decade, person or "
    "studio/award/language/place outside the evidence, kinds mixed evenly; catch_rate_<kind> "
    "per kind) and 200 faithful ones (template + paraphrases from the evidence only): "
    "catch_rate and false_alarm_rate. Explainer rows: explanations shown after regeneration "
    "and template fallback for the same 500 recommendations with the template and with "
    "SmolLM2-135M-Instruct (Q4_1 GGUF, transformers on this CPU, 2 threads, greedy, <= 64 new "
    "tokens, 16 prompts decoded together as pregeneration does; 'explanations' says how "
    "many): shown_faithful_rate, hallucinated_item_rate (text names a catalogue title outside "
    "the evidence), fallback_rate, raw_* = the LLM's first attempts before any fallback, "
    "s_per_explanation. ExplanationCache: content-hash cache on a stream of 3,000 slate "
    "requests (300 Zipf-active users, top 5, 30% consume an item between requests): hit_rate "
    "cold, hit_rate_pregenerated after pregenerating each user's first slate."
)


@dataclass
class Setup:
    facts: dict[str, ItemFacts]
    checker: FaithfulnessChecker
    model: EASE
    attribution: Any
    items: Any
    histories: list[list[int]]  # per user index, train items in time order
    l2: float


def setup() -> Setup:
    dataset = movielens_100k()
    assert dataset.catalog is not None
    split = make_split(dataset.interactions, "ratio", seed=SEED)
    config = ROOT / "configs" / "ml-100k" / "ratio" / "EASE.toml"
    l2 = float(load_run_config(config).model.config["l2"]) if config.is_file() else 300.0
    model = EASE(EASEConfig(l2=l2)).fit(split)
    facts = catalog_facts(dataset.catalog)
    indptr, flat = split.train.histories()
    histories = [flat[indptr[u] : indptr[u + 1]].tolist() for u in range(len(indptr) - 1)]
    items = dataset.interactions.items
    return Setup(
        facts=facts,
        checker=FaithfulnessChecker.from_items(facts.values()),
        model=model,
        attribution=model_attribution(model, items),
        items=items,
        histories=histories,
        l2=l2,
    )


def top_items(s: Setup, history: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = Queries.from_lists([-1], [list(history)])
    items, scores = s.model.recommend(queries, k)
    return items[0], scores[0]


def evidence_of(s: Setup, history: Sequence[int], item: int, score: float) -> Evidence:
    return build_evidence(
        s.items.id_of(int(item)),
        s.items.ids(list(history)),
        s.facts,
        attribution=s.attribution,
        source="EASE",
        score=score,
    )


def sample_evidence(s: Setup, rng: np.random.Generator) -> list[Evidence]:
    """500 users (seeded), each with one of their top-5 items."""
    users = [u for u in range(len(s.histories)) if s.histories[u]]
    chosen = rng.choice(users, size=N_SHOWN, replace=False)
    out = []
    for user in chosen:
        items, scores = top_items(s, s.histories[user], 5)
        rank = int(rng.integers(0, 5))
        out.append(evidence_of(s, s.histories[user], items[rank], float(scores[rank])))
    return out


# ---------------------------------------------------------------------------- part 1
def faithful_text(ev: Evidence, rng: np.random.Generator, template: bool) -> str:
    """The template's text, or a paraphrase that names only what the evidence holds."""
    if template or not ev.drivers:
        return render_explanation(ev)
    item, d = ev.item, ev.drivers[0].item
    shared = ev.drivers[0].shared_genres
    options: list[Callable[[], str]] = [
        lambda: f"If you liked {d.display}, you may also enjoy {item.name}.",
        lambda: f"Since {d.title} ({d.year}) is in your history, {item.title} should suit you.",
        lambda: f"because you watched {d.name.lower()}, try {item.name.lower()}.",
        lambda: f"Viewers who enjoyed “{d.name}” often go on to watch {item.name}.",
        lambda: (
            f"{item.display}: recommended by {ev.source} (score {ev.score:.2f}) "
            f"because of {d.name}."
        ),
    ]
    if len(ev.drivers) > 1:
        d2 = ev.drivers[1].item
        options.append(lambda: f"You watched {d.name} and {d2.name}, so we picked {item.display}.")
    if shared:
        options.append(
            lambda: (
                f"{item.name} has a lot in common with {d.name}: both are "
                f"{shared[0].lower()} titles."
            )
        )
        if item.year is not None:
            options.append(
                lambda: (
                    f"Another {shared[0].lower()} pick from the {decade_of(item.year or 0)}s: "
                    f"{item.name}, close to {d.name} in your history."
                )
            )
    if item.genres and d.year is not None and item.year is not None:
        options.append(
            lambda: (
                f"Fans of {d.name} ({d.year}) tend to like {item.name} ({item.year}) as "
                f"well; it is a {item.genres[0].lower()} title."
            )
        )
    return options[int(rng.integers(len(options)))]()


def plant(ev: Evidence, text: str, kind: str, s: Setup, rng: np.random.Generator) -> str:
    """``text`` with one mention of ``kind`` that the evidence does not support."""
    names = {title_key(f.title) for f in ev.items}
    years = {f.year for f in ev.items if f.year is not None}
    genres = {g for f in ev.items for g in f.genres}
    anchor = ev.drivers[0].item.name if ev.drivers else ev.item.name
    if kind == "title":
        pool = [f for f in s.facts.values() if f.title and title_key(f.title) not in names]
        other = pool[int(rng.integers(len(pool)))]
        form = rng.choice(["said", "said", "year", "catalogue", "lower"])
        written = {
            "said": other.name,
            "year": other.display,
            "catalogue": f"{other.title} ({other.year})" if other.year else other.title,
            "lower": other.name.lower(),
        }[str(form)]
        sentence = rng.choice(
            [f" Fans of {written} liked it too.", f" It is a lot like {written}."]
        )
        return text + str(sentence)
    if kind == "genre":
        every = sorted({g for f in s.facts.values() for g in f.genres} - genres)
        genre = every[int(rng.integers(len(every)))]
        adjectives = {"Animation": "animated", "Romance": "romantic", "Sci-Fi": "science fiction"}
        written = str(rng.choice([genre, genre.lower(), adjectives.get(genre, genre.lower())]))
        return text + f" It is also a {written} film."
    if kind == "year":
        year = int(rng.choice([y for y in range(1930, 1999) if y not in years]))
        bound = f"({ev.drivers[0].item.year})" if ev.drivers else ""
        if bound and bound in text and rng.random() < 0.5:
            return text.replace(bound, f"({year})", 1)
        return text + f" It came out in {year}."
    if kind == "decade":
        decades = [d for d in range(1930, 2000, 10) if d not in {decade_of(y) for y in years}]
        decade = int(rng.choice(decades))
        form = str(rng.choice(DECADE_FORMS))
        written = form.format(d=decade, dd=str(decade)[2:], word=DECADE_WORDS[decade])
        return text + f" It is a classic from {written}."
    if kind == "person":
        person = str(rng.choice(PEOPLE))
        sentence = rng.choice(
            [
                f" It stars {person}.",
                f" Like {anchor}, it features {person}.",
                f" {person} made it.",
            ]
        )
        return text + str(sentence)
    return text + " " + str(rng.choice(ATTRIBUTES))


def checker_part(s: Setup, evidence: list[Evidence], rng: np.random.Generator) -> BenchRecord:
    faithful = [faithful_text(ev, rng, template=i % 3 == 0) for i, ev in enumerate(evidence)]
    kinds = np.resize(np.array(KINDS), N_EACH)
    rng.shuffle(kinds)
    planted = [
        (str(kind), plant(ev, faithful_text(ev, rng, template=i % 3 == 1), str(kind), s, rng))
        for i, (ev, kind) in enumerate(zip(evidence, kinds, strict=True))
    ]
    false_alarms = [
        (text, s.checker.check(text, ev)) for ev, text in zip(evidence, faithful, strict=True)
    ]
    false_alarms = [(t, v) for t, v in false_alarms if not v.faithful]
    caught: dict[str, list[bool]] = {k: [] for k in KINDS}
    missed = []
    for ev, (kind, text) in zip(evidence, planted, strict=True):
        flagged = not s.checker.check(text, ev).faithful
        caught[kind].append(flagged)
        if not flagged:
            missed.append((kind, text))
    catch = sum(sum(v) for v in caught.values()) / N_EACH
    print(
        f"checker: caught {catch:.1%} of {N_EACH} planted, false alarms "
        f"{len(false_alarms) / N_EACH:.1%} of {N_EACH} faithful"
    )
    for kind, text in missed[:8]:
        print(f"  missed ({kind}): {text}")
    for text, verdict in false_alarms[:8]:
        print(f"  false alarm: {text}  [{verdict.summary()}]")
    metrics = {
        "catch_rate": catch,
        "false_alarm_rate": len(false_alarms) / N_EACH,
        **{f"catch_rate_{k}": float(np.mean(v)) for k, v in caught.items()},
        "planted": N_EACH,
        "faithful": N_EACH,
    }
    return record("FaithfulnessChecker", metrics, s, {"texts": 2 * N_EACH})


# ---------------------------------------------------------------------------- part 2
class Recording:
    """Passes requests to a generator and keeps the first text it produced per evidence."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.hosted = inner.hosted
        self.model = getattr(inner, "model", inner.name)
        self.first: dict[str, str] = {}

    def _keep(self, request: GenerationRequest, generation: Generation) -> Generation:
        self.first.setdefault(evidence_key(request.evidence), generation.text)
        return generation

    def generate(self, request: GenerationRequest) -> Generation:
        return self._keep(request, self.inner.generate(request))

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        generations = generate_many(self.inner, requests)
        return [self._keep(r, g) for r, g in zip(requests, generations, strict=True)]

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        return list(self.inner.score(messages, continuations))


def evidence_key(evidence: Any) -> str:
    return json.dumps(evidence, sort_keys=True, default=str)


def names_other_item(verdict: Verdict) -> bool:
    return any(m.kind == "title" for m in verdict.unsupported)


def shown_part(
    s: Setup, evidence: list[Evidence], generator: Any, label: str, chunk: int = 1
) -> BenchRecord:
    """Explain every item; ``chunk`` > 1 sends that many at a time through explain_many."""
    recording = Recording(generator)
    explainer = Explainer(recording, s.checker, max_attempts=2, max_tokens=64)
    results: list[Explanation] = []
    started = time.perf_counter()
    for lo in range(0, len(evidence), chunk):
        part = evidence[lo : lo + chunk]
        if chunk == 1:
            results.append(explainer.explain(part[0], consent=True))
        else:
            results.extend(explainer.explain_many(part, consent=True))
            done = len(results)
            print(f"  [{label}] {done}/{len(evidence)} in {time.perf_counter() - started:.0f} s")
    seconds = time.perf_counter() - started
    shown, raw = [], []
    for n, (ev, result) in enumerate(zip(evidence, results, strict=True), start=1):
        verdict = s.checker.check(result.text, ev)  # re-checked here, not taken on trust
        shown.append((result, verdict))
        first = recording.first.get(evidence_key(ev.to_dict()))
        if first is not None:
            raw.append(s.checker.check(first, ev))
            if n <= 5 or n % 25 == 0:
                print(f"  [{label} {n}] raw: {first!r}\n      shown: {result.text!r}")
    n = len(shown)
    metrics = {
        "shown_faithful_rate": sum(v.faithful for _, v in shown) / n,
        "hallucinated_item_rate": sum(names_other_item(v) for _, v in shown) / n,
        "fallback_rate": sum(r.fallback_used for r, _ in shown) / n,
        "explanations": n,
        "s_per_explanation": seconds / n,
    }
    if raw:
        metrics |= {
            "raw_faithful_rate": sum(v.faithful for v in raw) / len(raw),
            "raw_hallucinated_item_rate": sum(names_other_item(v) for v in raw) / len(raw),
            "regenerated_rate": sum(r.attempt_faithful == (False, True) for r, _ in shown) / n,
            "mean_attempts": sum(r.attempts for r, _ in shown) / n,
        }
    print(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    config = {"max_attempts": 2, "max_tokens": 64, "backend": generator.name, "batch": chunk}
    return record(f"Explainer[{label}]", metrics, s, config)


# ---------------------------------------------------------------------------- part 3
def stream(s: Setup, explainer: Explainer, rng: np.random.Generator, users: np.ndarray) -> int:
    """Replay the request stream; returns the number of explanations served."""
    histories = {int(u): list(s.histories[u]) for u in users}
    weights = 1.0 / np.arange(1, len(users) + 1)
    weights /= weights.sum()
    served = 0
    for _ in range(STREAM_REQUESTS):
        user = int(users[rng.choice(len(users), p=weights)])
        items, scores = top_items(s, histories[user], SLATE)
        for item, score in zip(items, scores, strict=True):
            explainer.explain(evidence_of(s, histories[user], int(item), float(score)))
            served += 1
        if rng.random() < CONSUME_P:
            histories[user].append(int(items[int(rng.integers(SLATE))]))
    return served


def cache_part(s: Setup) -> BenchRecord:
    rng = np.random.default_rng(SEED)
    users = rng.choice([u for u in range(len(s.histories)) if s.histories[u]], STREAM_USERS, False)
    cold = ExplanationCache(MemoryCache(max_entries=100_000))
    served = stream(
        s, Explainer(TemplateGenerator(), s.checker, cache=cold), np.random.default_rng(1), users
    )
    warm = ExplanationCache(MemoryCache(max_entries=100_000))
    explainer = Explainer(TemplateGenerator(), s.checker, cache=warm)
    first = []
    for u in users:
        items, scores = top_items(s, s.histories[u], SLATE)
        first.append(
            [
                evidence_of(s, s.histories[u], int(i), float(v))
                for i, v in zip(items, scores, strict=True)
            ]
        )
    report = pregenerate(first, explainer)
    warm.reset_counters()
    stream(s, explainer, np.random.default_rng(1), users)
    metrics = {
        "hit_rate": cold.hit_rate,
        "hit_rate_pregenerated": warm.hit_rate,
        "requests": STREAM_REQUESTS,
        "explanations": served,
        "distinct_explanations": cold.stores,
        "pregenerated": report.generated,
    }
    print("cache: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return record("ExplanationCache", metrics, s, {"users": STREAM_USERS, "consume_p": CONSUME_P})


def record(name: str, metrics: dict[str, float], s: Setup, config: dict[str, Any]) -> BenchRecord:
    return make_record(
        dataset="ml-100k",
        protocol="ratio",
        seed=SEED,
        model=name,
        metrics=metrics,
        config={"recommender": "EASE", "l2": round(s.l2, 3), **config},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm-n", type=int, default=N_SHOWN, help="items the LLM explains")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the LLM")
    parser.add_argument("--batch", type=int, default=16, help="items the LLM explains at once")
    args = parser.parse_args()
    began = time.perf_counter()
    s = setup()
    evidence = sample_evidence(s, np.random.default_rng(SEED))
    records = [checker_part(s, evidence[:N_EACH], np.random.default_rng(SEED + 1))]
    records.append(shown_part(s, evidence, TemplateGenerator(), "template"))
    if args.llm_n > 0:
        from recloop.generative.local import TransformersLLM, smollm2_path

        llm = TransformersLLM(
            smollm2_path(), threads=args.threads, max_new_tokens=64, batch_size=args.batch
        ).load()
        print(f"SmolLM2 loaded in {llm.load_seconds:.0f} s")
        records.append(
            shown_part(s, evidence[: args.llm_n], llm, "SmolLM2-135M", chunk=4 * args.batch)
        )
    records.append(cache_part(s))
    command = "python bench/bench_gen_faithfulness.py"
    if args.llm_n != N_SHOWN:
        command += f" --llm-n {args.llm_n}"
    path = write_results(
        "gen_faithfulness",
        records,
        title="Explanations: faithfulness checker, explanations shown, cache hit rate",
        command=command,
        description=DESCRIPTION,
        columns=COLUMNS,
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
