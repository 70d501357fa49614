"""Tokenizers: clusters found at level 1, unique suffixed IDs, determinism, save/load, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import adjusted_rand_score  # type: ignore[import-untyped]

from recloop.errors import ConfigError, RecloopError
from recloop.semantic_ids.tokenizers import (
    RQVAE,
    ResidualKMeans,
    ResidualKMeansConfig,
    RQVAEConfig,
    Tokenizer,
    add_suffix,
    make_tokenizer,
)

torch.set_num_threads(1)

CLUSTERS = 8
K = 16  # spare codes: a cluster may take two level-1 codes, but a code must not mix clusters
FAST_RQVAE: dict[str, object] = {
    "levels": 3,
    "codebook_size": K,
    "latent_dim": 8,
    "hidden_dims": (32,),
    "epochs": 40,
    "batch_size": 64,
    "lr": 3e-3,
}


def clustered(
    n_per: int = 40, dim: int = 16, clusters: int = CLUSTERS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``clusters`` well-separated Gaussian clusters and each item's cluster.

    Each cluster holds 4 sub-clusters, so deeper levels have structure to find. Items are
    shuffled: a cluster's members are not contiguous.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)) * 4.0
    offsets = rng.standard_normal((clusters, 4, dim))
    labels = rng.permutation(np.repeat(np.arange(clusters), n_per))
    sub = rng.integers(0, 4, len(labels))
    x = centres[labels] + offsets[labels, sub] + rng.standard_normal((len(labels), dim)) * 0.3
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture(scope="module")
def kmeans(data: tuple[np.ndarray, np.ndarray]) -> ResidualKMeans:
    return ResidualKMeans(ResidualKMeansConfig(codebook_size=K)).fit(data[0])


@pytest.fixture(scope="module")
def rqvae(data: tuple[np.ndarray, np.ndarray]) -> RQVAE:
    return RQVAE(RQVAEConfig(**FAST_RQVAE)).fit(data[0])


@pytest.fixture(params=["kmeans", "rqvae"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)


def purity(labels: np.ndarray, codes: np.ndarray) -> float:
    """Share of items whose code's majority cluster is their own."""
    table = np.zeros((codes.max() + 1, labels.max() + 1))
    np.add.at(table, (codes, labels), 1)
    return float(table.max(axis=1).sum() / len(labels))


# -- clusters -------------------------------------------------------------------------


def test_level_one_codes_agree_with_the_clusters(
    tokenizer: Tokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = data
    codes = tokenizer.encode(x)
    assert codes.shape == (len(x), 3)
    assert codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < tokenizer.codebook_size
    assert purity(labels, codes[:, 0]) > 0.98  # no level-1 code mixes clusters
    assert adjusted_rand_score(labels, codes[:, 0]) > 0.6  # nor is a cluster shattered


def test_residual_kmeans_with_one_code_per_cluster_finds_them_exactly(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, labels = data
    codes = ResidualKMeans(ResidualKMeansConfig(codebook_size=CLUSTERS)).fit(x).encode(x)
    assert adjusted_rand_score(labels, codes[:, 0]) > 0.99


def test_reconstruction_error_falls_with_depth(
    tokenizer: Tokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x = data[0]
    codes = tokenizer.encode(x)
    errors = [float(np.mean((tokenizer.reconstruct(codes, d) - x) ** 2)) for d in (1, 2, 3)]
    assert errors[-1] < errors[0]
    if isinstance(tokenizer, ResidualKMeans):  # guaranteed level by level without a decoder
        assert errors[0] > errors[1] > errors[2]
    assert errors[0] < 0.1 * float(np.mean((x - x.mean(axis=0)) ** 2))  # clusters explained


def test_residual_kmeans_reconstruction_is_the_sum_of_code_vectors(
    kmeans: ResidualKMeans, data: tuple[np.ndarray, np.ndarray]
) -> None:
    codes = kmeans.encode(data[0][:5])
    expected = sum(kmeans.codebooks_[level][codes[:, level]] for level in range(2))
    np.testing.assert_allclose(kmeans.reconstruct(codes, 2), expected, rtol=1e-6)


def test_rqvae_losses_fall(rqvae: RQVAE) -> None:
    assert len(rqvae.losses_) == FAST_RQVAE["epochs"]
    assert rqvae.losses_[-1] < 0.5 * rqvae.losses_[0]


# -- suffix ---------------------------------------------------------------------------


def test_add_suffix_by_hand() -> None:
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [3, 3], [0, 0]])
    ids = add_suffix(codes)
    np.testing.assert_array_equal(ids[:, :2], codes)
    np.testing.assert_array_equal(ids[:, 2], [0, 0, 1, 2, 0, 1])
    assert ids.dtype == np.int64


def test_add_suffix_equals_a_loop_and_makes_rows_unique() -> None:
    codes = np.random.default_rng(1).integers(0, 3, size=(500, 3))
    ids = add_suffix(codes)
    seen: dict[tuple[int, ...], int] = {}
    expected = []
    for row in map(tuple, codes.tolist()):
        expected.append(seen.get(row, 0))
        seen[row] = seen.get(row, 0) + 1
    np.testing.assert_array_equal(ids[:, -1], expected)
    assert len(np.unique(ids, axis=0)) == len(ids)
    unique_rows = np.array([seen[tuple(r)] == 1 for r in codes.tolist()])
    assert (ids[unique_rows, -1] == 0).all()


def test_add_suffix_keeps_existing_items_when_new_ones_are_appended() -> None:
    old = np.array([[0, 1], [0, 1], [2, 2]])
    new = np.array([[0, 1], [2, 2], [5, 5]])
    both = add_suffix(np.vstack([old, new]))
    np.testing.assert_array_equal(both[:3], add_suffix(old))
    np.testing.assert_array_equal(both[3:, -1], [2, 1, 0])


def test_add_suffix_edge_cases() -> None:
    assert add_suffix(np.zeros((0, 3), dtype=np.int64)).shape == (0, 4)
    with pytest.raises(ConfigError, match="2-D integer"):
        add_suffix(np.zeros(3, dtype=np.int64))
    with pytest.raises(ConfigError, match="2-D integer"):
        add_suffix(np.zeros((3, 2)))


# -- determinism and artifacts ----------------------------------------------------------


def test_encode_is_deterministic_and_batch_independent(
    tokenizer: Tokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x = data[0]
    codes = tokenizer.encode(x)
    np.testing.assert_array_equal(codes, tokenizer.encode(x))
    np.testing.assert_array_equal(codes[7:19], tokenizer.encode(x[7:19]))
    assert tokenizer.encode(x[:0]).shape == (0, 3)


@pytest.mark.parametrize("kind", ["kmeans", "rqvae"])
def test_same_seed_same_codes(kind: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x = data[0][:120]
    cfg = (
        ResidualKMeansConfig(codebook_size=K, levels=2)
        if kind == "kmeans"
        else RQVAEConfig(**{**FAST_RQVAE, "epochs": 5})
    )
    first, second = make_tokenizer(cfg).fit(x), make_tokenizer(cfg).fit(x)
    np.testing.assert_array_equal(first.encode(x), second.encode(x))
    np.testing.assert_array_equal(
        first.reconstruct(first.encode(x), 1), second.reconstruct(second.encode(x), 1)
    )


def test_save_load_round_trip(
    tokenizer: Tokenizer, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = data[0]
    tokenizer.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "manifest.json",
        "weights.safetensors",
    ]
    manifest = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert manifest["model"] == type(tokenizer).__name__
    loaded = type(tokenizer).load(tmp_path / "tok")
    assert loaded.config == tokenizer.config
    codes = tokenizer.encode(x)
    np.testing.assert_array_equal(loaded.encode(x), codes)
    for depth in (1, 3):
        np.testing.assert_array_equal(
            loaded.reconstruct(codes, depth), tokenizer.reconstruct(codes, depth)
        )


def test_load_checks_the_kind(kmeans: ResidualKMeans, tmp_path: Path) -> None:
    kmeans.save(tmp_path / "km")
    with pytest.raises(RecloopError, match="'ResidualKMeans' model, not 'RQVAE'"):
        RQVAE.load(tmp_path / "km")


# -- codebook care --------------------------------------------------------------------


def test_dead_code_restarts_keep_the_codebook_in_use() -> None:
    # a random MLP squeezes 16 tight clusters into a small latent region; without k-means
    # initialisation the tiny uniform codebook leaves most codes unchosen
    x, _ = clustered(n_per=20, clusters=16, seed=3)
    base = {**FAST_RQVAE, "codebook_size": 32, "kmeans_init": False, "epochs": 25}
    used = {}
    for restart in (False, True):
        cfg = RQVAEConfig(**{**base, "dead_code_restart": restart})
        codes = RQVAE(cfg).fit(x).encode(x)
        used[restart] = [len(np.unique(codes[:, level])) / 32 for level in range(3)]
    assert min(used[True]) >= 0.5
    assert sum(used[True]) > sum(used[False])


def test_kmeans_initialisation_uses_the_codebook(rqvae: RQVAE) -> None:
    assert rqvae.restarts_[-1] == 0  # never restarts after the last epoch
    codes = rqvae.encode(clustered()[0])
    assert min(len(np.unique(codes[:, level])) for level in range(3)) >= 0.75 * K


# -- configs and errors -----------------------------------------------------------------


def test_make_tokenizer() -> None:
    assert isinstance(make_tokenizer(ResidualKMeansConfig()), ResidualKMeans)
    rq = make_tokenizer(RQVAEConfig())
    assert isinstance(rq, RQVAE) and isinstance(rq, Tokenizer)
    assert (rq.levels, rq.codebook_size) == (3, 256)
    assert RQVAEConfig().beta == 0.25
    with pytest.raises(ConfigError, match="no tokenizer"):
        make_tokenizer(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a RQVAEConfig"):
        RQVAE(ResidualKMeansConfig())


@pytest.mark.parametrize(
    "bad",
    [
        {"levels": 0},
        {"codebook_size": 1},
        {"hidden_dims": (32, 0)},
        {"beta": -1.0},
        {"epochs": 0},
        {"lr": 0.0},
        {"threads": 0},
        {"unknown": 1},
    ],
)
def test_invalid_configs(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RQVAEConfig(**bad)


def test_configs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        ResidualKMeansConfig().levels = 2  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["kmeans", "rqvae"])
def test_bad_fit_input(kind: str) -> None:
    tok = make_tokenizer(
        ResidualKMeansConfig(codebook_size=K) if kind == "kmeans" else RQVAEConfig(**FAST_RQVAE)
    )
    x = clustered(n_per=2)[0]
    with pytest.raises(ConfigError, match="at least codebook_size=16 items, got 15"):
        tok.fit(x[:15])
    with pytest.raises(ConfigError, match="2-D"):
        tok.fit(x[:, 0])
    nan = x.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ConfigError, match=r"NaN or infinite values in 1 rows \(first: row 3\)"):
        tok.fit(nan)
    with pytest.raises(ConfigError, match="numeric"):
        tok.fit(x.astype(str))
    with pytest.raises(RecloopError, match="not fitted"):
        tok.encode(x)


def test_bad_encode_and_reconstruct_input(
    tokenizer: Tokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x = data[0]
    with pytest.raises(ConfigError, match="have 15 dims; the tokenizer was fit on 16"):
        tokenizer.encode(x[:, :15])
    with pytest.raises(ConfigError, match="NaN"):
        tokenizer.encode(np.full((2, 16), np.inf, dtype=np.float32))
    codes = tokenizer.encode(x[:4])
    with pytest.raises(ConfigError, match="depth must be between 1 and 3"):
        tokenizer.reconstruct(codes, 0)
    with pytest.raises(ConfigError, match=r"codes must lie in \[0, 16\)"):
        tokenizer.reconstruct(codes + K, 1)
    with pytest.raises(ConfigError, match="2 levels; 3 are needed"):
        tokenizer.reconstruct(codes[:, :2], 3)
    # suffixed IDs are fine: only the first `depth` columns are read
    np.testing.assert_array_equal(
        tokenizer.reconstruct(add_suffix(codes), 3), tokenizer.reconstruct(codes, 3)
    )
