"""The faithfulness checker: finds every name a text mentions, flags those outside the evidence."""

from __future__ import annotations

import pytest

from recloop.generative.evidence import ItemFacts, build_evidence
from recloop.generative.faithfulness import FaithfulnessChecker, fold, title_forms, title_key

CATALOGUE = [
    ItemFacts("1", "Toy Story", 1995, ("Animation", "Children's", "Comedy")),
    ItemFacts("2", "Aladdin", 1992, ("Animation", "Children's", "Comedy", "Musical")),
    ItemFacts("3", "Usual Suspects, The", 1995, ("Crime", "Thriller")),
    ItemFacts("4", "Heat", 1995, ("Action", "Crime", "Thriller")),
    ItemFacts("5", "Lion King, The", 1994, ("Animation", "Children's", "Musical")),
    ItemFacts("6", "Seven (Se7en)", 1995, ("Crime", "Thriller")),
    ItemFacts("7", "Star Wars", 1977, ("Action", "Adventure", "Sci-Fi", "War")),
    ItemFacts("8", "Secrets & Lies", 1996, ("Drama",)),
    ItemFacts("9", "Before and After", 1996, ("Drama", "Mystery")),
    ItemFacts("10", "Star Trek: First Contact", 1996, ("Action", "Adventure", "Sci-Fi")),
    ItemFacts("11", "Michael", 1996, ("Comedy", "Romance"), (("director", ("Nora Ephron",)),)),
    ItemFacts("12", "Kids", 1995, ("Drama",)),
]
FACTS = {f.item_id: f for f in CATALOGUE}


@pytest.fixture(scope="module")
def checker() -> FaithfulnessChecker:
    return FaithfulnessChecker.from_items(CATALOGUE)


def evidence_for(item: str, history: list[str]):  # type: ignore[no-untyped-def]
    return build_evidence(item, history, FACTS, source="EASE", n_drivers=2)


def test_title_forms_cover_articles_alternatives_and_subtitles() -> None:
    forms = title_forms("Usual Suspects, The")
    assert ("the", "usual", "suspects") in forms
    assert ("usual", "suspects") in forms
    assert ("usual", "suspects", "the") in forms
    assert ("se7en",) in title_forms("Seven (Se7en)")
    assert ("first", "contact") in title_forms("Star Trek: First Contact")
    assert title_key("Usual Suspects, The") == title_key("The Usual Suspects") == "usual suspects"
    assert fold("Children's") == "children" and fold("Véronique") == "veronique"


def test_faithful_text_in_many_surface_forms_passes(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2", "5"])  # Toy Story, because of Aladdin and The Lion King
    for text in [
        "Because you watched Aladdin (1992) and The Lion King (1994): like them, it is an "
        "animated children's comedy from the 1990s.",
        "because you watched ALADDIN and lion king, the: another animated musical from the '90s",
        "Lion King, The (1994) fans love Toy Story; both are kids' films from the nineties.",
        "If you liked “Aladdin”, Toy Story (1995) is a fun animation pick. Scored by EASE.",
    ]:
        verdict = checker.check(text, ev)
        assert verdict.faithful, (text, verdict.summary())
        assert {m.kind for m in verdict.mentions} >= {"title"}


def test_each_kind_of_unfaithful_mention_is_caught(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2", "5"])
    planted = {
        "title": "Because you watched Aladdin and The Usual Suspects, you will like it.",
        "title (catalogue form)": "Because you watched Usual Suspects, The (1995).",
        "title (capitalised single word)": "Like Heat and Aladdin, it is a comedy.",
        "title (alternative)": "Fans of Se7en enjoy it too.",
        "genre": "Like Aladdin, it is a gripping thriller.",
        "genre (adjective)": "It is a romantic comedy like Aladdin.",
        "year": "Like Aladdin, it came out in 1987.",
        "title year": "Because you watched Aladdin (1995), you will like it.",
        "decade": "An animated comedy from the 1970s, like Aladdin.",
        "person (catalogue)": "Directed by Nora Ephron, like Aladdin.",
        "person (unknown)": "It stars Tom Hanks, like Aladdin.",
        "studio (unknown)": "Like Aladdin, it was made by Pixar.",
    }
    for kind, text in planted.items():
        verdict = checker.check(text, ev)
        assert not verdict.faithful, (kind, text, [m.text for m in verdict.mentions])
        assert verdict.summary()


def test_offending_mentions_are_named(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2", "5"])
    verdict = checker.check("Because you watched Heat (1995) and Aladdin: a thriller.", ev)
    assert sorted((m.kind, m.text) for m in verdict.unsupported) == [
        ("genre", "thriller"),
        ("title", "Heat"),
    ]
    assert "Heat" in verdict.summary()


def test_common_words_that_are_titles_are_not_mentions(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2", "5"])
    # a title of distinctive words is a mention in any case: "star wars" names the film
    assert not checker.check("Like Aladdin, and unlike star wars, it is animated.", ev).faithful
    for text in [
        "Heat is what you feel before and after watching Aladdin.",  # sentence start, lower case
        "Because you watched Aladdin, kids love it too.",  # the genre reading of "kids"
        "Like Aladdin, it is animated: perfect for the summer heat.",  # lower case
    ]:
        verdict = checker.check(text, ev)
        titles = [m.text for m in verdict.unsupported if m.kind == "title"]
        assert not titles, (text, titles)


def test_a_name_beginning_with_a_title_is_a_person(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2", "5"])
    verdict = checker.check("Like Aladdin, it has a voice by Michael Caine.", ev)
    assert [(m.kind, m.text) for m in verdict.unsupported] == [("name", "Michael Caine")]


def test_attributes_and_people_in_the_evidence_are_allowed(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("11", [])  # Michael, directed by Nora Ephron
    assert checker.check("Michael (1996) is a romantic comedy by Nora Ephron.", ev).faithful
    assert checker.check("Recommended by EASE: Michael, a comedy.", ev).faithful


def test_items_outside_the_vocabulary_are_matched_from_the_evidence() -> None:
    checker = FaithfulnessChecker.from_items(CATALOGUE[:3])
    new = ItemFacts("99", "Brand New Film", 2001, ("Drama",))
    ev = build_evidence("99", [], {"99": new}, source="popular")
    assert checker.check("Brand New Film (2001) is a drama.", ev).faithful
    assert not checker.check("Brand New Film (2001) is a drama, like Aladdin.", ev).faithful


def test_evidence_as_a_dict_is_accepted(checker: FaithfulnessChecker) -> None:
    ev = evidence_for("1", ["2"])
    assert checker.check("Like Aladdin, it is animated.", ev.to_dict()).faithful
