"""``recloop explain``: recommend for one user and show each item's evidence and explanation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from recloop.errors import ConfigError, RecloopError

if TYPE_CHECKING:  # scipy loads with it: only when a command re-ranks
    from recloop.generative.rerank import LLMReranker

BACKENDS = ("template", "transformers", "openai")
RERANK_TOP_N = 20  # as the service's rerank=llm


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the explain commands to the main CLI."""

    @app.command("explain")
    @user_errors
    def explain(
        user: str = typer.Option(..., "--user", "-u", help="the user's id in the dataset"),
        dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
        model: str = typer.Option("EASE", "--model", "-m", help="model class name to train"),
        load: Path | None = typer.Option(
            None, help="a saved model folder to load instead of training one"
        ),
        n: int = typer.Option(5, "-n", min=1, max=50, help="how many items to explain"),
        backend: str = typer.Option(
            "template",
            help="template, transformers (local; RECLOOP_LLM_MODEL_PATH, default smollm2) or "
            "openai (RECLOOP_LLM_BASE_URL and RECLOOP_LLM_MODEL)",
        ),
        consent: bool = typer.Option(
            False, help="the user consents to their history going to a hosted backend"
        ),
        rerank: str = typer.Option(
            "none",
            help="none, or llm: the backend's language model re-orders the model's top "
            f"{RERANK_TOP_N} from the user's history before the top N are explained",
        ),
        as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    ) -> None:
        """Train (or load) a model, recommend N items to USER and explain each from evidence."""
        from recloop.generative.evidence import catalog_facts
        from recloop.generative.explain import Explainer
        from recloop.generative.faithfulness import FaithfulnessChecker

        if backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if rerank not in ("none", "llm"):
            raise ConfigError(f"--rerank must be none or llm, not {rerank!r}")
        if rerank == "llm" and backend == "template":
            raise ConfigError(
                "--rerank llm needs a language model: add --backend transformers or openai"
            )
        data = load_dataset(dataset, console)
        if data.catalog is None:
            raise RecloopError(f"{dataset} has no catalogue: explanations need item titles")
        user_row(data, user)  # before training: a wrong id fails fast
        fitted = fit_or_load_model(model, load, data, console)
        facts = catalog_facts(data.catalog)
        generator = text_generator_for(backend)
        explainer = Explainer(generator, FaithfulnessChecker.from_items(facts.values()))
        with console.status("re-ranking and explaining" if rerank == "llm" else "explaining"):
            rows = explain_user(
                fitted,
                data,
                user,
                n,
                explainer,
                consent=consent,
                reranker=_reranker(generator) if rerank == "llm" else None,
            )
        if as_json:
            typer.echo(json.dumps([row.to_dict() for row in rows], indent=2))
            return
        _print(console, user, rows)


def explain_user(
    model: Any,
    data: Any,
    user: str,
    n: int,
    explainer: Any,
    *,
    consent: bool = False,
    reranker: LLMReranker | None = None,
) -> list[Any]:
    """The user's top ``n`` items from ``model``, each explained (a list of Explanation);
    with ``reranker``, the model's top ``reranker.top_n`` re-ordered by it first (the
    evidence keeps the model's score: the model chose the item, the LLM only its place)."""
    from recloop.data.types import Queries
    from recloop.generative.evidence import build_evidence, catalog_facts, model_attribution

    inter = data.interactions
    row = user_row(data, user)
    mine = np.flatnonzero((inter.user == row) & ~inter.is_negative())
    order = mine[np.argsort(inter.timestamp[mine], kind="stable")]
    history_idx = inter.item[order]
    queries = Queries(np.array([row]), np.array([0, len(history_idx)]), history_idx)
    wanted = max(n, reranker.top_n) if reranker is not None else n
    if hasattr(model, "recommend_labelled"):  # one source per query: the model or popular
        items, scores, sources = model.recommend_labelled(queries, wanted)
        source = str(sources[0])
    else:
        items, scores = model.recommend(queries, wanted)
        source = type(model).__name__
    facts = catalog_facts(data.catalog)
    attribution = model_attribution(model, inter.items)
    history = inter.items.ids(history_idx.tolist())
    ranked = [(int(i), float(s)) for i, s in zip(items[0], scores[0], strict=True) if i >= 0]
    if reranker is not None and ranked and len(history_idx):
        ranked = _reranked(reranker, data, history_idx, ranked, source, consent)
    out = []
    for index, score in ranked[:n]:
        evidence = build_evidence(
            inter.items.id_of(int(index)),
            history,
            facts,
            attribution=attribution,
            source=source,
            score=float(score),
        )
        out.append(explainer.explain(evidence, consent=consent))
    return out


def _reranker(generator: Any) -> LLMReranker:
    from recloop.generative.rerank import LLMReranker

    return LLMReranker(generator, top_n=RERANK_TOP_N)


def _reranked(
    reranker: LLMReranker,
    data: Any,
    history_idx: np.ndarray,
    ranked: list[tuple[int, float]],
    source: str,
    consent: bool,
) -> list[tuple[int, float]]:
    """``ranked`` (item index, model score) with its head re-ordered by ``reranker``."""
    from recloop.generative.rerank import RerankCandidate, catalog_titles

    titles = catalog_titles(data.catalog)  # the catalogue shares the interactions' item ids
    recent = [titles[i] for i in history_idx[-reranker.history_len :]]
    candidates = [RerankCandidate(str(i), titles[i], s, source) for i, s in ranked]
    order = reranker.rerank(recent, candidates, consent=consent)
    return [ranked[c.source_rank] for c in order]


def user_row(data: Any, user: str) -> int:
    """The user's index in ``data``, or a one-line error naming ``--user``."""
    users = data.interactions.users
    if user not in users:
        example = users.id_of(0) if len(users) else "?"
        raise RecloopError(f"--user {user!r} is not in {data.name} (ids look like {example!r})")
    return int(users.index([user])[0])


def load_dataset(name: str, console: Any) -> Any:
    """The named dataset (ml-100k, ml-1m or synthetic), with a spinner while it loads."""
    with console.status(f"loading {name}"):
        if name == "ml-100k":
            from recloop.datasets import movielens_100k

            return movielens_100k()
        if name == "ml-1m":
            from recloop.datasets import movielens_1m

            return movielens_1m()
        if name == "synthetic":
            from recloop.data.synthetic import SyntheticConfig, generate

            return generate(SyntheticConfig()).dataset
    raise ConfigError(f"--dataset must be ml-100k, ml-1m or synthetic, not {name!r}")


def fit_or_load_model(name: str, load: Path | None, data: Any, console: Any) -> Any:
    """The model saved at ``load``, or ``name`` fitted on all of ``data``."""
    from recloop.models.registry import build_model, model_class

    if load is not None:
        try:
            manifest = json.loads((load / "manifest.json").read_text())
        except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
            manifest = None
        saved = manifest.get("model") if isinstance(manifest, dict) else None
        if not isinstance(saved, str) or not saved:
            raise RecloopError(f"--load {load}: not a saved recloop model folder")
        fitted = model_class(saved).load(load)
        if getattr(fitted, "n_items_", len(data.interactions.items)) != len(
            data.interactions.items
        ):
            raise RecloopError(f"--load {load}: the model was trained on another item set")
        return fitted
    with console.status(f"training {name} on {data.name}"):
        return build_model(name).fit(data.interactions, data.catalog, data.users)


def text_generator_for(backend: str) -> Any:
    """The text generator for ``--backend`` (its settings from the environment)."""
    from recloop.generative.backends import GeneratorConfig, build_generator

    config = GeneratorConfig.from_env()
    values = config.model_dump()
    values["backend"] = backend
    if backend == "transformers" and not values.get("model_path"):
        values["model_path"] = "smollm2"
    return build_generator(GeneratorConfig.of(**values))


def _print(console: Any, user: str, rows: list[Any]) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console.print(f"[bold]Recommendations for user {escape(user)}[/]")
    for position, row in enumerate(rows):
        ev = row.evidence
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("driver (from the history)")
        table.add_column("weight", justify="right")
        table.add_column("shares")
        for driver in ev.drivers:
            shares = list(driver.shared_genres)
            if driver.same_year:
                shares.append(str(ev.item.year))
            elif driver.same_decade and ev.item.year is not None:
                shares.append(f"{ev.item.year - ev.item.year % 10}s")
            if driver.shared_sid_prefix:
                shares.append("SID " + "-".join(map(str, driver.shared_sid_prefix)))
            table.add_row(escape(driver.item.display), f"{driver.weight:.4f}", ", ".join(shares))
        status = "faithful" if row.faithful else "[red]unfaithful[/]"
        fallback = f", template fallback ({row.reason})" if row.fallback_used else ""
        score = f"{ev.score:.4f}" if ev.score is not None else "n/a"
        body = [
            f"[bold]{escape(row.text)}[/]",
            "",
            f"source {escape(ev.source)} · score {score} · drivers by {ev.method} · "
            f"{escape(row.backend)} · {status}{fallback}",
        ]
        console.print(
            Panel.fit(
                "\n".join(body),
                title=f"{position + 1}. {escape(ev.item.display)}",
                subtitle=", ".join(ev.item.genres) or None,
            )
        )
        if ev.drivers:
            console.print(table)
