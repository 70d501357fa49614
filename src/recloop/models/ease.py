"""EASE: a shallow linear autoencoder with a closed-form item × item weight matrix.

Steck (2019), "Embarrassingly Shallow Autoencoders for Sparse Data": with the binary users ×
items matrix ``X``, ``P = (XᵀX + λI)⁻¹`` and ``B = I − P · diag(1 / diag(P))``, so that
``diag(B) = 0`` and ``score = history @ B``. One dense ``n_items × n_items`` inversion:
``O(n_items³)`` time and ``O(n_items²)`` memory, checked against the memory available before
anything is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.errors import RecloopError
from recloop.models.base import ModelConfig, ScoringRecommender

GIB = 2**30
# Entries of the Gram matrix built per sparse product, to bound its temporary memory.
_GRAM_BLOCK_ENTRIES = 2**25


class EASEConfig(ModelConfig):
    """L2 penalty, working precision and an optional memory cap for the item × item solve."""

    l2: float = Field(default=300.0, gt=0.0, description="λ added to the Gram diagonal.")
    dtype: Literal["auto", "float32", "float64"] = Field(
        default="auto",
        description="Precision of the inversion; 'auto' is float64 when it fits, else float32.",
    )
    max_memory_gb: float | None = Field(
        default=None,
        gt=0.0,
        description="Memory the fit may use, in GiB; None reads MemAvailable from the system.",
    )


class EASE(ScoringRecommender):
    """Closed-form item–item regression with a zero diagonal (Steck 2019)."""

    config_class = EASEConfig
    config: EASEConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        n = train.n_items
        dtype = self._choose_dtype(n)
        gram = _gram(train.to_csr(), dtype)  # XᵀX, dense, Fortran order
        gram[np.diag_indices(n)] += self.config.l2
        # The Gram matrix is symmetric, so its Fortran-ordered buffer can be inverted in place.
        inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        del gram
        weights = inverse  # B_ij = −P_ij / P_jj, then diag(B) = 0
        weights /= -np.diag(inverse)[None, :]
        weights[np.diag_indices(n)] = 0.0
        self.weights_ = np.ascontiguousarray(weights, dtype=np.float32)

    def _choose_dtype(self, n_items: int) -> type[np.floating[Any]]:
        """The working precision, or a clear error when even float32 does not fit."""
        available = (
            self.config.max_memory_gb * GIB
            if self.config.max_memory_gb is not None
            else available_memory_bytes()
        )
        wanted = self.config.dtype
        options: list[type[np.floating[Any]]] = (
            [np.float64, np.float32]
            if wanted == "auto"
            else [np.float64 if wanted == "float64" else np.float32]
        )
        if available is None:
            return options[0]
        for dtype in options:
            if estimate_memory_bytes(n_items, dtype) <= available:
                return dtype
        need = estimate_memory_bytes(n_items, options[-1])
        source = "max_memory_gb" if self.config.max_memory_gb is not None else "MemAvailable"
        raise RecloopError(
            f"EASE needs about {need / GIB:.1f} GiB for its {n_items:,} × {n_items:,} item "
            f"matrix ({np.dtype(options[-1]).name}) but only {available / GIB:.1f} GiB is "
            f"available ({source}); use ItemKNN, filter the catalogue, or raise max_memory_gb"
        )

    def _score(self, queries: Queries) -> np.ndarray:
        history = queries.history_csr(self.n_items_)
        return np.asarray(history @ self.weights_, dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.weights_ = arrays["weights"]


def estimate_memory_bytes(n_items: int, dtype: type[np.floating[Any]]) -> int:
    """Peak bytes of a fit: the Gram matrix inverted in place, plus float32 weights if wider.

    Ten per cent is added for LAPACK's workspace and the sparse Gram blocks.
    """
    size = np.dtype(dtype).itemsize
    copies = 1.0 + (4 / size if size > 4 else 0.0)
    return int(1.1 * copies * size * n_items * n_items)


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory the system can give without swapping (``MemAvailable``), or None if unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                value, unit = line.split()[1:3]
                return int(value) * (1024 if unit.lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gram(x: sp.csr_matrix, dtype: type[np.floating[Any]]) -> np.ndarray:
    """Dense ``XᵀX`` in Fortran order, built a block of columns at a time."""
    x = sp.csc_matrix(x, dtype=dtype)
    n = x.shape[1]
    x_t = x.T.tocsr()
    gram = np.zeros((n, n), dtype=dtype, order="F")
    block = max(1, _GRAM_BLOCK_ENTRIES // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        gram[:, start:stop] = (x_t @ x[:, start:stop]).toarray()
    return gram
