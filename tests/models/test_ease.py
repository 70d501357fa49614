"""EASE: the shared contract, the closed form against a direct solve, and the memory guard."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from recloop.data import Interactions, Queries
from recloop.errors import RecloopError
from recloop.models.base import ModelConfig
from recloop.models.ease import (
    EASE,
    EASEConfig,
    available_memory_bytes,
    estimate_memory_bytes,
)

from .contract import ModelContract


class TestEASEContract(ModelContract):
    model_class = EASE
    invalid_configs: ClassVar = [
        {"l2": 0.0},
        {"l2": -1.0},
        {"dtype": "float16"},
        {"max_memory_gb": 0.0},
        {"l2": "lots"},
    ]

    def make_config(self) -> ModelConfig:
        return EASEConfig(l2=10.0)


def _random_data(n_users: int = 40, n_items: int = 15, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < 0.3
    users, items = np.nonzero(mask)
    return Interactions.from_arrays(users, items)


def test_closed_form_matches_a_direct_solve() -> None:
    data = _random_data()
    model = EASE(EASEConfig(l2=5.0, dtype="float64")).fit(data)
    x = data.to_csr().toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights_, b, rtol=1e-5, atol=1e-6)
    assert (np.diag(model.weights_) == 0).all()
    query = Queries.from_lists([-1], [[0, 3, 7]])
    np.testing.assert_allclose(model.score(query)[0], b[[0, 3, 7]].sum(axis=0), rtol=1e-5)


def test_float32_is_close_to_float64() -> None:
    data = _random_data()
    w64 = EASE(EASEConfig(l2=5.0, dtype="float64")).fit(data).weights_
    w32 = EASE(EASEConfig(l2=5.0, dtype="float32")).fit(data).weights_
    np.testing.assert_allclose(w32, w64, atol=1e-4)


def test_memory_guard_names_the_need_and_the_catalogue() -> None:
    data = _random_data(n_items=2000)
    model = EASE(EASEConfig(max_memory_gb=0.001))
    with pytest.raises(RecloopError, match=r"GiB .*2,000 × 2,000") as info:
        model.fit(data)
    assert not isinstance(info.value, MemoryError)
    assert "max_memory_gb" in str(info.value)


def test_auto_dtype_falls_back_to_float32() -> None:
    n = 3000
    between = (estimate_memory_bytes(n, np.float32) + estimate_memory_bytes(n, np.float64)) / 2
    model = EASE(EASEConfig(max_memory_gb=between / 2**30))
    assert model._choose_dtype(n) is np.float32
    assert EASE(EASEConfig(max_memory_gb=1.0))._choose_dtype(n) is np.float64
    with pytest.raises(RecloopError):
        EASE(EASEConfig(dtype="float64", max_memory_gb=between / 2**30))._choose_dtype(n)


def test_estimate_grows_with_the_square_of_the_catalogue() -> None:
    assert estimate_memory_bytes(2000, np.float64) == 4 * estimate_memory_bytes(1000, np.float64)
    assert estimate_memory_bytes(1000, np.float32) < estimate_memory_bytes(1000, np.float64)
    assert estimate_memory_bytes(10_000, np.float32) >= 10_000**2 * 4


def test_available_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemAvailable:   2048 kB\n")
    assert available_memory_bytes(meminfo) == 2048 * 1024
    assert available_memory_bytes(Path("/")) is None or available_memory_bytes(Path("/")) > 0
