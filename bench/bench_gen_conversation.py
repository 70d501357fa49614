"""Conversational recommendation on MovieLens-100K: templated requests with known answers.

python bench/bench_gen_conversation.py     # writes bench/results/gen_conversation.json

32 request templates ("a {decade} {genre} movie", "something like {title}", ...) are filled
in from MovieLens-100K's genres, years and titles, each with the structured constraints it
asks for, so the answer set of every request is known. Half of them (DEV_TEMPLATES) were
used while the parser was written; the other half (HELD_OUT_TEMPLATES) were written at the
same time, in a separate list, and never used to tune the parser: they are reported apart.

Users are split in half at random. Group A's interactions, cut per user at 80 % of their
history in time, train the collaborative model (EASE, l2=300) and give the sampled users'
profiles; group A's last 20 % is each user's held-out future. Group B's interactions give the
similar-to ground truth: the reference item's 10 nearest neighbours by cosine co-occurrence
(users who rated both, over the square root of each item's user count), among the items that
meet the request's other constraints. So the similar-to truth never comes from the data the
model learned from.

Rows: dense retrieval alone (all-MiniLM-L6-v2 over item text in FAISS, constraints as
filters), fused with the user's EASE profile (reciprocal-rank fusion, weights 1:1:1), and with
the local SmolLM2 re-ranking the top 20 (only when ``recloop.generative.local`` exists; on a
subset, with the fused row on the same subset beside it).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data.types import Catalog, Dataset, Interactions
from recloop.datasets import movielens_100k
from recloop.generative.conversation import (
    Conversation,
    ConversationalRecommender,
    ConversationConfig,
    parse_request,
)
from recloop.generative.llm import TextGenerator
from recloop.generative.retrieval import DenseIndex, MiniLMEncoder
from recloop.models import EASE, EASEConfig

K = 10
N_INSTANCES = 4  # fillings per template
USERS_PER_REQUEST = 5
N_SAMPLED_USERS = 60
LLM_USERS_PER_REQUEST = 1
TRUTH_NEIGHBOURS = 10
COLUMNS = [
    "recall@10",
    "recall@10_similar",
    "satisfaction@10",
    "user_hit@10",
    "parse_exact",
    "fill@10",
    "requests",
]

# --------------------------------------------------------------------------- templates
# Slots: {genre} {genre2} (genre nouns), {decade} ("90s"), {decade_full} ("1990s"),
# {decade_word} ("nineties"), {year} {year2} (a year and a later one), {cutoff} (a year),
# {title} (a popular title as people write it). A template's truth says which constraints
# it asks for; slots named there are filled so that its answer set is not empty.


@dataclass(frozen=True)
class Template:
    text: str
    genres: tuple[str, ...] = ()  # slot names or fixed genres ("=Comedy")
    excluded: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    years: str | None = None  # decade, early, late, year, range, before, after, since
    similar: bool = False


DEV_TEMPLATES: list[Template] = [
    Template("a {decade} {genre} movie", genres=("genre",), years="decade"),
    Template("something like {title}", similar=True),
    Template("a {genre} film from {year}", genres=("genre",), years="year"),
    Template("{genre} but not {genre2}", genres=("genre",), excluded=("genre2",)),
    Template("I want a {genre} movie made before {cutoff}", genres=("genre",), years="before"),
    Template("show me {genre} movies released after {cutoff}", genres=("genre",), years="after"),
    Template("a movie like {title} from the {decade}", similar=True, years="decade"),
    Template("something funny from the {decade}", genres=("=Comedy",), years="decade"),
    Template("a scary movie but no {genre2}", genres=("=Horror",), excluded=("genre2",)),
    Template("a {genre} or {genre2} movie", any_of=("genre", "genre2")),
    Template("recommend a {genre} movie similar to {title}", genres=("genre",), similar=True),
    Template("{genre} from the early {decade}", genres=("genre",), years="early"),
    Template("any good {genre} films between {year} and {year2}", genres=("genre",), years="range"),
    Template("a {genre} movie that is not a {genre2}", genres=("genre",), excluded=("genre2",)),
    Template("kids movie from the {decade_full}", genres=("=Children's",), years="decade"),
    Template("something like {title} but not {genre2}", similar=True, excluded=("genre2",)),
]

# Written together with DEV_TEMPLATES and never used while developing the parser.
HELD_OUT_TEMPLATES: list[Template] = [
    Template("Could you suggest a {genre} picture from {year}?", genres=("genre",), years="year"),
    Template(
        "I'm in the mood for some {genre}, nothing {genre2} though",
        genres=("genre",),
        excluded=("genre2",),
    ),
    Template("What should I watch if I enjoyed {title}?", similar=True),
    Template("Looking for a {decade_word} {genre} flick", genres=("genre",), years="decade"),
    Template("films in the vein of {title}", similar=True),
    Template("{genre} movies from {year} to {year2}", genres=("genre",), years="range"),
    Template("Got any {genre} titles older than {cutoff}?", genres=("genre",), years="before"),
    Template("a {genre} released since {cutoff}", genres=("genre",), years="since"),
    Template("Anything {genre} except {genre2}, please", genres=("genre",), excluded=("genre2",)),
    Template("give me a late-{decade} {genre}", genres=("genre",), years="late"),
    Template(
        "Something that reminds me of {title}, but from the {decade}",
        similar=True,
        years="decade",
    ),
    Template("I need a hilarious movie from {year}", genres=("=Comedy",), years="year"),
    Template(
        "a {genre} picture without any {genre2} in it", genres=("genre",), excluded=("genre2",)
    ),
    Template("Which {genre} movies came out in {year}?", genres=("genre",), years="year"),
    Template("{genre} movies for fans of {title}", genres=("genre",), similar=True),
    Template("a frightening film made in the {decade}", genres=("=Horror",), years="decade"),
]

GENRE_NOUNS = {
    "Action": "action",
    "Adventure": "adventure",
    "Animation": "animation",
    "Children's": "children's",
    "Comedy": "comedy",
    "Crime": "crime",
    "Documentary": "documentary",
    "Drama": "drama",
    "Fantasy": "fantasy",
    "Film-Noir": "film noir",
    "Horror": "horror",
    "Musical": "musical",
    "Mystery": "mystery",
    "Romance": "romance",
    "Sci-Fi": "sci-fi",
    "Thriller": "thriller",
    "War": "war",
    "Western": "western",
}
DECADE_WORDS = {
    1930: "thirties",
    1940: "forties",
    1950: "fifties",
    1960: "sixties",
    1970: "seventies",
    1980: "eighties",
    1990: "nineties",
}


@dataclass
class Request:
    """One filled-in template: its text and the constraints it really asks for."""

    split: str
    template: int
    text: str
    genres: set[str] = field(default_factory=set)
    any_of: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    year_min: int | None = None
    year_max: int | None = None
    reference: int | None = None  # catalogue row

    def satisfied(self, item_genres: frozenset[str], year: float) -> bool:
        if not self.genres <= item_genres or item_genres & self.excluded:
            return False
        if self.any_of and not self.any_of & item_genres:
            return False
        if self.year_min is not None and not (np.isfinite(year) and year >= self.year_min):
            return False
        return self.year_max is None or bool(np.isfinite(year) and year <= self.year_max)


def spoken_title(title: str) -> str:
    """A catalogue title as a person writes it: "Silence of the Lambs, The" -> "The ..."."""
    base = re.sub(r"\s*\([^()]*\)", "", title).strip()
    match = re.match(r"^(.*), (The|A|An)$", base)
    return f"{match.group(2)} {match.group(1)}" if match else base


class Catalogue:
    """Genres, years and popularity of MovieLens items, for filling and judging templates."""

    def __init__(self, catalog: Catalog, counts: np.ndarray) -> None:
        self.catalog = catalog
        self.genres = [frozenset(g or ()) for g in catalog.attributes["genres"]]
        self.years = np.array(
            [np.nan if y is None else float(y) for y in catalog.attributes["year"]]
        )
        self.counts = counts
        self.popular_rows = np.flatnonzero(counts >= 100)
        self.genre_names = sorted({g for gs in self.genres for g in gs} & set(GENRE_NOUNS))

    def satisfying(self, request: Request) -> np.ndarray:
        rows = np.array(
            [request.satisfied(g, y) for g, y in zip(self.genres, self.years, strict=True)]
        )
        if request.reference is not None:
            rows[request.reference] = False
        return rows


def fill(
    template: Template, split: str, index: int, cat: Catalogue, rng: np.random.Generator
) -> Request:
    """A filling of ``template`` whose answer set holds at least 5 items."""
    for _ in range(500):
        slots: dict[str, Any] = {}
        genre, genre2 = rng.choice(cat.genre_names, size=2, replace=False)
        slots["genre"], slots["genre2"] = GENRE_NOUNS[genre], GENRE_NOUNS[genre2]
        decade = int(rng.choice(sorted(DECADE_WORDS)))
        slots["decade"] = f"{str(decade)[2:]}s"
        slots["decade_full"] = f"{decade}s"
        slots["decade_word"] = DECADE_WORDS[decade]
        year = int(rng.integers(1950, 1998))
        slots["year"], slots["year2"] = year, min(year + int(rng.integers(2, 8)), 1998)
        cutoff = int(rng.integers(1960, 1996))
        slots["cutoff"] = cutoff
        reference = int(rng.choice(cat.popular_rows))
        slots["title"] = spoken_title(cat.catalog.title[reference])
        request = Request(split, index, template.text.format(**slots))

        def genre_of(slot: str, genre: str = genre, genre2: str = genre2) -> str:
            if slot.startswith("="):
                return slot[1:]
            return genre if slot == "genre" else genre2

        request.genres = {genre_of(s) for s in template.genres}
        request.excluded = {genre_of(s) for s in template.excluded}
        request.any_of = {genre_of(s) for s in template.any_of}
        if request.genres & request.excluded:
            continue
        bounds: dict[str | None, tuple[int | None, int | None]] = {
            None: (None, None),
            "decade": (decade, decade + 9),
            "early": (decade, decade + 3),
            "late": (decade + 6, decade + 9),
            "year": (year, year),
            "range": (year, slots["year2"]),
            "before": (None, cutoff - 1),
            "after": (cutoff + 1, None),
            "since": (cutoff, None),
        }
        request.year_min, request.year_max = bounds[template.years]
        if template.similar:
            request.reference = reference
        if cat.satisfying(request).sum() >= 5:
            return request
    raise RuntimeError(f"no filling of {template.text!r} has an answer set")


def make_requests(cat: Catalogue, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    requests: list[Request] = []
    for split, templates in (("dev", DEV_TEMPLATES), ("held-out", HELD_OUT_TEMPLATES)):
        for index, template in enumerate(templates):
            requests.extend(fill(template, split, index, cat, rng) for _ in range(N_INSTANCES))
    return requests


# ------------------------------------------------------------------------ ground truth
def cooccurrence_neighbours(data: Interactions) -> Callable[[int, np.ndarray], np.ndarray]:
    """(reference row, allowed mask) -> the reference's nearest allowed items by cosine
    co-occurrence in ``data``."""
    matrix = data.to_csr().astype(np.float64)  # users × items, binary
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    gram = (matrix.T @ matrix).tocsr()

    def neighbours(reference: int, allowed: np.ndarray) -> np.ndarray:
        row = np.asarray(gram[reference].todense()).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = row / np.sqrt(counts * max(counts[reference], 1.0))
        cosine = np.where(allowed & (row > 0) & np.isfinite(cosine), cosine, -np.inf)
        order = np.lexsort((np.arange(len(cosine)), -cosine))
        top = order[:TRUTH_NEIGHBOURS]
        return top[np.isfinite(cosine[top])]

    return neighbours


def split_users(data: Interactions, seed: int) -> tuple[Interactions, Interactions, Interactions]:
    """(A's first 80 % per user, A's last 20 %, all of B)."""
    rng = np.random.default_rng([seed, 7])
    in_a = rng.random(data.n_users) < 0.5
    rows_a = np.flatnonzero(in_a[data.user])
    order = rows_a[np.lexsort((rows_a, data.timestamp[rows_a], data.user[rows_a]))]
    users = data.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, lengths)
    cut = np.repeat(np.floor(0.8 * lengths).astype(np.int64), lengths)
    train = data.select(np.sort(order[position < cut]))
    future = data.select(np.sort(order[position >= cut]))
    return train, future, data.select(np.flatnonzero(~in_a[data.user]))


# ---------------------------------------------------------------------------- evaluating
@dataclass
class Scores:
    recall: list[float] = field(default_factory=list)
    recall_similar: list[float] = field(default_factory=list)
    recall_constraints: list[float] = field(default_factory=list)
    satisfaction: list[float] = field(default_factory=list)
    user_hit: list[float] = field(default_factory=list)
    parse_exact: list[float] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        lists = {
            "recall@10": self.recall,
            "recall@10_similar": self.recall_similar,
            "recall@10_constraints": self.recall_constraints,
            "satisfaction@10": self.satisfaction,
            "user_hit@10": self.user_hit,
            "parse_exact": self.parse_exact,
            "fill@10": self.fill,
        }
        return {
            **{name: float(np.mean(values)) for name, values in lists.items() if values},
            "requests": float(len(self.recall)),
            "user_hit_pairs": float(len(self.user_hit)),
            "ms_per_request": 1000.0 * self.seconds / max(len(self.recall), 1),
        }


def parsed_exactly(
    request: Request, recommender: ConversationalRecommender | RawDense, ids: list[str]
) -> bool:
    parsed = parse_request(request.text, recommender.vocabulary)
    reference = () if request.reference is None else (ids[request.reference],)
    return (
        set(parsed.genres) == request.genres
        and set(parsed.excluded_genres) == request.excluded
        and set(parsed.any_genres) == request.any_of
        and parsed.year_min == request.year_min
        and parsed.year_max == request.year_max
        and tuple(parsed.similar_to) == reference
    )


def evaluate(
    recommender: ConversationalRecommender | RawDense,
    requests: Sequence[Request],
    users: Sequence[tuple[str, list[str], set[int]]],
    cat: Catalogue,
    truth_neighbours: Callable[[int, np.ndarray], np.ndarray],
    per_request: int,
) -> dict[str, Scores]:
    """Scores per split ("dev", "held-out") over every (request, user) pair."""
    ids = cat.catalog.items.ids()
    row_of = {item: row for row, item in enumerate(ids)}
    out = {"dev": Scores(), "held-out": Scores()}
    for number, request in enumerate(requests):
        scores = out[request.split]
        allowed = cat.satisfying(request)
        if request.reference is not None:
            truth = set(truth_neighbours(request.reference, allowed).tolist())
        else:
            truth = set(np.flatnonzero(allowed).tolist())
        exact = parsed_exactly(request, recommender, ids)
        for offset in range(per_request):
            user_id, history, future = users[(number * per_request + offset) % len(users)]
            started = time.perf_counter()
            answer = recommender.respond(Conversation.new(user_id), request.text, history)
            scores.seconds += time.perf_counter() - started
            rows = [row_of[it.item_id] for it in answer.items[:K]]
            recall = len(truth & set(rows)) / min(K, len(truth)) if truth else 0.0
            scores.recall.append(recall)
            if request.reference is not None:
                scores.recall_similar.append(recall)
            else:
                scores.recall_constraints.append(recall)
            ok = [request.satisfied(cat.genres[r], cat.years[r]) for r in rows]
            scores.satisfaction.append(float(np.mean(ok)) if ok else 0.0)
            scores.fill.append(len(rows) / K)
            scores.parse_exact.append(float(exact))
            wanted = {r for r in future if allowed[r]}
            if request.reference is not None:
                wanted.discard(request.reference)
            if wanted:
                scores.user_hit.append(float(bool(wanted & set(rows))))
    return out


class RawDense:
    """The baseline without a parser: the whole message embedded, no filters, no profile."""

    def __init__(self, index: DenseIndex, catalog: Catalog) -> None:
        self.index = index
        self.ids = catalog.items.ids()
        self.vocabulary = ConversationalRecommender(index, catalog).vocabulary

    def respond(self, state: Conversation, text: str, history: Sequence[str]) -> Any:
        allowed = set(self.ids) - set(history)
        found = self.index.search(text, K, allowed)
        return RawAnswer([RawItem(item) for item, _ in found])


@dataclass
class RawItem:
    item_id: str


@dataclass
class RawAnswer:
    items: list[RawItem]


def local_llm() -> TextGenerator | None:
    """The local SmolLM2 through ``recloop.generative.local``, when that module exists."""
    try:
        from recloop.generative.local import (  # type: ignore[import-not-found,unused-ignore]
            TransformersLLM,
            smollm2_path,
        )
    except ImportError:
        return None
    generator: TextGenerator = TransformersLLM(smollm2_path(), batch_size=20)
    return generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-llm", action="store_true", help="leave the LLM row out")
    args = parser.parse_args()
    began = time.perf_counter()
    dataset: Dataset = movielens_100k()
    catalog = dataset.catalog
    assert catalog is not None
    data = dataset.interactions
    train, future, group_b = split_users(data, args.seed)
    cat = Catalogue(catalog, data.item_counts())
    requests = make_requests(cat, args.seed)

    started = time.perf_counter()
    index = DenseIndex.from_catalog(catalog, MiniLMEncoder(), progress=True)
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    ease = EASE(EASEConfig(l2=300.0)).fit(train)
    train_seconds = time.perf_counter() - started

    ids = catalog.items.ids()
    user_ids = data.users.ids()
    rng = np.random.default_rng([args.seed, 11])
    train_counts = np.bincount(train.user, minlength=data.n_users)
    eligible = np.flatnonzero(train_counts >= 20)
    sampled = np.sort(rng.choice(eligible, size=min(N_SAMPLED_USERS, len(eligible)), replace=False))
    indptr, items = train.histories()
    f_indptr, f_items = future.histories()
    users = [
        (
            user_ids[u],
            [ids[i] for i in items[indptr[u] : indptr[u + 1]]],
            set(f_items[f_indptr[u] : f_indptr[u + 1]].tolist()),
        )
        for u in sampled
    ]
    truth = cooccurrence_neighbours(group_b)
    base = {"n_items": K, "pool": 100, "fusion": "rrf", "rrf_k": 60.0, "rerank_top": 20}
    systems: list[tuple[str, ConversationalRecommender, dict[str, Any]]] = [
        (
            "Conversation[dense]",
            ConversationalRecommender(index, catalog, None, config=ConversationConfig(**base)),
            {**base, "encoder": "all-MiniLM-L6-v2"},
        ),
        (
            "Conversation[dense+EASE]",
            ConversationalRecommender(index, catalog, ease, config=ConversationConfig(**base)),
            {**base, "encoder": "all-MiniLM-L6-v2", "profile": "EASE(l2=300)", "weights": "1:1:1"},
        ),
    ]
    records: list[BenchRecord] = []

    def add(name: str, config: dict[str, Any], results: dict[str, Scores], note: str) -> None:
        for split, scores in results.items():
            metrics = scores.summary()
            records.append(
                make_record(
                    dataset="ml-100k",
                    protocol="all",
                    seed=args.seed,
                    model=name,
                    config={**config, "templates": split, "requests": note},
                    metrics=metrics,
                    train_seconds=train_seconds if "EASE" in name else index_seconds,
                )
            )
            print(
                f"{name:38s} {split:8s} {note:10s} "
                + " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            )

    raw = RawDense(index, catalog)
    results = evaluate(raw, requests, users, cat, truth, USERS_PER_REQUEST)
    for scores in results.values():
        scores.parse_exact = []  # no parser
    add(
        "Conversation[dense, raw message]",
        {"encoder": "all-MiniLM-L6-v2", "filters": "none"},
        results,
        "all",
    )
    for name, recommender, config in systems:
        add(
            name,
            config,
            evaluate(recommender, requests, users, cat, truth, USERS_PER_REQUEST),
            "all",
        )

    llm = None if args.no_llm else local_llm()
    if llm is None:
        print("LLM row left out: recloop.generative.local is not available (or --no-llm)")
    else:
        subset = [r for k, r in enumerate(requests) if k % N_INSTANCES == 0]
        fused = systems[1][1]
        add(
            "Conversation[dense+EASE]",
            systems[1][2],
            evaluate(fused, subset, users, cat, truth, LLM_USERS_PER_REQUEST),
            "llm-subset",
        )
        reranked = ConversationalRecommender(
            index, catalog, ease, llm, config=ConversationConfig(**base)
        )
        add(
            "Conversation[dense+EASE+SmolLM2-135M]",
            {
                **systems[1][2],
                "llm": "SmolLM2-135M-Instruct Q4_1 (transformers)",
                "llm_weight": 0.5,
            },
            evaluate(reranked, subset, users, cat, truth, LLM_USERS_PER_REQUEST),
            "llm-subset",
        )

    path = write_results(
        "gen_conversation",
        records,
        title="Conversational recommendation: templated requests on MovieLens-100K",
        command="python bench/bench_gen_conversation.py",
        description=DESCRIPTION,
        columns=COLUMNS,
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s")


DESCRIPTION = (
    f"{len(DEV_TEMPLATES) + len(HELD_OUT_TEMPLATES)} request templates filled in "
    f"{N_INSTANCES} times each from MovieLens-100K metadata (genres, years, titles of items "
    "with at least 100 ratings); config.templates says whether a row covers the "
    f"{len(DEV_TEMPLATES)} templates used while writing the parser (dev) or the "
    f"{len(HELD_OUT_TEMPLATES)} held out from it. Users are split in half at random: group A's "
    "first 80 % per user (in time) trains EASE and gives each sampled user's profile (60 "
    f"users with at least 20 such interactions, {USERS_PER_REQUEST} per request), group B "
    "gives the similar-to ground truth: the reference's 10 nearest neighbours by cosine "
    "co-occurrence among items meeting the request's other constraints. recall@10 = |top-10 "
    "∩ answer set| / min(10, |answer set|), where the answer set is every item meeting the "
    "request's constraints (so for constraint-only requests it is the share of the top 10 "
    "that qualifies, i.e. precision@10) or, for similar-to requests, those 10 neighbours; "
    "recall@10_similar and recall@10_constraints split it by kind of request. "
    "satisfaction@10 = share of the returned top 10 meeting every hard constraint (genres, "
    "excluded genres, years; for similar-to, not the reference itself). user_hit@10 = share "
    "of (request, user) pairs whose held-out future (A's last 20 %) holds a qualifying item "
    "that the top 10 contains, over pairs with one. parse_exact = share of requests whose "
    "parsed constraints equal the template's exactly. fill@10 = returned items / 10. "
    "Rows: dense, raw message = the baseline without a parser (the whole message embedded, "
    "no filters); dense = all-MiniLM-L6-v2 over item text in an exact FAISS inner-product "
    "index with the constraints as filters; dense+EASE = reciprocal-rank fusion (k=60, "
    "weights 1:1:1) with the user's EASE scores and the reference's EASE neighbours; "
    "+SmolLM2 = the local SmolLM2-135M re-ranks the top 20 by the PMI of each title given "
    "the request (rank fusion, weight 0.5), on one filling per template and one user per "
    "request, beside the fused row on the same subset (config.requests = llm-subset). "
    "train_seconds: the EASE fit for rows with EASE, building the dense index otherwise; "
    "ms_per_request: one respond() call (a query text's vector is cached, so the 5 users of a "
    "request share one encoding), on a shared 2-core machine."
)


if __name__ == "__main__":
    main()
