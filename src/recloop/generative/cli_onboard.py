"""``recloop onboard``: a new user's synthetic starting profile and first recommendations.

What ``POST /v1/onboarding`` does, over a dataset instead of the service's store
(:mod:`recloop.generative.onboarding`): liked items (titles or item ids), free text and profile
answers (genres, decades) become a partial interaction vector; when the model cannot
reconstruct one (EASE, the default), a Mult-VAE fitted on the dataset with the route's settings
turns it into a synthetic profile that the model recommends from; a Mult-VAE, Mult-DAE or
DiffRec (``--model`` or ``--load``) is used itself. The request is validated as the route
validates it, and an unknown title is an error that lists close matches.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer

from recloop.errors import RecloopError
from recloop.generative import cli_chat, cli_explain

OPTION_OF = {  # the route's request fields as this command's options
    "liked_items": "--liked",
    "text": "--text",
    "answers.genres": "--genre",
    "answers.decades": "--decade",
    "n": "-k",
}


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the onboard command to the main CLI."""

    @app.command("onboard")
    @user_errors
    def onboard(
        liked: list[str] | None = typer.Option(
            None, "--liked", help="a liked item: its title, e.g. 'Toy Story (1995)', or its id"
        ),
        text: str | None = typer.Option(
            None, "--text", help="what the user likes, e.g. 'I loved Fargo and 80s sci-fi'"
        ),
        genre: list[str] | None = typer.Option(None, "--genre", help="a genre the user likes"),
        decade: list[int] | None = typer.Option(
            None, "--decade", help="a decade the user likes, as its first year (1980)"
        ),
        k: int = typer.Option(10, "-k", "-n", min=1, help="how many items to recommend"),
        dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
        model: str = typer.Option(
            "EASE", "--model", "-m", help="model class name to recommend with"
        ),
        load: Path | None = typer.Option(
            None, help="a saved model folder to load instead of training one"
        ),
        as_json: bool = typer.Option(False, "--json", help="print machine-readable JSON"),
    ) -> None:
        """Build a starting profile from liked items, text and/or answers; recommend at once."""
        from recloop.generative.onboarding import Onboarding, ProfileAnswers

        liked, genre, decade = liked or [], genre or [], decade or []
        if not (liked or (text and text.strip()) or genre or decade):
            raise RecloopError("nothing to onboard from: give --liked, --text, --genre or --decade")
        request = route_request(liked, text, genre, decade, k)
        data = cli_chat.load_data(dataset, console)
        if data.catalog is None:
            raise RecloopError(f"{dataset} has no catalogue: onboarding needs item titles")
        from recloop.generative.conversation import CatalogueVocabulary

        popularity = data.interactions.positive().item_counts()
        vocab = CatalogueVocabulary(data.catalog, popularity=popularity)
        rows, notes = resolve_items(liked, vocab, data.name)
        answers = None
        if request.answers is not None:
            answers = ProfileAnswers(tuple(request.answers.genres), tuple(request.answers.decades))
            check_answers(answers, data.catalog)
        fitted = cli_explain.fit_or_load_model(model, load, data, console)
        generative, fitted_vae = generative_model(fitted, data, console)
        text_index = None
        if request.text and request.text.strip():
            text_index, matching = _text_index(data, console)
            notes.append(f"text matching: {matching}")
        onboarding = Onboarding(
            generative,
            recommender=fitted if fitted_vae else None,
            catalog=data.catalog,
            text_index=text_index,
        )
        with console.status("onboarding"):
            result = onboarding.onboard(rows, request.text, answers, k=request.n)
        notes = [*result.notes, *notes]
        if fitted_vae and result.method != "popular":
            notes.append(
                f"{type(fitted).__name__} cannot reconstruct; a Mult-VAE fitted on {data.name} "
                "made the profile"
            )
        out = result_json(result, vocab, data.name, notes)
        if as_json:
            typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
            return
        _print(console, out)


def route_request(
    liked: list[str], text: str | None, genres: list[str], decades: list[int], k: int
) -> Any:
    """The options as the route's request body, validated by it; an error names the option."""
    from pydantic import ValidationError

    from recloop.service.routes_onboarding import OnboardingIn

    body: dict[str, Any] = {"user_id": "cli", "liked_items": liked, "text": text, "n": k}
    if genres or decades:
        body["answers"] = {"genres": genres, "decades": decades}
    try:
        return OnboardingIn.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        field = ".".join(p for p in loc if not p.isdigit())
        option = OPTION_OF.get(field, field)
        which = f" {int(loc[-1]) + 1}" if loc and loc[-1].isdigit() else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        raise RecloopError(f"{option}{which}: {message}") from None


def _loose(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _title_keys(vocab: Any) -> dict[str, list[int]]:
    """Loose forms of every title a user may type, to catalogue rows: 'Toy Story (1995)',
    'toy story', 'The Birdcage', 'Birdcage, The (1996)', and the forms the conversation
    parser knows ('Se7en' for 'Seven (Se7en)')."""
    keys: dict[str, list[int]] = {key: list(rows) for key, rows in vocab.title_rows.items()}
    for row, raw in enumerate(vocab.titles):
        display = vocab.display(row)
        year = vocab.years[row]
        forms = {display, raw}
        if np.isfinite(year):
            forms |= {f"{raw} ({int(year)})", display.removesuffix(f" ({int(year)})")}
        for form in forms:
            key = _loose(form)
            if key and row not in keys.setdefault(key, []):
                keys[key].append(row)
    return keys


def resolve_items(values: list[str], vocab: Any, dataset: str) -> tuple[list[int], list[str]]:
    """Catalogue rows of ``--liked`` values (an item id, else a title) and notes on titles
    several items share (the most interacted-with is used); an unknown one is an error that
    lists close matches."""
    rows: list[int] = []
    notes: list[str] = []
    keys: dict[str, list[int]] | None = None
    for value in values:
        if value in vocab.row:
            rows.append(vocab.row[value])
            continue
        keys = keys if keys is not None else _title_keys(vocab)
        found = keys.get(_loose(value))
        if not found:
            raise RecloopError(f"--liked {value!r}: {_no_such_item(value, vocab, keys, dataset)}")
        row = vocab.best_row(found)
        if len(found) > 1:
            ids = ", ".join(vocab.ids[r] for r in found)
            notes.append(
                f"--liked {value!r} names {len(found)} items (ids {ids}): used {vocab.ids[row]}, "
                "the most interacted-with; give an id to choose"
            )
        rows.append(row)
    return list(dict.fromkeys(rows)), notes


def _no_such_item(value: str, vocab: Any, keys: dict[str, list[int]], dataset: str) -> str:
    wanted = _loose(value)
    close = difflib.get_close_matches(wanted, list(keys), n=5, cutoff=0.6)
    matches = list(dict.fromkeys(r for key in close for r in keys[key]))
    if not matches and len(wanted) >= 3:
        matches = [r for r, t in enumerate(vocab.titles) if wanted in _loose(vocab.display(r))]
    message = f"no item with that id or title in {dataset}"
    if matches:
        named = "; ".join(f"{vocab.display(r)} (id {vocab.ids[r]})" for r in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        return f"{message}; close matches: {named}{more}"
    return f"{message} (give a title as 'Toy Story (1995)' or an item id)"


def check_answers(answers: Any, catalog: Any) -> None:
    """Refuse an unknown genre or a bad decade before any model is fitted, with the message
    :meth:`Onboarding.answer_items` gives."""
    from recloop.generative.onboarding import GENRE_ALIASES, OnboardingError

    if answers.genres:
        if "genres" not in catalog.attributes:
            raise OnboardingError("the catalogue has no 'genres' attribute to answer against")
        known = {
            str(g).strip().lower(): str(g)
            for row in catalog.attributes["genres"]
            for g in (row if isinstance(row, list | tuple) else [row] if row else [])
        }
        for genre in answers.genres:
            key = genre.strip().lower()
            if GENRE_ALIASES.get(key, key) not in known:
                raise OnboardingError(
                    f"--genre: unknown genre {genre!r} (known: {', '.join(sorted(known.values()))})"
                )
    for decade in answers.decades:
        if decade % 10 or not 1800 <= decade <= 2100:
            raise OnboardingError(
                f"--decade: a decade is written as its first year, e.g. 1980, not {decade}"
            )


def generative_model(model: Any, data: Any, console: Any) -> tuple[Any, bool]:
    """The model that makes the profile, and whether it was fitted here: ``model`` itself when
    it can reconstruct (or is TIGER), else a Mult-VAE with the route's settings on ``data``."""
    from recloop.data.split import make_split
    from recloop.generative.onboarding import can_reconstruct
    from recloop.models.multvae import MultVAE, MultVAEConfig
    from recloop.models.tiger import TIGER
    from recloop.service.routes_onboarding import ONBOARDING_VAE

    if can_reconstruct(model) or isinstance(model, TIGER):
        return model, False
    inter = data.interactions
    # the training progress bar shows on a terminal (a spinner beside it would garble both)
    vae = MultVAE(MultVAEConfig(**ONBOARDING_VAE, progress=console.is_terminal))
    if len(inter) >= 3 * max(inter.n_users, 1):  # a held-out last item per user
        vae.fit(make_split(inter, "loo", seed=0))
    else:
        vae.fit(inter)
    return vae, True


def _text_index(data: Any, console: Any) -> tuple[Any, str]:
    """The dense text index over the catalogue, else title words (as the route falls back)."""
    from recloop.generative.onboarding import DenseTextIndex, TitleMatcher

    try:
        encoder = cli_chat.text_encoder()
        index = cli_chat.catalogue_index(data.catalog, encoder, console)
    except (ImportError, OSError, RecloopError) as exc:
        why = " ".join(str(exc).split())[:200]
        return TitleMatcher(data.catalog.title), f"titles: dense index could not be built ({why})"
    return DenseTextIndex(index, data.interactions.items), "dense"


def describe_method(method: str) -> str:
    """``profile:MultVAE>EASE`` in words."""
    kind, _, models = method.partition(":")
    maker, _, ranker = models.partition(">")
    if kind == "popular":
        return "nothing usable was given: the most popular items"
    if kind == "reconstruction":
        return f"{maker} reconstructed a full profile from what was given and ranks by it"
    made = "continued what was given" if kind == "continuation" else "made a synthetic profile"
    then = f"; {ranker} recommends from it" if ranker else ""
    return f"{maker} {made}{then}"


def result_json(result: Any, vocab: Any, dataset: str, notes: list[str]) -> dict[str, Any]:
    """The route's answer fields with titles, years, genres and where each profile item came
    from (liked, text, answers or synthetic)."""
    ids = vocab.ids
    seeds = result.seeds
    origin: dict[int, str] = {}
    for name, items in (
        ("liked", seeds.liked),
        ("text", seeds.from_text),
        ("answers", seeds.from_answers),
    ):
        for item in items.tolist():
            origin.setdefault(int(item), name)

    def year(row: int) -> int | None:
        value = vocab.years[row]
        return int(value) if np.isfinite(value) else None

    return {
        "dataset": dataset,
        "method": result.method,
        "method_description": describe_method(result.method),
        "profile": [
            {
                "item_id": ids[row],
                "title": vocab.display(row),
                "weight": round(float(weight), 6),
                "origin": origin.get(row, "synthetic"),
            }
            for row, weight in zip(
                result.profile_items.tolist(), result.profile_weights, strict=True
            )
        ],
        "items": [
            {
                "item_id": ids[row],
                "title": vocab.display(row),
                "year": year(row),
                "genres": sorted(vocab.item_genres[row]),
                "score": round(float(score), 6),
                "source": result.source,
            }
            for row, score in zip(result.items.tolist(), result.scores, strict=True)
        ],
        "notes": notes,
    }


def _print(console: Any, out: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]Method {escape(out['method'])}[/]: {escape(out['method_description'])}",
        highlight=False,
    )
    profile = out["profile"]
    counts = {o: sum(p["origin"] == o for p in profile) for o in ("liked", "text", "answers")}
    synthetic = [p for p in profile if p["origin"] == "synthetic"]
    label = {"liked": "liked", "text": "from the text", "answers": "from the answers"}
    given = [f"{n} {label[o]}" for o, n in counts.items() if n]
    if synthetic:
        given.append(f"{len(synthetic)} synthetic")
    console.print(f"Profile: {', '.join(given) or 'empty'}", highlight=False)
    shown = [p for p in profile if p["origin"] in ("liked", "text")] + synthetic
    if shown:
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("profile item")
        table.add_column("weight", justify="right")
        table.add_column("from")
        for p in shown:
            table.add_row(escape(p["title"]), f"{p['weight']:.3f}", p["origin"])
        console.print(table)
    console.print()
    table = Table(show_header=True, box=None, pad_edge=False, title="Recommendations")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("genres")
    table.add_column("score", justify="right")
    table.add_column("id", justify="right")
    for position, item in enumerate(out["items"], start=1):
        table.add_row(
            str(position),
            escape(item["title"]),
            escape(", ".join(item["genres"])),
            f"{item['score']:.4f}",
            escape(item["item_id"]),
        )
    console.print(table)
    for note in out["notes"]:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
