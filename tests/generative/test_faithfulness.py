"""The faithfulness checker: finds every name a text mentions, flags those outside the evidence."""

from __future__ import annotations

import pytest

from recloop.generative.evidence import ItemFacts, build_evidence
from recloop.generative.faithfulness import (
    FaithfulnessChecker,
    fold,
    is_ordinary_word,
    title_forms,
    title_key,
)

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


# ---------------------------------------------------------- sentence openers and title case
AUDIT = [
    *CATALOGUE,
    ItemFacts("13", "Fargo", 1996, ("Crime", "Drama", "Thriller")),
    ItemFacts("14", "Birdcage, The", 1996, ("Comedy",)),
]


def test_a_film_or_name_opening_a_sentence_is_caught() -> None:
    checker = FaithfulnessChecker.from_items(AUDIT)
    ev = evidence_for("1", ["2", "5"])  # Toy Story, because of Aladdin and The Lion King
    planted = {
        "Because you watched Aladdin, try it. Fargo is another favourite of yours.": "Fargo",
        "Because you watched Aladdin, try it. The Birdcage is one too.": "The Birdcage",
        "Because you watched Aladdin, try it. Inception fans love it too.": "Inception",
        "Because you watched Aladdin, try it. Shrek did it first.": "Shrek",
        "Like Aladdin, it is animated. Heat (1995) is not.": "Heat",  # a year: a title
        "Like Aladdin, it is an animated comedy like Love Story.": "Love Story",
        "Like Aladdin, it is as sweet as All of Me.": "All of Me",
        "Like Aladdin, it is animated. Love Story (1970) is not.": "Love Story",
    }
    for text, name in planted.items():
        verdict = checker.check(text, ev)
        assert name in [m.text for m in verdict.unsupported], (text, verdict.summary())


def test_ordinary_words_opening_a_sentence_are_not_names() -> None:
    checker = FaithfulnessChecker.from_items(AUDIT)
    ev = evidence_for("1", ["2", "5"])
    for text in [
        "Because you watched Aladdin, I'm sure you'll like Toy Story. It is animated.",
        "Fans of Aladdin tend to enjoy Toy Story. Critics loved both.",
        "Interestingly, Toy Story shares a lot with Aladdin. I'd watch it tonight.",
        "Quirky and warm, Toy Story is a natural next step after Aladdin.",
        "Heartwarming and funny, it is an animated comedy like The Lion King.",
        "Featuring lovable characters, Toy Story follows Aladdin. Enjoy!",
        "Families will love Toy Story. Audiences adored it, as they did Aladdin.",
        "Overall, a great pick. Similarly animated, Toy Story and Aladdin are from the 1990s.",
        "Heat is what you feel before and after watching Aladdin.",  # an ordinary word
        "Laughs abound in Toy Story, much like Aladdin. Nostalgic and sweet.",
        "To Be or Not to Be is no more a comedy than Aladdin. Toy Story is.",  # opens a sentence
    ]:
        verdict = checker.check(text, ev)
        assert verdict.faithful, (text, verdict.summary())


def test_ordinary_words_are_common_frequent_inflected_or_derived() -> None:
    assert all(is_ordinary_word(w) for w in ("because", "im", "heat", "critics", "deeper"))
    assert all(is_ordinary_word(w) for w in ("directed", "heartwarming", "whimsical"))
    assert not any(is_ordinary_word(w) for w in ("fargo", "shrek", "inception", "michael"))


def test_check_names_judges_items_and_names_but_not_genres_or_free_years() -> None:
    checker = FaithfulnessChecker.from_items(AUDIT)
    shown = [FACTS["1"], FACTS["2"]]
    assert checker.check_names(
        "Toy Story (1995): a 1980s horror romp, like Aladdin.", shown
    ).faithful
    for text, name in [
        ("Toy Story is great, and so is Fargo.", "Fargo"),
        ("Toy Story (1994) is great.", "1994"),  # a year written after a title is judged
        ("Toy Story is great. Inception is better.", "Inception"),
    ]:
        verdict = checker.check_names(text, shown)
        assert [m.text for m in verdict.unsupported] == [name], (text, verdict.summary())
