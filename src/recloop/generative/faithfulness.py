"""Is every title, genre, year, person and attribute an explanation names in its evidence?

:class:`FaithfulnessChecker` finds the names a text mentions by matching it against the whole
catalogue's vocabulary (titles with and without year and leading article, MovieLens'
``"Usual Suspects, The"`` form and alternative titles, genre names with plurals and adjectives
such as "animated", years and decades, attribute values such as people), longest match first,
ignoring case, accents and punctuation. Capitalised names that match nothing (an invented
person, studio or film) are reported too, as ``name``. A mention is supported when it refers
to the recommended item or a driver in the evidence; everything else is an offending mention.

What it does not judge: whether a true name is used in a false sentence ("Aladdin is a
horror film" passes when Horror is the recommended item's genre). It checks names, not claims.

Titles made only of common words or of a single word (``"Heat"``, ``"Before and After"``)
count as titles only where they read like one: capitalised and not opening a sentence, or
followed by a ``(year)``, or in quotes. A lower-case "heat" is a word, not a film. A
capitalised one-word title opening a sentence counts when its word is not an ordinary English
word (:func:`is_ordinary_word`): "Fargo is ..." names the film, "Heat is ..." may not. So does
an unknown capitalised word opening a sentence ("Shrek did it first"), and a title-cased run of
common words inside a sentence ("a comedy like Love Story").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from recloop.data.types import Catalog
from recloop.generative.evidence import (
    PERSON_ATTRIBUTES,
    Evidence,
    ItemFacts,
    catalog_facts,
    decade_of,
    reading_title,
)

MentionKind = Literal["title", "genre", "year", "decade", "person", "attribute", "name"]

_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
_DECADE = re.compile(r"^(?:(\d{2})|(1[89]\d0|20[0-3]0))['’]?s$")
_YEAR_AFTER = re.compile(r"^[.!?]*\s*[(\[,]?\s*((?:18[7-9]|19\d|20[0-3])\d)(?!\d)")
_SENTENCE_BREAK = re.compile(r"[.!?:;\n•]")
_OPEN_QUOTES = "\"“‘'*_«"
_ARTICLES = ("the", "a", "an", "la", "le", "les", "l", "il", "el", "los", "las", "der", "die")
_NAME_CONNECTORS = frozenset({"de", "del", "der", "van", "von", "da", "di", "du", "le", "la"})
# lower-case words inside a title-cased title ("All of Me", "Love and Death")
_TITLE_CONNECTORS = frozenset(
    {"of", "the", "and", "a", "an", "in", "on", "at", "to", "for", "with", "from", "by", "or"}
)
_DECADE_WORDS = {
    "twenties": 1920,
    "thirties": 1930,
    "forties": 1940,
    "fifties": 1950,
    "sixties": 1960,
    "seventies": 1970,
    "eighties": 1980,
    "nineties": 1990,
}
# Other ways to name a genre, by the genre's folded name (plurals are added for every genre).
GENRE_ALIASES: dict[str, tuple[str, ...]] = {
    "animation": ("animated", "cartoon", "cartoons"),
    "children": ("childrens", "kids", "kid"),
    "comedy": ("comedic", "comedies"),
    "drama": ("dramatic",),
    "romance": ("romantic", "romcom", "rom com"),
    "sci fi": ("science fiction", "scifi"),
    "film noir": ("noir", "films noirs"),
    "documentary": ("documentaries",),
    "mystery": ("mysteries",),
    "fantasy": ("fantasies",),
}
# Words a text may capitalise without naming anything (sentence openers, headings, pronouns),
# folded like every token (``fold``: "i'm" is "im"). With ``_FREQUENT_WORDS`` (at the end of
# the module) they are the ordinary words of :func:`is_ordinary_word`.
_COMMON_TEXT = """
    a about above after again against all also although always am among an and another any
    are around as at away back be because been before being below best between both but by
    can could did do does doing done down during each either enough even ever every few for
    from further get gets got had has have having he her here hers him his how however i if in
    into is it its itself just least less like likes liked may me might mine more most much
    must my near neither never new next no nor not now of off often old on once one only or
    other our ours out over own perhaps quite rather same see seen she should since so some
    such than that the their theirs them then there these they this those though through thus
    to too under until up upon us very was we well were what when where whether which while who
    whom whose why will with within without would yet you your yours yourself
    i'm you'll you're you've it's that's there's don't doesn't isn't won't can't we're we've
    because similar similarly recommended recommend recommendation recommendations suggest
    suggested suggestion pick picks picked choice watch watched watching watches enjoy enjoyed
    enjoying love loved loves fan fans viewer viewers people user users film films movie movies
    title titles story stories era decade year years release released classic genre genres
    here's why reason reasons based history taste tastes match matches mix together
    try give maybe sure great good fun popular close closely shared share shares sharing
    because also both so then just right now today tonight next, first second third last other
    model score semantic id ids sid catalogue catalog index prefix tv ok yes dear hi hello
    explanation note source evidence item items pick
    i'll i'd i've we'll they're they'll you'd he's she's let's what's didn't wasn't aren't
    couldn't wouldn't shouldn't haven't hasn't
    furthermore moreover likewise meanwhile afterwards otherwise whoever anyone everyone plus
    thanks nice superb brilliant fantastic wonderful delightful lovely excellent solid
    funny quirky clever witty gentle sweet bittersweet tense scary creepy eerie moody stylish
    sharp bold epic iconic gem poignant intense atmospheric silly goofy offbeat cult charming
    gripping thrilling hilarious touching heartwarming uplifting stunning timeless memorable
    unforgettable underrated overlooked beloved acclaimed award awards nominated
    lovers admirers newcomers teens grownups families audiences critics nostalgia suspense
    humour humor soundtrack cinematography dialogue pacing cast plot plots sequel sequels
    director directors actor actors actress performances twist twists ending endings
    revisit rewatch grab unlike laugh laughs laughter nostalgic whimsical magical playful
    cheerful dreamy gritty grim gory violent tender heartfelt spooky zany wacky campy breezy
    cosy cozy twisty slick joyful sadly oddly
    """


@dataclass(frozen=True, slots=True)
class Mention:
    """A name found in a text: its kind, how it was written, what it refers to, where."""

    kind: MentionKind
    text: str
    value: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The checker's answer: faithful when no mention is unsupported by the evidence."""

    faithful: bool
    mentions: tuple[Mention, ...]
    unsupported: tuple[Mention, ...]

    def summary(self) -> str:
        """One line naming the offending mentions (empty when faithful)."""
        return ", ".join(f"{m.text!r} ({m.kind})" for m in self.unsupported)

    def to_dict(self) -> dict[str, Any]:
        def row(m: Mention) -> dict[str, Any]:
            return {"kind": m.kind, "text": m.text, "value": m.value}

        return {
            "faithful": self.faithful,
            "mentions": [row(m) for m in self.mentions],
            "unsupported": [row(m) for m in self.unsupported],
        }


# ---------------------------------------------------------------------------- normalising
def fold(text: str) -> str:
    """Lower case, no accents, no possessive ``'s``, no inner apostrophes: one token's key."""
    if text == "&":
        return "and"
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"['’]s$", "", text)
    return text.replace("'", "").replace("’", "")


def phrase_key(text: str) -> tuple[str, ...]:
    """The folded tokens of ``text`` (``&`` reads as "and")."""
    return tuple(fold(t) for t in _TOKEN.findall(text))


COMMON_WORDS = frozenset(fold(w) for w in _COMMON_TEXT.replace(",", " ").split())
_INFLECTIONS = (
    ("ies", ("y",)),
    ("ied", ("y",)),
    ("ily", ("y",)),
    ("es", ("", "e")),
    ("s", ("",)),
    ("ed", ("", "e")),
    ("ing", ("", "e")),
    ("ly", ("", "le")),
    ("er", ("", "e")),
    ("est", ("", "e")),
)
_DERIVED = ("ly", "ing", "ed", "ful", "ous", "less", "able", "ible", "ive", "ness", "ment", "ical")


def is_ordinary_word(key: str) -> bool:
    """Whether the folded word ``key`` is an ordinary English word, one that may open a
    sentence without naming anything: a common word, one of the frequent English words (or
    an inflection of one: "critics", "directed", "deeper"), or a long adverb, participle or
    derived adjective ("heartwarming", "interestingly"). "fargo", "shrek" and "inception" are
    not; "heat" is."""
    if key in COMMON_WORDS or key in _FREQUENT_WORDS:
        return True
    for suffix, endings in _INFLECTIONS:
        stem = key[: -len(suffix)]
        if not key.endswith(suffix) or len(stem) < 3:
            continue
        stems = [stem + ending for ending in endings]
        if stem[-1] == stem[-2]:  # "stopped", "bigger"
            stems.append(stem[:-1])
        if any(s in COMMON_WORDS or s in _FREQUENT_WORDS for s in stems):
            return True
    return len(key) >= 7 and key.endswith(_DERIVED)


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: MentionKind
    value: str  # canonical: a title key, a genre's folded name, an attribute value's key
    ambiguous: bool  # matched only where it reads like a name (see the module docstring)


@dataclass
class Vocabulary:
    """Phrases (as folded token tuples) that name something, and what they name."""

    entries: dict[tuple[str, ...], list[_Entry]] = field(default_factory=dict)
    max_len: int = 1

    def add(self, key: tuple[str, ...], entry: _Entry) -> None:
        if not key:
            return
        found = self.entries.setdefault(key, [])
        if entry not in found:
            found.append(entry)
        self.max_len = max(self.max_len, len(key))

    def add_item(self, facts: ItemFacts) -> None:
        """The item's title forms, genres and attribute values."""
        canonical = title_key(facts.title)
        for form in title_forms(facts.title):
            self.add(form, _Entry("title", canonical, _is_ambiguous(form)))
        for genre in facts.genres:
            self.add_genre(genre)
        for name, value in facts.attribute_values():
            kind: MentionKind = "person" if name.lower() in PERSON_ATTRIBUTES else "attribute"
            key = phrase_key(value)
            self.add(key, _Entry(kind, " ".join(key), _is_ambiguous(key)))

    def add_genre(self, genre: str) -> None:
        key = phrase_key(genre)
        if not key:
            return
        canonical = " ".join(key)
        forms = {key, (*key[:-1], _plural(key[-1]))}
        forms.update(phrase_key(alias) for alias in GENRE_ALIASES.get(canonical, ()))
        for form in forms:
            self.add(form, _Entry("genre", canonical, False))

    def lookup(self, key: tuple[str, ...]) -> list[_Entry]:
        return self.entries.get(key, [])

    @classmethod
    def from_items(cls, items: Iterable[ItemFacts]) -> Vocabulary:
        vocabulary = cls()
        for facts in items:
            vocabulary.add_item(facts)
        return vocabulary


def title_key(title: str) -> str:
    """A title's canonical key: reading order, no leading article, no year, folded."""
    key = phrase_key(reading_title(title))
    return " ".join(_strip_article(key))


def title_forms(title: str) -> set[tuple[str, ...]]:
    """Ways a text may write ``title``: as stored, in reading order, without its leading
    article, its alternative title in parentheses, and each side of a ``": "`` subtitle."""
    forms: set[tuple[str, ...]] = set()
    alternative = re.search(r"\(([^()]*)\)\s*$", title)
    candidates = [title, re.sub(r"\s*\(.*\)\s*$", "", title), reading_title(title)]
    if alternative:
        candidates.append(reading_title(alternative.group(1)))
    for text in candidates:
        key = phrase_key(text)
        forms.update({key, _strip_article(key)})
        if ":" in text:
            for part in text.split(":"):
                part_key = _strip_article(phrase_key(part))
                if len(part_key) >= 2 and not _is_ambiguous(part_key):
                    forms.add(part_key)
    forms.discard(())
    return forms


def _strip_article(key: tuple[str, ...]) -> tuple[str, ...]:
    return key[1:] if len(key) > 1 and key[0] in _ARTICLES else key


def _is_ambiguous(key: tuple[str, ...]) -> bool:
    content = _strip_article(key)
    return len(content) <= 1 or all(token in COMMON_WORDS for token in content)


def _plural(word: str) -> str:
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word if word.endswith("s") else word + "s"


# ---------------------------------------------------------------------------- the checker
@dataclass(frozen=True, slots=True)
class _Token:
    raw: str
    key: str
    start: int
    end: int
    sentence_start: bool


class FaithfulnessChecker:
    """Finds the names a text mentions and flags those its evidence does not hold.

    ``flag_unknown_names`` also flags capitalised names that match nothing in the vocabulary
    (a person or film the catalogue does not know); turn it off for catalogues whose text is
    full of proper nouns the vocabulary lacks.
    """

    def __init__(self, vocabulary: Vocabulary, *, flag_unknown_names: bool = True) -> None:
        self.vocabulary = vocabulary
        self.flag_unknown_names = flag_unknown_names

    @classmethod
    def from_items(cls, items: Iterable[ItemFacts], **options: bool) -> FaithfulnessChecker:
        return cls(Vocabulary.from_items(items), **options)

    @classmethod
    def from_catalog(cls, catalog: Catalog, **options: bool) -> FaithfulnessChecker:
        return cls.from_items(catalog_facts(catalog).values(), **options)

    # -- public --------------------------------------------------------------------
    def mentions(self, text: str, evidence: Evidence | None = None) -> list[Mention]:
        """Every name ``text`` mentions, in order (the evidence's items added to the vocabulary)."""
        overlay = Vocabulary.from_items(evidence.items) if evidence is not None else Vocabulary()
        allowed_words = set(phrase_key(evidence.source)) if evidence is not None else set()
        return self._scan(text, overlay, allowed_words)

    def check(self, text: str, evidence: Evidence | Mapping[str, Any]) -> Verdict:
        """The verdict on ``text`` against ``evidence`` (an :class:`Evidence` or its dict)."""
        ev = evidence if isinstance(evidence, Evidence) else Evidence.from_dict(evidence)
        found = self.mentions(text, ev)
        return _verdict(found, _Support.of(ev.items, ev.source), judge_all=True)

    def check_names(self, text: str, items: Iterable[ItemFacts], *, source: str = "") -> Verdict:
        """The verdict on the items and names ``text`` mentions, against ``items`` only.

        As :meth:`check` with ``items`` as the evidence, but genres, decades and years not
        written after a title are not judged: for a text that may speak of any genre or period
        but must name no item (nor person, nor unknown name) outside ``items``, such as a
        conversation's answer.
        """
        shown = tuple(items)
        overlay = Vocabulary.from_items(shown)
        found = self._scan(text, overlay, set(phrase_key(source)))
        return _verdict(found, _Support.of(shown, source), judge_all=False)

    # -- scanning ------------------------------------------------------------------
    def _scan(self, text: str, overlay: Vocabulary, allowed_words: set[str]) -> list[Mention]:
        tokens = _tokenize(text)
        out: list[Mention] = []
        covered = [False] * len(tokens)
        max_len = max(self.vocabulary.max_len, overlay.max_len)
        i = 0
        while i < len(tokens):
            matched = self._match_phrase(text, tokens, i, max_len, overlay)
            if matched is not None:
                length, mentions = matched
                out.extend(mentions)
                for j in range(i, i + length):
                    covered[j] = True
                i += length
                continue
            number = _number_mention(text, tokens[i])
            if number is not None:
                out.append(number)
                covered[i] = True
            i += 1
        if self.flag_unknown_names:
            out.extend(_unknown_names(text, tokens, covered, allowed_words))
            out.sort(key=lambda m: m.start)
        return out

    def _match_phrase(
        self, text: str, tokens: list[_Token], i: int, max_len: int, overlay: Vocabulary
    ) -> tuple[int, list[Mention]] | None:
        for length in range(min(max_len, len(tokens) - i), 0, -1):
            key = tuple(t.key for t in tokens[i : i + length])
            entries = self.vocabulary.lookup(key) + [
                e for e in overlay.lookup(key) if e not in self.vocabulary.lookup(key)
            ]
            if not entries:
                continue
            year = _year_after(text, tokens, i + length)
            usable = [
                e
                for e in entries
                if not e.ambiguous or _reads_as_name(text, tokens, i, length, year)
            ]
            if not usable:
                continue
            start, end = tokens[i].start, tokens[i + length - 1].end
            mentions = [
                Mention(e.kind, text[start:end], e.value, start, end) for e in _one_per_kind(usable)
            ]
            consumed = length
            if year is not None and any(e.kind == "title" for e in usable):
                value, year_end, n_tokens = year
                titles = "|".join(e.value for e in usable if e.kind == "title")
                mentions.append(
                    Mention(
                        "year",
                        text[tokens[i + length].start : year_end],
                        f"{value}@{titles}",
                        tokens[i + length].start,
                        year_end,
                    )
                )
                consumed += n_tokens
            return consumed, mentions
        return None


def _verdict(found: list[Mention], support: _Support, *, judge_all: bool) -> Verdict:
    readings: dict[tuple[int, int], list[Mention]] = {}
    for mention in found:
        readings.setdefault((mention.start, mention.end), []).append(mention)

    def fine(m: Mention) -> bool:
        if not judge_all and (
            m.kind in ("genre", "decade") or (m.kind == "year" and "@" not in m.value)
        ):
            return True
        return support.allows(m)

    # a phrase with several readings ("Kids": a film, or the Children's genre) is supported
    # when one of them is
    unsupported = tuple(group[0] for group in readings.values() if not any(map(fine, group)))
    return Verdict(not unsupported, tuple(found), unsupported)


def _one_per_kind(entries: list[_Entry]) -> list[_Entry]:
    """Entries of one phrase, one per (kind, value); a phrase may name several items."""
    return list({(e.kind, e.value): e for e in entries}.values())


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    previous_end = 0
    for match in _TOKEN.finditer(text):
        gap = text[previous_end : match.start()]
        opens = not tokens or bool(_SENTENCE_BREAK.search(gap))
        tokens.append(_Token(match.group(), fold(match.group()), match.start(), match.end(), opens))
        previous_end = match.end()
    return tokens


def _year_after(text: str, tokens: list[_Token], index: int) -> tuple[int, int, int] | None:
    """A ``(1995)`` right after a phrase: (year, end offset, tokens it spans)."""
    if index >= len(tokens):
        return None
    previous_end = tokens[index - 1].end
    match = _YEAR_AFTER.match(text[previous_end:])
    if match is None or previous_end + match.start(1) != tokens[index].start:
        return None
    return int(match.group(1)), previous_end + match.end(1), 1


def _reads_as_name(
    text: str, tokens: list[_Token], i: int, length: int, year: tuple[int, int, int] | None
) -> bool:
    """Whether an ambiguous phrase is written like a title (see the module docstring)."""
    if year is not None:
        return True
    before = text[tokens[i].start - 1] if tokens[i].start > 0 else ""
    if before and before in _OPEN_QUOTES:
        return True
    first = tokens[i]
    if not first.raw[:1].isupper():
        return False
    following = tokens[i + length] if i + length < len(tokens) else None
    # "Michael Caine" is a person, not the film "Michael" followed by a word
    if (
        length == 1
        and following is not None
        and following.raw[:1].isupper()
        and not following.sentence_start
        and text[first.end : following.start].strip() == ""
    ):
        return False
    if not first.sentence_start:
        return True
    # opening a sentence, where every word is capitalised: "Fargo is ..." (or "The Birdcage
    # is ...") names the film, "Heat is ..." is read as the word
    content = tokens[i + 1 : i + length] if length > 1 and first.key in _ARTICLES else [first]
    return (
        len(content) == 1 and content[0].raw[:1].isupper() and not is_ordinary_word(content[0].key)
    )


def _number_mention(text: str, token: _Token) -> Mention | None:
    raw = token.raw
    decade = _DECADE.match(raw)
    if decade is not None:
        value = int(decade.group(1) or decade.group(2))
        if value < 100:
            value += 1900 if value >= 30 else 2000
        return Mention("decade", raw, str(value), token.start, token.end)
    if token.key in _DECADE_WORDS:
        return Mention("decade", raw, str(_DECADE_WORDS[token.key]), token.start, token.end)
    if len(raw) == 4 and raw.isdigit() and 1870 <= int(raw) <= 2039:
        before = text[max(0, token.start - 2) : token.start]
        if len(before) == 2 and before[1] in ".," and before[0].isdigit():
            return None  # a decimal or thousands part such as 0.1995, not a year
        return Mention("year", raw, raw, token.start, token.end)
    return None


def _unknown_names(
    text: str, tokens: list[_Token], covered: list[bool], allowed_words: set[str]
) -> list[Mention]:
    """Runs of capitalised words that matched nothing: a person, studio or film not known.

    A run of two or more words is reported wherever it stands; a single word when it does not
    open a sentence (where any word is capitalised) or, opening one, is not an ordinary word
    ("Shrek did it first", but not "Because ...") or is followed by a year ("Heat (1995)"). A
    title-cased run of common words inside a sentence ("like Love Story") is reported too.
    """

    def candidate(j: int) -> bool:
        token = tokens[j]
        return (
            not covered[j]
            and token.raw[:1].isupper()
            and token.key not in COMMON_WORDS
            and token.key not in allowed_words
        )

    def joins(k: int) -> bool:
        """Token ``k`` continues a run: a candidate, or a connector ("del", "Of") before one."""
        if tokens[k].sentence_start or covered[k]:
            return False
        if candidate(k):
            return True
        bridge = tokens[k].key in _NAME_CONNECTORS or (
            tokens[k].raw[:1].isupper() and tokens[k].key in COMMON_WORDS
        )
        return bridge and k + 1 < len(tokens) and candidate(k + 1)

    out = []
    reported = list(covered)
    j = 0
    while j < len(tokens):
        if not candidate(j):
            j += 1
            continue
        k = j + 1
        while k < len(tokens) and joins(k):
            k += 1
        first = tokens[j]
        if (
            k - j >= 2
            or not first.sentence_start
            or not is_ordinary_word(first.key)
            or _year_after(text, tokens, k) is not None  # "Heat (1995) is ..."
        ):
            start, end = first.start, tokens[k - 1].end
            out.append(Mention("name", text[start:end], fold(text[start:end]), start, end))
            reported[j:k] = [True] * (k - j)
        j = k
    out.extend(_title_cased_runs(text, tokens, reported, allowed_words))
    return out


def _title_cased_runs(
    text: str, tokens: list[_Token], reported: list[bool], allowed_words: set[str]
) -> list[Mention]:
    """Runs of two or more title-cased words inside a sentence that matched nothing, such as
    an unknown title made of common words ("a comedy like Love Story"); connectors such as
    "of" and "the" may join them in lower case. "I" and all-capital words do not count."""

    def title_cased(j: int) -> bool:
        token = tokens[j]
        return (
            not reported[j]
            and token.raw[:1].isupper()
            and not (len(token.raw) > 1 and token.raw.isupper())
            and not token.raw.startswith(("I'", "I’"))
            and token.raw != "I"
            and token.key not in allowed_words
        )

    out = []
    j = 0
    while j < len(tokens):
        if not title_cased(j):
            j += 1
            continue
        k, last = j + 1, j
        while k < len(tokens) and not tokens[k].sentence_start and not reported[k]:
            if title_cased(k):
                last = k
            elif tokens[k].key not in _TITLE_CONNECTORS:
                break
            k += 1
        # a run that opens a sentence is not judged ("To Be or Not to Be is ..."), unless a
        # year follows it ("Love Story (1970) is ...")
        opens = tokens[j].sentence_start and _year_after(text, tokens, last + 1) is None
        if last > j and not opens:
            start, end = tokens[j].start, tokens[last].end
            out.append(Mention("name", text[start:end], fold(text[start:end]), start, end))
        j = last + 1
    return out


# ---------------------------------------------------------------------------- support
@dataclass(frozen=True, slots=True)
class _Support:
    """What the evidence allows, in the checker's canonical values."""

    titles: frozenset[str]
    title_years: frozenset[tuple[str, int]]
    genres: frozenset[str]
    years: frozenset[int]
    decades: frozenset[int]
    values: frozenset[str]
    words: frozenset[str]

    @classmethod
    def of(cls, items: tuple[ItemFacts, ...], source: str) -> _Support:
        years = {f.year for f in items if f.year is not None}
        return cls(
            titles=frozenset(title_key(f.title) for f in items),
            title_years=frozenset((title_key(f.title), f.year) for f in items if f.year),
            genres=frozenset(" ".join(phrase_key(g)) for f in items for g in f.genres),
            years=frozenset(years),
            decades=frozenset(decade_of(y) for y in years),
            values=frozenset(
                " ".join(phrase_key(v)) for f in items for _, v in f.attribute_values()
            ),
            words=frozenset(phrase_key(source)),
        )

    def allows(self, mention: Mention) -> bool:
        kind = mention.kind
        if kind == "title":
            return mention.value in self.titles
        if kind == "genre":
            return mention.value in self.genres
        if kind == "decade":
            return int(mention.value) in self.decades
        if kind == "year":
            return self._allows_year(mention.value)
        if kind in ("person", "attribute"):
            return mention.value in self.values
        return all(word in self.words for word in mention.value.split())

    def _allows_year(self, value: str) -> bool:
        if "@" not in value:
            return int(value) in self.years
        year_text, titles = value.split("@", 1)
        year = int(year_text)
        keys = titles.split("|")
        known = [key for key in keys if key in self.titles]
        if known:  # "Title (year)": the year must be that title's
            return any((key, year) in self.title_years for key in known)
        return year in self.years


# ---------------------------------------------------------------------------- frequent words
FREQUENT_WORDS = "frequent_words.txt"
# About 2,400 of the most frequent English words, for :func:`is_ordinary_word`, in the package
# file ``frequent_words.txt``: the first 3,000 lower-case whole-word tokens (three letters or
# more) of SmolLM2's cased byte-level BPE vocabulary, in merge order (roughly frequency order),
# less the fragments ("wor", "includ") that all-MiniLM-L6-v2's WordPiece vocabulary does not
# hold as words. A word used mostly as a name ("Fargo", "Michael") is rarely a lower-case
# token, so it is not there; a film called by an ordinary word ("Heat", "Speed") is.
_FREQUENT_WORDS = frozenset(
    line.strip()
    for line in resources.files("recloop.generative")
    .joinpath(FREQUENT_WORDS)
    .read_text()
    .splitlines()
    if line.strip() and not line.startswith("#")
)
