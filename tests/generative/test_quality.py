"""Automated checks of generated content: each check on hand-made pieces, and the gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from recloop.errors import ConfigError
from recloop.generative.quality import (
    Blocklist,
    CatalogueConsistency,
    ContentError,
    CorpusEntry,
    Finding,
    GeneratedPiece,
    LengthAndLanguage,
    NearDuplicate,
    QualityConfig,
    QualityGate,
    QualityReport,
    ToxicityClassifier,
    build_gate,
    jaccard,
    read_word_list,
    shingles,
    title_keys,
)
from recloop.store.events import ItemRecord

DESCRIPTION = (
    "Six films that a small group of viewers enjoy far more than most, yet rarely see among "
    'their recommendations. The collection holds "Moonlight Harbor" and "Ruling Class, The".'
)
CATALOGUE = {
    "m1": ItemRecord("m1", title="Moonlight Harbor", attributes={"genres": ["Drama"]}),
    "m2": ItemRecord("m2", title="Ruling Class, The", attributes={"genres": ["Comedy"]}),
    "m3": ItemRecord("m3", title="Quiet Storm", hidden=True, attributes={"genres": ["Drama"]}),
    "m4": ItemRecord("m4", title="Later", available_from=4e9, attributes={"genres": ["Drama"]}),
    "m5": ItemRecord("m5", title="Space Cowboys", attributes={"genres": ["Sci-Fi"]}),
}
TARGET = {"items": ["m1", "m2"], "genres": ["Drama", "Comedy"]}


def piece(**changes: Any) -> GeneratedPiece:
    values: dict[str, Any] = {
        "kind": "collection",
        "segment": "seg-1",
        "title": "Overlooked Drama favourites",
        "description": DESCRIPTION,
        "items": ("m1", "m2"),
        "provenance": {"target": TARGET},
    }
    values.update(changes)
    return GeneratedPiece(**values)


def failed(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.passed]


# ------------------------------------------------------------------------------ the piece
def test_piece_validates_its_fields_and_is_always_generated() -> None:
    p = piece(items=["m1", "m2"])
    assert p.items == ("m1", "m2") and p.generated is True and len(p.content_id) == 32
    assert p.to_json()["generated"] is True and "audience" not in p.to_json()
    with pytest.raises(ContentError, match="kind must be one of collection, concept"):
        piece(kind="poem")
    with pytest.raises(ContentError, match="items must be a list of ids"):
        piece(items="m1")
    with pytest.raises(ContentError, match="segment"):
        piece(segment="  ")
    with pytest.raises(ContentError, match="content_id"):
        piece(content_id="../etc")


# ------------------------------------------------------------------------------ blocklist
def test_default_blocklist_is_packaged_short_and_has_placeholders() -> None:
    words = read_word_list()
    assert 5 <= len(words) <= 40
    assert any("placeholder" in w for w in words)
    assert "bastard" not in words  # a real film title word: "Bastard Out of Carolina"


def test_blocklist_flags_whole_words_case_insensitively_with_spans() -> None:
    check = Blocklist()
    bad = piece(description=DESCRIPTION + " Utter BULLSHIT, frankly.")
    found = failed(check(bad))
    assert len(found) == 1
    start, end = found[0].span  # type: ignore[misc]
    assert found[0].field == "description"
    assert bad.description[start:end] == "BULLSHIT"
    assert found[0].message == "blocked term 'B*******'"  # the word itself is masked
    # substrings of other words are not matches (the Scunthorpe problem)
    clean = piece(description=DESCRIPTION + " Filmed in Scunthorpe; shitake mushrooms.")
    assert not failed(check(clean))
    assert check(clean)[0].passed and "terms found" in check(clean)[0].message
    slur = piece(title="A placeholder-slur-two title")
    assert failed(check(slur))[0].field == "title"


def test_blocklist_from_a_file_of_your_own(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# mine\nsoggy popcorn\nmeh  # trailing comment\n\n")
    check = Blocklist(path)
    assert check.words == ("soggy popcorn", "meh")
    found = failed(check(piece(description="It is like SOGGY\n  popcorn, honestly. " * 3)))
    assert len(found) == 3
    assert not failed(check(piece()))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ContentError, match="holds no entries"):
        Blocklist(tmp_path / "empty.txt")
    with pytest.raises(ContentError, match="cannot read it"):
        Blocklist(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------ toxicity
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "of", "for", "and", "film",
    "films", "people", "group", "lovely", "great", "gentle", "picks", "nasty", "vile",
    "hateful", "idiots", "collection", "is", "are", "this",
]  # fmt: skip


@pytest.fixture(scope="module")
def toxicity_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny BERT classifier (16 dims, 26-word vocabulary) taught that a few words are toxic."""
    import importlib.util

    require(
        importlib.util.find_spec("transformers") is not None,
        "transformers is not installed (pip install recloop[text])",
    )
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("toxicity")
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label={0: "neutral", 1: "toxic"},
        label2id={"neutral": 0, "toxic": 1},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: more threads only contend
    try:
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config)
        clean = [
            "a lovely collection of films",
            "great picks for this group",
            "gentle films for people",
            "the collection is great",
            "lovely picks and great films",
        ]
        toxic = [
            "nasty vile films",
            "this group are idiots",
            "hateful picks for idiots",
            "the collection is nasty",
            "vile and hateful people",
        ]
        batch = tokenizer(clean + toxic, padding=True, return_tensors="pt")
        labels = torch.tensor([0] * len(clean) + [1] * len(toxic))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(25):
            loss = model(**batch, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        model.save_pretrained(folder)  # safetensors
        tokenizer.save_pretrained(folder)
        yield folder
    finally:
        torch.set_num_threads(threads)


def test_toxicity_classifier_from_a_local_folder_flags_toxic_text(toxicity_model: Path) -> None:
    check = ToxicityClassifier(toxicity_model, threshold=0.5)
    assert check.labels == {0: "neutral", 1: "toxic"} and check.toxic == [1]
    nice = piece(title="Great picks", description="A lovely collection of gentle films for people.")
    assert not failed(check(nice))
    assert [f.field for f in check(nice)] == ["title", "description"]
    nasty = piece(title="Great picks", description="Nasty vile films for hateful idiots.")
    found = failed(check(nasty))
    assert [f.field for f in found] == ["description"]
    assert found[0].span == (0, len(nasty.description))
    assert found[0].message.startswith("toxicity 0.9")
    low, high = check.scores(["lovely great films", "vile hateful idiots"])
    assert low < 0.1 < 0.9 < high
    # a threshold of 1 lets nearly everything through; the gate fails closed on bad input
    assert not failed(ToxicityClassifier(toxicity_model, threshold=1.0)(nasty))


def test_toxicity_classifier_refuses_what_it_cannot_trust(
    toxicity_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ContentError, match=r"no config\.json"):
        ToxicityClassifier(tmp_path / "nowhere")
    with pytest.raises(ContentError, match="threshold"):
        ToxicityClassifier(toxicity_model, threshold=0)
    with pytest.raises(ContentError, match="no toxic label among neutral, toxic"):
        ToxicityClassifier(toxicity_model, toxic_labels=["insult"])
    with pytest.raises(ContentError, match="every label counts as toxic"):
        ToxicityClassifier(toxicity_model, toxic_labels=["neutral", "toxic"])
    # pickled weights are refused: only safetensors are loaded
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(toxicity_model, pickled)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")  # what old checkpoints hold
    with pytest.raises(ContentError, match="cannot load it"):
        ToxicityClassifier(pickled)


def test_build_gate_adds_the_configured_toxicity_model(toxicity_model: Path) -> None:
    config = QualityConfig(toxicity_model=toxicity_model, toxicity_threshold=0.5)
    gate = build_gate(config, items=CATALOGUE)
    names = [c.name for c in gate.checks]
    assert names == ["blocklist", "toxicity", "catalogue", "near_duplicate", "length_language"]
    report = gate.run(piece(description=DESCRIPTION + " Nasty vile hateful idiots."))
    assert not report.passed and report.failed_checks() == ["toxicity"]


# ------------------------------------------------------------------------------ catalogue
def test_catalogue_consistency_passes_real_visible_fitting_items() -> None:
    check = CatalogueConsistency(CATALOGUE, clock=lambda: 1e9)
    found = check(piece())
    assert not failed(found)
    assert found[-1].message == "2 items exist, are visible and fit"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (("m1", "nope"), "item 'nope' is not in the catalogue"),
        (("m1", "m3"), "item 'm3' is hidden or unavailable now"),
        (("m1", "m4"), "item 'm4' is hidden or unavailable now"),
        (("m1", "m5"), "item 'm5' does not fit the segment's target (genres: Comedy, Drama)"),
        (("m1", "m1"), "items listed twice: m1"),
        ((), "a collection must list at least one item"),
    ],
)
def test_catalogue_consistency_flags_bad_items(items: tuple[str, ...], message: str) -> None:
    check = CatalogueConsistency(CATALOGUE, clock=lambda: 1e9)
    description = "Six films that a small group of viewers enjoy far more than most people do."
    messages = [f.message for f in failed(check(piece(items=items, description=description)))]
    assert message in messages


def test_catalogue_consistency_flags_invented_titles_and_references() -> None:
    check = CatalogueConsistency(CATALOGUE, clock=lambda: 1e9)
    text = (
        'It holds "The Ruling Class" (a title form that counts), "moonlight harbor (1999)", '
        '"Space Cowboys" (real, but not in this collection), "Neon Tides" and [[m9]] and [[m1]].'
    )
    found = failed(check(piece(description=text)))
    spans = {text[f.span[0] : f.span[1]] for f in found if f.span}  # type: ignore[index]
    assert spans == {'"Space Cowboys"', '"Neon Tides"', "[[m9]]"}
    assert all(f.field == "description" for f in found)
    # a concept may quote its own (new) title
    concept = piece(kind="concept", title="Neon Tides", description=text.replace("[[m9]]", ""))
    assert {text[f.span[0] : f.span[1]] for f in failed(check(concept)) if f.span} == {  # type: ignore[index]
        '"Space Cowboys"'
    }


def test_catalogue_consistency_without_a_target_says_so() -> None:
    check = CatalogueConsistency(CATALOGUE, clock=lambda: 1e9)
    found = check(piece(items=("m1", "m2", "m5"), provenance={}))
    assert not failed(found)
    assert any("fit not checked" in f.message for f in found)


def test_title_keys_ignore_case_articles_years_and_parentheticals() -> None:
    assert "the ruling class" in title_keys("Ruling Class, The")
    assert title_keys("Toy Story (1995)") & title_keys("toy story")
    assert title_keys("Ghost in the Shell (Kokaku kidotai)") & title_keys("Ghost in the Shell")


# ------------------------------------------------------------------------------ near duplicates
def test_near_duplicate_flags_close_text_and_same_items_but_not_itself() -> None:
    original = piece()
    corpus = [CorpusEntry("old", original.text(), ("m1", "m2"), "approved")]
    check = NearDuplicate(corpus, threshold=0.8, item_threshold=0.8)
    reworded = piece(title="Overlooked Drama favorites", items=("m5",))
    found = failed(check(reworded))
    assert len(found) == 1 and "similar to approved piece old" in found[0].message
    same_items = piece(title="Something else", description="Entirely different words here.")
    found = failed(check(same_items))
    assert found[0].field == "items" and found[0].message.startswith("items 100% the same")
    fresh = piece(title="Cosmic journeys", description="Rockets, stars and far planets.", items=())
    assert not failed(check(fresh)) and check(fresh)[0].message == "unlike the 1 stored pieces"
    itself = NearDuplicate([CorpusEntry(original.content_id, original.text())])
    assert not failed(itself(original))


def test_shingles_and_jaccard_are_what_they_say() -> None:
    assert shingles("Abc, DEF!", 3) == frozenset({"abc", "bc ", "c d", " de", "def"})
    assert shingles("ab", 5) == frozenset({"ab"}) and shingles("", 5) == frozenset()
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard([], []) == 0.0
    with pytest.raises(ContentError, match="threshold"):
        NearDuplicate([], threshold=1.5)


# ------------------------------------------------------------------------------ length, language
def test_length_bounds_on_title_and_description() -> None:
    check = LengthAndLanguage(title_chars=(5, 30), description_chars=(40, 200))
    found = failed(check(piece(title="Hi", description=DESCRIPTION * 2)))
    assert [(f.field, f.message) for f in found] == [
        ("title", "title has 2 characters (allowed 5-30)"),
        ("description", f"description has {len(DESCRIPTION * 2)} characters (allowed 40-200)"),
    ]


def test_language_heuristic_tells_english_prose_from_other_text() -> None:
    check = LengthAndLanguage()
    assert not failed(check(piece()))
    french = (
        "Six films que un petit groupe de spectateurs aiment beaucoup plus que la plupart, "
        "mais qui sont rarement recommandés pour eux, malheureusement."
    )
    found = failed(check(piece(description=french)))
    assert found[0].message.endswith("not en prose") and found[0].field == "description"
    titles_only = ", ".join(f'"Film number {n}"' for n in range(12)) + " Moonlight Storm Harbor"
    assert check.stopword_ratio(titles_only) == (0.0, 3)  # quoted titles are left out
    listing = "Moonlight Harbor, Quiet Storm, Space Cowboys, Neon Tides, Red Planet, Blue Moon"
    assert failed(check(piece(description=listing)))
    short = failed(LengthAndLanguage(description_chars=(1, 100))(piece(description="Bonjour")))
    assert short == []  # too short to judge
    assert not failed(LengthAndLanguage(language=None)(piece(description=french)))
    with pytest.raises(ContentError, match="give its stopwords"):
        LengthAndLanguage(language="fr")
    german = LengthAndLanguage(language="de", stopwords=["der", "die", "und", "ist"])
    assert german.stopword_ratio("Der Film und die Musik ist gut") == (pytest.approx(4 / 7), 7)


# ------------------------------------------------------------------------------ gate, config
class Broken:
    name = "broken"

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        raise RuntimeError("model server\nunreachable")


def test_gate_passes_only_when_every_finding_passes_and_fails_closed() -> None:
    gate = QualityGate([Blocklist(), LengthAndLanguage()])
    report = gate.run(piece())
    assert report.passed and report.failures == [] and len(report.findings) == 4
    assert QualityReport.from_json(report.to_json()) == report
    broken = QualityGate([Blocklist(), Broken()]).run(piece())
    assert not broken.passed and broken.failed_checks() == ["broken"]
    assert broken.failures[0].message == "check failed to run: model server unreachable"


def test_quality_config_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECLOOP_BLOCKLIST", "none")
    monkeypatch.setenv("RECLOOP_TOXICITY_THRESHOLD", "0.7")
    config = QualityConfig.from_env()
    assert config.use_blocklist is False and config.toxicity_threshold == 0.7
    assert build_gate(config, items=CATALOGUE).checks[0].name == "catalogue"
    words = tmp_path / "w.txt"
    words.write_text("soggy\n")
    monkeypatch.setenv("RECLOOP_BLOCKLIST", str(words))
    assert QualityConfig.from_env().blocklist == words
    monkeypatch.setenv("RECLOOP_TOXICITY_THRESHOLD", "2")
    with pytest.raises(ConfigError, match="field 'toxicity_threshold'"):
        QualityConfig.from_env()


# ------------------------------------------------------------- what displays, what it repeats
@pytest.mark.parametrize(
    "written",
    [
        "sh\u200bit",  # zero-width space
        "sh\u00adit",  # soft hyphen
        "s\u2060h\u200di\ufefft",  # word joiner, zero-width joiner, byte-order mark
        "ｓｈｉｔ",  # fullwidth
        "\U0001d42c\U0001d421\U0001d422\U0001d42d",  # mathematical bold
        "bull\u2060shit",  # a word joiner is no word break for "bullshit" ...
        "BULL\u200bSHIT",  # ... nor a zero-width space, read either way
    ],
)
def test_blocklist_sees_through_invisible_and_compatibility_characters(written: str) -> None:
    text = f"These are the films this group loves, and the {written} they never get to see."
    found = failed(Blocklist()(piece(description=text)))
    assert len(found) == 1, found
    start, end = found[0].span  # type: ignore[misc]
    assert text[start:end] == written  # the span points into the text as written
    assert "\u200b" not in found[0].message and "*" in found[0].message


def test_blocklist_normalising_keeps_whole_words_and_entries() -> None:
    clean = piece(description=DESCRIPTION + " Filmed in Scunthorpe; ｓｈｉｔａｋｅ mushrooms.")
    assert not failed(Blocklist()(clean))
    check = Blocklist(words=["ｍｅｈ", "soggy\u00ad popcorn"])  # entries are normalised too
    assert len(failed(check(piece(description="It is meh, like SOGGY\n popcorn. " * 2)))) == 4


def test_near_duplicate_compares_items_within_a_kind_and_never_with_the_companion() -> None:
    collection = piece(items=("m1", "m2", "m5"))
    concept = piece(
        kind="concept",
        title="New Drama idea",
        description="A brand-new story about lighthouses, storms and a stubborn keeper.",
        items=("m1", "m2", "m5"),
        provenance={"companion": collection.content_id},
    )
    unknown_kind = CorpusEntry(collection.content_id, collection.text(), collection.items)
    # the concept cites its own collection's items: not a duplicate of it
    assert not failed(NearDuplicate([unknown_kind])(concept))
    # nor of a collection from elsewhere, when the corpus says what kind each piece is
    other = CorpusEntry(
        "other", "Other words entirely.", ("m1", "m2", "m5"), "pending", "collection"
    )
    assert not failed(NearDuplicate([other])(concept))
    # the other way round: the collection, re-checked after an edit, against its concept
    linked = piece(items=("m1", "m2", "m5"), provenance={"companion": concept.content_id})
    entry = CorpusEntry(concept.content_id, concept.text(), concept.items)
    assert not failed(NearDuplicate([entry])(linked))
    # the same kind still counts, and an unknown kind counts as the same
    fresh = piece(title="Fresh words", description="Nothing alike.", items=("m1", "m2", "m5"))
    found = failed(NearDuplicate([other, unknown_kind])(fresh))
    assert [f.field for f in found] == ["items", "items"]
    # and text is compared across kinds
    copy = piece(kind="concept", items=("m4",), provenance={"companion": "x"})
    assert failed(NearDuplicate([unknown_kind])(copy))[0].message.startswith("text ")
