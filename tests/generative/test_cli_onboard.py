"""``recloop onboard`` end to end through Typer: real EASE and Mult-VAE fits on a tiny catalogue.

The catalogue and users are the conversation route's (12 films; users 0-11 like the comedies
m1-m8, users 12-23 the rest); the text encoder is the tests' hashing encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generative.test_retrieval import HashEncoder
from generative.test_routes_conversation import GENRES, YEARS, movie_dataset
from recloop.cli import app
from recloop.errors import RecloopError
from recloop.generative import cli_chat
from recloop.generative.cli_onboard import describe_method, resolve_items
from recloop.generative.conversation import CatalogueVocabulary

runner = CliRunner()
COMEDIES = {f"m{i}" for i in range(1, 9)}


@pytest.fixture(autouse=True)
def movies(monkeypatch: pytest.MonkeyPatch) -> None:
    data = movie_dataset()
    monkeypatch.setattr(cli_chat, "load_data", lambda name, console: data)
    monkeypatch.setattr(cli_chat, "text_encoder", lambda: HashEncoder(dim=128, name="hash-128"))


def onboard(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["onboard", *args])
    assert result.exit_code == code, result.output
    return result


def answer(*args: str) -> dict[str, Any]:
    return json.loads(onboard(*args, "--json").stdout)


def origins(out: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in out["profile"]:
        found.setdefault(entry["origin"], []).append(entry["item_id"])
    return found


def test_liked_titles_and_ids_build_a_profile_that_ease_ranks_from() -> None:
    out = answer("--liked", "Toy Story (1995)", "--liked", "m2", "-k", "4")
    assert out["method"] == "profile:MultVAE>EASE"
    assert out["method_description"] == "MultVAE made a synthetic profile; EASE recommends from it"
    assert out["profile"][:2] == [
        {"item_id": "m1", "title": "Toy Story (1995)", "weight": 1.0, "origin": "liked"},
        {"item_id": "m2", "title": "Aladdin (1992)", "weight": 1.0, "origin": "liked"},
    ]
    synthetic = [p for p in out["profile"] if p["origin"] == "synthetic"]
    assert len(synthetic) == 10 and synthetic[0]["weight"] == pytest.approx(0.1)
    items = out["items"]
    assert len(items) == 4 and not {"m1", "m2"} & {i["item_id"] for i in items}
    assert {i["item_id"] for i in items[:3]} <= COMEDIES  # the comedy fans' films
    assert all(i["source"] == "onboarding" for i in items)
    assert all(set(i["genres"]) == GENRES[i["item_id"]] for i in items)
    assert all(i["year"] == YEARS[i["item_id"]] for i in items)
    assert "EASE cannot reconstruct; a Mult-VAE fitted on movies made the profile" in out["notes"]


def test_rich_output_says_which_method_built_the_profile() -> None:
    out = onboard("--liked", "toy story", "--liked", "Aladdin", "-k", "3").stdout
    assert "Method profile:MultVAE>EASE: MultVAE made a synthetic profile" in out
    assert "Profile: 2 liked, 10 synthetic" in out
    assert "Recommendations" in out and "Toy Story (1995)" in out


def test_answers_and_text_seed_the_profile_as_the_route_does() -> None:
    out = answer("--genre", "horror", "--decade", "1980", "-k", "3")
    seeded = origins(out)["answers"]
    assert sorted(seeded) == ["m10", "m8"]  # the horror films of the 1980s
    assert {p["weight"] for p in out["profile"] if p["origin"] == "answers"} == {0.5}
    # genre words and decades in free text count as answers
    from_text = answer("--text", "something scary from the 80s", "-k", "3")
    assert sorted(origins(from_text)["answers"]) == ["m10", "m8"]
    assert "text matching: dense" in from_text["notes"]


def test_free_text_falls_back_to_title_words(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_encoder() -> None:
        raise RecloopError("no text encoder here")

    monkeypatch.setattr(cli_chat, "text_encoder", no_encoder)
    out = answer("--text", "I loved Fargo and Heat", "-k", "3")
    assert sorted(origins(out)["text"]) == ["m11", "m12"]
    assert (
        "text matching: titles: dense index could not be built (no text encoder here)"
        in out["notes"]
    )


def test_a_model_that_reconstructs_is_used_itself() -> None:
    out = answer("--model", "MultDAE", "--liked", "Scream", "--liked", "Heat", "-k", "3")
    assert out["method"] == "reconstruction:MultDAE"
    assert not any("cannot reconstruct" in n for n in out["notes"])
    assert not {"m9", "m11"} & {i["item_id"] for i in out["items"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to onboard from: give --liked, --text, --genre or --decade"),
        (["--liked", "Toy Stroy"], "close matches: Toy Story (1995) (id m1)"),
        (["--liked", "qqqq"], "no item with that id or title in movies"),
        (["--genre", "Jazz"], "--genre: unknown genre 'Jazz' (known: Action, Animation,"),
        (["--decade", "1985"], "--decade: a decade is written as its first year"),
        (["--liked", "m1", "-k", "201"], "-k: Input should be less than or equal to 200"),
        (["--text", "x" * 2001], "--text: String should have at most 2000 characters"),
        (["--liked", "m1", "--genre", " "], "--genre: each genre must be 1-64 characters"),
        (["--liked", "m1", "--decade", "1980", "--decade", "x"], "Invalid value for '--decade'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], message: str) -> None:
    result = onboard(*args, code=2)
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_titles_resolve_as_people_type_them_on_movielens(ml100k_dir: Path) -> None:
    from recloop.datasets import movielens_100k

    data = movielens_100k(data_dir=ml100k_dir.parent, download=False)
    vocab = CatalogueVocabulary(data.catalog, popularity=data.interactions.item_counts())
    for typed, item in [
        ("Toy Story (1995)", "1"),
        ("toy story", "1"),
        ("Birdcage, The (1996)", "25"),
        ("the birdcage", "25"),
        ("se7en", "11"),
        ("Schindler's List", "318"),
        ("50", "50"),  # an id
    ]:
        rows, notes = resolve_items([typed], vocab, "ml-100k")
        assert [vocab.ids[r] for r in rows] == [item] and notes == [], typed
    rows, notes = resolve_items(["Chasing Amy"], vocab, "ml-100k")
    assert vocab.ids[rows[0]] in ("246", "268") and "names 2 items (ids 246, 268)" in notes[0]
    with pytest.raises(RecloopError, match=r"close matches: Toy Story \(1995\) \(id 1\)"):
        resolve_items(["Toy Stroy (1995)"], vocab, "ml-100k")


def test_methods_in_words() -> None:
    assert describe_method("popular") == "nothing usable was given: the most popular items"
    assert describe_method("reconstruction:DiffRec").startswith("DiffRec reconstructed")
    assert describe_method("continuation:TIGER>EASE") == (
        "TIGER continued what was given; EASE recommends from it"
    )
