"""``recloop chat`` end to end through Typer: the real engine, a real EASE, a tiny catalogue.

The catalogue and users are the conversation route's (12 films, two taste groups); the text
encoder is the tests' hashing encoder, so nothing is downloaded or loaded.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from typer.testing import CliRunner

from generative.test_retrieval import HashEncoder
from generative.test_routes_conversation import GENRES, MOVIES, YEARS, movie_dataset
from recloop.cli import app
from recloop.generative import cli_chat

from .openai_server import OpenAIServer

runner = CliRunner()
TITLE = {m[0]: m[1] for m in MOVIES}


@pytest.fixture(autouse=True)
def movies(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dataset` loads the tiny catalogue; the index reads it with the hashing encoder."""
    data = movie_dataset()
    monkeypatch.setattr(cli_chat, "load_data", lambda name, console: data)
    monkeypatch.setattr(cli_chat, "text_encoder", lambda: HashEncoder(dim=128, name="hash-128"))


def chat(*args: str, code: int = 0, stdin: str | None = None) -> Any:
    result = runner.invoke(app, ["chat", *args], input=stdin)
    assert result.exit_code == code, result.output
    return result


def turns(*args: str, stdin: str | None = None) -> list[dict[str, Any]]:
    result = chat(*args, "--json", stdin=stdin)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def assert_real(items: list[dict[str, Any]]) -> None:
    """Every item is a catalogue film, shown with its own title, year and genres."""
    for item in items:
        assert item["item_id"] in TITLE
        title = TITLE[item["item_id"]]
        assert item["title"] == (f"The {title[:-5]}" if title.endswith(", The") else title)
        assert item["year"] == YEARS[item["item_id"]]
        assert set(item["genres"]) == GENRES[item["item_id"]]


def test_one_shot_turns_parse_refine_and_never_repeat() -> None:
    first, second = turns(
        "--message", "a 90s comedy like Toy Story", "--message", "something older"
    )
    assert first["constraints"]["genres"] == ["Comedy"]
    assert (first["constraints"]["year_min"], first["constraints"]["year_max"]) == (1990, 1999)
    assert first["constraints"]["similar_to"] == ["m1"]
    assert first["understood"] == "comedy, 1990-1999, like Toy Story (1995)"
    assert not first["follow_up"] and first["turn"] == 1 and first["backend"] == "template"
    ids = [i["item_id"] for i in first["items"]]
    # every 90s comedy but the reference itself, and nothing else
    assert sorted(ids) == ["m2", "m3", "m4", "m5", "m6"]
    assert_real(first["items"])
    assert all(i["why"] for i in first["items"])
    # the answer text names the listed films and no other (but the reference)
    assert all(f"{i['title']} ({i['year']})" in first["text"] for i in first["items"])
    others = [TITLE[m] for m in TITLE if m not in ids and m != "m1"]
    assert not [title for title in others if title in first["text"]]

    # the follow-up keeps the conversation: older than what was shown, still a comedy
    assert second["conversation_id"] == first["conversation_id"] and second["turn"] == 2
    assert second["follow_up"] and second["constraints"]["genres"] == ["Comedy"]
    assert second["constraints"]["year_max"] == 1991
    assert sorted(i["item_id"] for i in second["items"]) == ["m7", "m8"]
    assert_real(second["items"])


def test_rich_output_shows_constraints_items_and_why() -> None:
    out = chat("--message", "a 90s comedy like Toy Story", "-k", "2").stdout
    assert "1. a 90s comedy like Toy Story" in out and "(new request)" in out
    assert "understood: comedy, 1990-1999, like Toy Story (1995)" in out
    for column in ("title", "year", "genres", "score", "why"):
        assert column in out
    assert "Here are 2 picks" in out and "(template)" in out


def test_a_user_profile_is_fused_and_their_history_never_shown() -> None:
    data = movie_dataset()
    inter = data.interactions
    u0 = inter.items.ids(inter.item[inter.user == 0].tolist())  # u0 likes the comedies
    (answer,) = turns("--user", "u0", "--message", "a comedy", "-k", "5")
    ids = [i["item_id"] for i in answer["items"]]
    assert not set(ids) & set(u0) and len(ids) == 5
    assert all("Comedy" in i["genres"] for i in answer["items"])
    by_profile = [i for i in answer["items"] if i["source"] == "profile"]
    assert by_profile and all(i["why"] == "fits user u0's history (EASE)" for i in by_profile)
    # without a user there is no profile list (and no note complaining about history)
    (anonymous,) = turns("--message", "a comedy", "-k", "5")
    assert {i["source"] for i in anonymous["items"]} <= {"dense"}
    assert anonymous["notes"] == []


def test_piped_lines_keep_the_state_until_quit() -> None:
    stdin = "a comedy\n\nand romantic too\nquit\na horror film\n"
    first, second = turns("-k", "3", stdin=stdin)  # the horror request after quit is not read
    assert first["constraints"]["genres"] == ["Comedy"] and not first["follow_up"]
    assert second["follow_up"] and set(second["constraints"]["genres"]) == {"Comedy", "Romance"}
    shown = {i["item_id"] for i in first["items"]}
    assert second["items"] and not shown & {i["item_id"] for i in second["items"]}
    assert all({"Comedy", "Romance"} <= set(i["genres"]) for i in second["items"])
    # the same conversation as text: two turns, the second refining the first
    out = chat("-k", "3", stdin=stdin).stdout
    assert (
        "1. a comedy" in out and "2. and romantic too" in out and "(refines the last turn)" in out
    )
    assert "3. " not in out


def test_a_bad_line_is_reported_and_the_conversation_goes_on() -> None:
    result = chat("-k", "2", stdin="a comedy\n" + "x" * 501 + "\nsomething older\n")
    assert "error: message is 501 characters; at most 500" in result.stderr
    assert "2. something older" in result.stdout and "(refines the last turn)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody", "--message", "a comedy"], "--user 'nobody' is not in movies"),
        (["--llm", "gpt", "--message", "a comedy"], "--backend must be one of"),
        (["--message", "a comedy", "--message", "   "], "--message 2: message is empty"),
        (["--message", "y" * 501], "--message 1: message is 501 characters; at most 500"),
        (["-k", "51", "--message", "a comedy"], "Invalid value"),
        ([], "no message: give --message TEXT or one message a line on stdin"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], message: str) -> None:
    result = chat(*args, code=2, stdin="")
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_an_llm_backend_reranks_and_its_text_is_grounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local OpenAI-compatible server: it scores titles (the re-rank runs without consent,
    since nothing leaves the machine) and its answer invents a film, which is dropped."""

    def reply(body: dict[str, Any]) -> str:
        first = re.findall(r"\[\[(m\d+)\]\]", body["messages"][-1]["content"])[0]
        return f'Start with [[{first}]]. Then watch "The Matrix Reloaded 7", a classic.'

    with OpenAIServer(reply=reply, favoured=("Clueless",)) as server:
        monkeypatch.setenv("RECLOOP_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("RECLOOP_LLM_MODEL", server.model)
        (answer,) = turns("--llm", "openai", "--message", "a 90s comedy", "-k", "3")
    assert answer["backend"] != "template"
    assert any(n.startswith("re-ranked the top") for n in answer["notes"])
    assert "dropped 1 generated sentence(s) naming non-candidate items" in answer["notes"]
    assert answer["text"].startswith("Start with ") and "Matrix" not in answer["text"]
    assert_real(answer["items"])
    assert all(1990 <= i["year"] <= 1999 and "Comedy" in i["genres"] for i in answer["items"])


def test_state_file_resumes_the_conversation_across_runs(tmp_path: Any) -> None:
    path = tmp_path / "talk.json"
    (first,) = turns("--state", str(path), "--message", "a 90s comedy like Toy Story")
    saved = json.loads(path.read_text())
    assert saved["conversation_id"] == first["conversation_id"] and len(saved["turns"]) == 1
    (second,) = turns("--state", str(path), "--message", "something older")
    # the second run continues the first: same conversation, turn 2, a refining follow-up
    assert second["conversation_id"] == first["conversation_id"] and second["turn"] == 2
    assert second["follow_up"] and second["constraints"]["year_max"] == 1991
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}
    assert len(json.loads(path.read_text())["turns"]) == 2
    other = chat("--state", str(path), "--user", "u1", "--message", "a comedy", code=2)
    assert "an anonymous conversation; pass no --user to resume it" in other.stderr
    path.write_text("{not json")
    broken = chat("--state", str(path), "--message", "a comedy", code=2)
    assert f"--state {path}: not a saved conversation" in broken.stderr
    assert "Traceback" not in broken.output
