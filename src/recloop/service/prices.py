"""Exposure prices for a served model version: the global exposure-fair re-ranker, per request.

:func:`recloop.engine.exposure_prices.exposure_price_rerank` chooses a whole batch of users'
top-k lists jointly, trading relevance for an even spread of impressions; its item prices (the
LP's duals) reproduce those lists one user at a time. Here they are fitted on the stored users'
histories for one model version (:func:`fit_prices`, ``recloop model prices``), kept in the home
folder next to the versions (``exposure_prices/<version>.npz`` + ``.json``), and applied by every
worker to that version's candidates (:class:`PriceHolder`, :meth:`ExposurePrices.rerank`).

Prices belong to the version whose scores they were fitted on; a new version has none until
they are fitted for it (the retrainer refits them with the replaced version's settings before it
activates the new one). Users who turned training consent off are left out of the fit, as they
are of training.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recloop.data.types import Exclusions, Queries
from recloop.engine.exposure_prices import exposure_price_rerank, priced_scores
from recloop.errors import ConfigError
from recloop.eval.beyond import exposure_gini
from recloop.service.engine import Candidate

log = logging.getLogger("recloop.service")

FORMAT = "recloop-exposure-prices/1"
CHUNK_USERS = 1024  # users scored at once while fitting (bounds the users × items matrix)


@dataclass(frozen=True)
class ExposurePrices:
    """One version's fitted prices: ``prices[item_id]`` in z-units (only differences matter)."""

    version: str
    prices: dict[str, float]
    default: float  # the price of an item the fit never saw as a candidate (the cheapest)
    strength: float
    candidates: int
    manifest: dict[str, Any]

    def rerank(self, candidates: Sequence[Candidate], n: int) -> list[Candidate]:
        """The ``n`` candidates with the highest ``z − price`` first, in the model's order, then
        the rest in ``z − price`` order; ``z`` is each candidate's score as a z-score over the
        given candidates, as in the fit, so pass the model's top :attr:`candidates`."""
        if not candidates:
            return []
        scores = np.array([[c.score for c in candidates]], dtype=np.float64)
        price = np.array([self.prices.get(c.item_id, self.default) for c in candidates])
        adjusted = priced_scores(np.arange(len(candidates))[None, :], scores, price)[0]
        order = np.argsort(-adjusted, kind="stable")  # ties: the model's order
        chosen = np.sort(order[:n])
        return [candidates[int(i)] for i in (*chosen, *order[n:])]


def prices_paths(prices_dir: Path, version: str) -> tuple[Path, Path]:
    """``(arrays, manifest)`` of ``version``'s prices."""
    return prices_dir / f"{version}.npz", prices_dir / f"{version}.json"


def load_prices(prices_dir: Path, version: str) -> ExposurePrices | None:
    """``version``'s prices, or None when none are fitted; a damaged file is a ConfigError."""
    arrays_path, manifest_path = prices_paths(prices_dir, version)
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        with np.load(arrays_path, allow_pickle=False) as arrays:
            item_ids, prices = arrays["item_ids"], arrays["prices"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"exposure prices of {version} in {prices_dir}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != version:
        raise ConfigError(f"{manifest_path}: not {version}'s exposure prices ({FORMAT})")
    if item_ids.shape != prices.shape or not np.isfinite(prices).all():
        raise ConfigError(f"{arrays_path}: item_ids and prices must be equal-length, finite")
    return ExposurePrices(
        version=version,
        prices=dict(zip(item_ids.tolist(), prices.tolist(), strict=True)),
        default=float(manifest["default_price"]),
        strength=float(manifest["strength"]),
        candidates=int(manifest["candidates"]),
        manifest=manifest,
    )


def clear_prices(prices_dir: Path, version: str) -> bool:
    """Remove ``version``'s prices (the manifest first, so no reader sees half); True if any."""
    found = False
    for path in reversed(prices_paths(prices_dir, version)):
        if path.exists():
            path.unlink()
            found = True
    return found


def fit_prices(
    store: Any,
    registry: Any,
    prices_dir: Path,
    version: str,
    strength: float,
    *,
    candidates: int = 100,
    k: int = 10,
    max_users: int | None = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit ``version``'s exposure prices on the stored users' histories and save them.

    Every stored user with a positive event the model knows (at most ``max_users`` of them,
    drawn with ``seed``) gets the model's top ``candidates``, excluding every item they have an
    event for; the users' top-``k`` lists are then chosen jointly with ``strength`` (the exposure
    price in z-units, as in the benchmark) and the LP's item prices are saved. Returns the
    manifest, which records the batch's exposure Gini@k before and after.
    """
    from recloop.models.base import top_k
    from recloop.service.bootstrap import interactions_from_store

    if not (np.isfinite(strength) and strength >= 0):
        raise ConfigError(f"strength must be a finite number >= 0, not {strength!r}")
    if not 1 <= k <= candidates:
        raise ConfigError(f"need 1 <= k <= candidates, not k={k}, candidates={candidates}")
    began = time.perf_counter()
    loaded = registry.load(version)
    data = interactions_from_store(store, users=loaded.users, items=loaded.items)
    pos_indptr, pos_items = data.histories()
    all_indptr, all_items = data.histories(positive_only=False)
    users = np.flatnonzero(np.diff(pos_indptr) > 0)
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    if not len(users):
        raise ConfigError("no stored user has a positive event the model knows: nothing to fit")
    n_items = len(loaded.items)
    every = np.arange(len(pos_indptr) - 1)
    positives = Queries(every, pos_indptr, pos_items)
    seen_all = Queries(every, all_indptr, all_items)  # every item with an event: excluded
    cand = np.full((len(users), candidates), -1, dtype=np.int64)
    cand_scores = np.full((len(users), candidates), -np.inf, dtype=np.float32)
    for start in range(0, len(users), CHUNK_USERS):
        chunk = users[start : start + CHUNK_USERS]
        seen = Exclusions.from_history(seen_all.take(chunk))
        scores = loaded.model.score(positives.take(chunk))
        rows = slice(start, start + len(chunk))
        cand[rows], cand_scores[rows] = top_k(scores, candidates, seen.to_csr(n_items))
    allocation = exposure_price_rerank(cand, cand_scores, strength, k, n_items=n_items)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "strength": float(strength),
        "candidates": candidates,
        "k": k,
        "max_users": max_users,
        "seed": seed,
        "users": len(users),
        "fitted_at": time.time(),
        "seconds": round(time.perf_counter() - began, 3),
        "gini_before": exposure_gini(cand[:, :k], n_items, k),
        "gini_after": exposure_gini(allocation.items, n_items, k),
        "default_price": float(allocation.prices.min()),
    }
    _save(prices_dir, version, loaded.items.ids(np.arange(n_items)), allocation.prices, manifest)
    return manifest


def _save(
    prices_dir: Path, version: str, item_ids: Sequence[str], prices: np.ndarray, manifest: dict
) -> None:
    """Arrays first, the manifest last (it is what marks the prices as present), each written
    to a temporary file and renamed, so a reader sees the old prices or the new, never half."""
    prices_dir.mkdir(parents=True, exist_ok=True)
    arrays_path, manifest_path = prices_paths(prices_dir, version)
    tmp = arrays_path.with_suffix(".tmp.npz")
    np.savez(tmp, item_ids=np.asarray(item_ids, dtype=str), prices=np.asarray(prices, float))
    os.replace(tmp, arrays_path)
    tmp_manifest = manifest_path.with_suffix(".json.tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp_manifest, manifest_path)


class PriceHolder:
    """This worker's prices for the active version, re-read when their manifest changes.

    At most every ``check_every_s`` a request looks at the manifest's modification time (one
    ``stat``), so newly fitted or cleared prices reach every worker within that.
    """

    def __init__(self, prices_dir: Path, *, check_every_s: float = 1.0) -> None:
        self.prices_dir = prices_dir
        self.check_every_s = check_every_s
        self._lock = threading.Lock()
        self._version: str | None = None
        self._stamp: int | None = None
        self._prices: ExposurePrices | None = None
        self._next_check = 0.0

    def current(self, version: str) -> ExposurePrices | None:
        now = time.monotonic()
        if version == self._version and now < self._next_check:
            return self._prices
        with self._lock:
            self._next_check = now + self.check_every_s
            stamp = _mtime(prices_paths(self.prices_dir, version)[1])
            if version != self._version or stamp != self._stamp:
                try:
                    self._prices = load_prices(self.prices_dir, version)
                except ConfigError:
                    log.exception("cannot read the exposure prices of %s; serving without", version)
                    self._prices = None
                self._version, self._stamp = version, stamp
            return self._prices


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
