"""TIGER: generative retrieval that decodes the next item's Semantic ID (Rajput et al., 2023).

Each item's text is embedded and tokenised into a Semantic ID (see
:mod:`recloop.semantic_ids`); :class:`recloop.models.tiger_net.TigerNet` reads a history as
SID-embedded items and decodes the next item's ID level by level. Recommendation is batched
beam search constrained by a :class:`recloop.semantic_ids.trie.PrefixTrie`, so every result
is a real item, and the query's exclusions are applied inside the trie's masks: a prefix
whose items are all excluded is never expanded. Scores are sequence log-probabilities.

Cold start: items with no train interactions (and items added later with
:meth:`TIGER.add_items`) get IDs from their text through the frozen tokenizer and enter the
trie without retraining. The decoder has never produced their full IDs, so, as in the paper,
a cold item joins the candidates when a beam generates its first L − 1 codes (L semantic
levels; ``cold_match_levels`` to change it), scored by that prefix's log-probability; at most
``cold_share`` of a list may be cold items (tuned on the ``cold_items`` validation cold set).
Matching all L codes reaches almost nothing: a good tokenizer gives most items a full
semantic prefix of their own, which the decoder has never seen and so does not generate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import Field, model_validator

from recloop.data.split import Split
from recloop.data.types import Catalog, Exclusions, Interactions, Queries, Users
from recloop.errors import ConfigError, RecloopError
from recloop.models.base import (
    POPULAR_SOURCE,
    ModelConfig,
    loading,
    read_artifact,
    require_catalog,
    top_k,
    train_interactions,
    write_artifact,
)
from recloop.models.neural import NeuralConfig, train_network
from recloop.models.sasrec import last_items, owned_training_windows
from recloop.models.tiger_net import TigerNet, user_buckets
from recloop.semantic_ids.build import (
    SEMANTIC_IDS_DIR,
    SEMANTIC_IDS_KEY,
    SemanticIdConfig,
    SemanticIds,
    check_semantic_ids,
    semantic_ids_record,
)
from recloop.semantic_ids.trie import Blocked, PrefixTrie
from recloop.training import (
    BatchFactory,
    TrainResult,
    load_numpy_state,
    state_to_numpy,
)

DECODE_BATCH = 128  # queries per beam-search batch


class TIGERConfig(NeuralConfig):
    """Semantic IDs, encoder–decoder shape, beam search and cold start of TIGER."""

    semantic_ids: SemanticIdConfig = Field(
        default_factory=SemanticIdConfig, description="How item text becomes Semantic IDs."
    )
    max_len: int = Field(default=50, ge=1, description="Most recent items the encoder reads.")
    hidden: int = Field(default=128, ge=8, description="Embedding and hidden width.")
    encoder_layers: int = Field(default=2, ge=1, description="Encoder blocks.")
    decoder_layers: int = Field(default=2, ge=1, description="Decoder blocks.")
    n_heads: int = Field(default=4, ge=1, description="Attention heads (must divide hidden).")
    feedforward: int = Field(default=256, ge=1, description="Feed-forward width.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="Dropout everywhere.")
    user_buckets: int = Field(
        default=0, ge=0, description="Hashed user-token buckets (0: no user token)."
    )
    beam: int = Field(
        default=20,
        ge=1,
        description="Beam width (raised to k when k is larger, up to the number of IDs).",
    )
    cold_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Most of a list that may be cold items."
    )
    cold_match_levels: int | None = Field(
        default=None,
        ge=1,
        description="Leading codes a cold item must share with a generated ID (None: L − 1).",
    )
    windows: Literal["last", "all"] = Field(
        default="all", description="Train on each user's last max_len items or on every chunk."
    )
    batch_size: int = Field(default=128, ge=1, description="Sequences per optimiser step.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TIGERConfig:
        if self.hidden % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden ({self.hidden})")
        return self


class TIGER:
    """Generative retrieval over Semantic IDs with trie-constrained beam search."""

    config_class: ClassVar[type[ModelConfig]] = TIGERConfig
    config: TIGERConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else TIGERConfig()  # type: ignore[assignment]
        if not isinstance(self.config, TIGERConfig):
            raise ConfigError(f"TIGER needs a TIGERConfig, not {type(self.config).__name__}")

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- training ---------------------------------------------------------------------
    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self:
        cfg = self.config
        train = train_interactions(data).positive()
        catalog = require_catalog(self.name, catalog, train.n_items)
        self.n_users_ = train.n_users
        self.n_items_ = train.n_items
        # distinct users per item, as every ScoringRecommender counts it (repeats count once)
        self.popularity_ = np.asarray(train.to_csr().sum(axis=0), dtype=np.float32).ravel()
        warm = self.popularity_ > 0
        if not warm.any():
            raise ConfigError("TIGER needs at least one item with a train interaction")
        self.sids_ = SemanticIds.build(catalog, cfg.semantic_ids, fit_items=np.flatnonzero(warm))
        self._index(warm)
        torch.manual_seed(cfg.seed)
        self.net_ = self._build()
        split = data if isinstance(data, Split) else None
        self.result_: TrainResult = train_network(self, self.net_, self._batches(train), split)
        return self

    def _index(self, warm: np.ndarray) -> None:
        """The trie over every item's ID and which items the decoder can produce."""
        self.warm_ = np.asarray(warm, dtype=bool)
        self.trie_ = PrefixTrie(self.sids_.codes, vocab=self.sids_.vocab)

    def _build(self) -> TigerNet:
        cfg = self.config
        return TigerNet(
            self.sids_.codes,
            self.sids_.vocab,
            max_len=cfg.max_len,
            hidden=cfg.hidden,
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers,
            n_heads=cfg.n_heads,
            feedforward=cfg.feedforward,
            dropout=cfg.dropout,
            user_buckets=cfg.user_buckets,
        )

    def _batches(self, train: Interactions) -> BatchFactory:
        cfg = self.config
        indptr, items = train.histories()
        inputs, targets, owners = owned_training_windows(
            indptr, items, cfg.max_len, train.n_items, every_chunk=cfg.windows == "all"
        )
        x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
        u = torch.from_numpy(user_buckets(owners, cfg.user_buckets))

        def batches(epoch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
            order = torch.randperm(len(x), generator=generator)
            return [(x[idx], y[idx], u[idx]) for idx in order.split(cfg.batch_size)]

        return batches

    # -- recommendation ---------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise RecloopError("TIGER is not fitted; call fit() first")

    def recommend(
        self,
        queries: Queries,
        k: int,
        exclude: Exclusions | None = None,
        *,
        constrained: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        items, scores, _ = self.recommend_labelled(queries, k, exclude, constrained=constrained)
        return items, scores

    def recommend_labelled(
        self,
        queries: Queries,
        k: int,
        exclude: Exclusions | None = None,
        *,
        constrained: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k items, their sequence log-probabilities and each row's source.

        Rows are padded with item −1 and score −inf when fewer than k items can be produced.
        A query with an empty history gets train popularity, labelled ``popular``.
        ``constrained=False`` decodes without the trie (for the ablation that measures how
        many generated IDs are no item): an ID that names no item, a cold item or an excluded
        item comes back as item −1 with its finite score.
        """
        self._check_fitted()
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        ex = exclude if exclude is not None else Exclusions.from_history(queries)
        if len(ex) != len(queries):
            raise ConfigError(f"{len(ex)} exclusion rows for {len(queries)} queries")
        if len(queries.history_items) and int(queries.history_items.max()) >= self.n_items_:
            raise RecloopError(
                f"TIGER: a query history names item index {int(queries.history_items.max())}, "
                f"beyond the {self.n_items_} items it knows"
            )
        n = len(queries)
        items = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        lengths = queries.history_lengths()
        empty = lengths == 0
        if empty.any():
            rows = np.flatnonzero(empty)
            pop = np.broadcast_to(self.popularity_, (len(rows), self.n_items_))
            csr = ex.to_csr(self.n_items_)[rows]
            items[rows], scores[rows] = top_k(np.ascontiguousarray(pop), k, csr)
        rows = np.flatnonzero(~empty)
        net = self.net_
        net.eval()
        for start in range(0, len(rows), DECODE_BATCH):
            chunk = rows[start : start + DECODE_BATCH]
            got_items, got_scores = self._generate(queries.take(chunk), ex, chunk, k, constrained)
            items[chunk], scores[chunk] = got_items, got_scores
        source = np.where(empty, POPULAR_SOURCE, self.name).astype(object)
        return items, scores, source

    @torch.no_grad()
    def _generate(
        self, queries: Queries, ex: Exclusions, rows: np.ndarray, k: int, constrained: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        net = self.net_
        device = next(net.parameters()).device
        seq, last = last_items(queries, cfg.max_len, self.n_items_)
        users = torch.from_numpy(user_buckets(queries.user, cfg.user_buckets)).to(device)
        memory = net.encode(torch.from_numpy(seq).to(device), users if cfg.user_buckets else None)
        shift = 1 if cfg.user_buckets else 0
        steps = torch.arange(memory.shape[1], device=device)
        pad = steps[None, :] > torch.from_numpy(last).to(device)[:, None] + shift
        ex_indptr, ex_items = _take_rows(ex, rows)
        blocked = self.trie_.blocked_counts((ex_indptr, ex_items))
        beam = self.beam_width(k, constrained)
        if not constrained:
            found = beam_search(net, memory, pad, self.trie_, beam, None, self.warm_, free=True)
            items, scores = _pad(found[0][:, :k], found[1][:, :k], k)
            banned = np.zeros(items.shape, dtype=bool)
            for row in range(len(items)):
                lo, hi = ex_indptr[row], ex_indptr[row + 1]
                banned[row] = np.isin(items[row], ex_items[lo:hi])
            valid = (items >= 0) & ~banned & self.warm_[np.maximum(items, 0)]
            return np.where(valid, items, -1), scores
        match = self._match_depth()
        found = beam_search(
            net, memory, pad, self.trie_, beam, blocked, self.warm_, match_depth=match
        )
        warm_items, warm_scores, prefix_nodes, prefix_scores = found
        if self.warm_.all() or cfg.cold_share == 0:
            return _pad(warm_items[:, :k], warm_scores[:, :k], k)
        return self._with_cold(
            warm_items, warm_scores, prefix_nodes, prefix_scores, ex_indptr, ex_items, k
        )

    def beam_width(self, k: int, constrained: bool = True) -> int:
        """The beam for a top-``k`` list: ``beam`` raised to ``k``, but never wider than the
        IDs decoding can reach (the items in the trie, or every token combination when
        unconstrained), since a wider beam only adds empty slots at a cost that grows with k."""
        self._check_fitted()
        reachable = len(self.trie_) if constrained else math.prod(self.sids_.vocab)
        return max(1, min(max(self.config.beam, k), reachable))

    def _with_cold(
        self,
        warm_items: np.ndarray,
        warm_scores: np.ndarray,
        prefix_nodes: np.ndarray,
        prefix_scores: np.ndarray,
        ex_indptr: np.ndarray,
        ex_items: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge cold items under the generated semantic prefixes, capped at cold_share·k."""
        cap = math.floor(self.config.cold_share * k)
        cold = np.flatnonzero(~self.warm_)
        cold_nodes = self.trie_.walk(self.sids_.codes[cold, : self._match_depth()])
        order = np.argsort(cold_nodes, kind="stable")
        cold, cold_nodes = cold[order], cold_nodes[order]
        items = np.full((len(warm_items), k), -1, dtype=np.int64)
        scores = np.full((len(warm_items), k), -np.inf, dtype=np.float32)
        for row in range(len(warm_items)):
            banned = set(ex_items[ex_indptr[row] : ex_indptr[row + 1]].tolist())
            cand_items: list[int] = []
            cand_scores: list[float] = []
            for node, score in zip(prefix_nodes[row], prefix_scores[row], strict=True):
                if node < 0 or not np.isfinite(score) or len(cand_items) >= cap:
                    continue
                lo, hi = np.searchsorted(cold_nodes, [node, node + 1])
                for item in cold[lo:hi]:
                    if int(item) not in banned and len(cand_items) < cap:
                        cand_items.append(int(item))
                        cand_scores.append(float(score))
            merged_items = np.concatenate([warm_items[row], np.asarray(cand_items, np.int64)])
            merged_scores = np.concatenate([warm_scores[row], np.asarray(cand_scores, np.float32)])
            ok = merged_items >= 0
            merged_items, merged_scores = merged_items[ok], merged_scores[ok]
            best = np.lexsort((merged_items, -merged_scores))[:k]
            items[row, : len(best)] = merged_items[best]
            scores[row, : len(best)] = merged_scores[best]
        return items, scores

    def _match_depth(self) -> int:
        """Leading codes a cold item shares with a generated ID: ``cold_match_levels``, by
        default every semantic level but the last (the paper's "first L − 1 codes")."""
        levels = self.sids_.levels
        wanted = self.config.cold_match_levels
        return min(wanted, levels) if wanted is not None else max(levels - 1, 1)

    # -- cold start -------------------------------------------------------------------
    def add_items(self, texts: Sequence[str]) -> np.ndarray:
        """Make new items recommendable at once: embed, encode, insert. Returns their indices.

        The tokenizer and the network stay frozen; the new items are cold items (reached
        through their semantic prefix, see the module docstring).
        """
        self._check_fitted()
        new_codes = self.sids_.add(texts)
        new = np.arange(self.n_items_, self.n_items_ + len(texts))
        self.trie_.add(new, new_codes)
        self.n_items_ += len(texts)
        self.warm_ = np.concatenate([self.warm_, np.zeros(len(texts), dtype=bool)])
        self.popularity_ = np.concatenate(
            [self.popularity_, np.zeros(len(texts), dtype=np.float32)]
        )
        self.net_.extend_items(new_codes)
        return new

    # -- artifacts --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        self._check_fitted()
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "popularity": self.popularity_,
            "warm": self.warm_.astype(np.uint8),
            **{f"net.{k}": v for k, v in state_to_numpy(self.net_).items()},
        }
        extra = {
            "n_users": self.n_users_,
            "n_items": self.n_items_,
            SEMANTIC_IDS_KEY: semantic_ids_record(self.sids_),
        }
        write_artifact(path, self.name, self.config, arrays, extra)
        self.sids_.save(path / SEMANTIC_IDS_DIR)

    @classmethod
    def load(cls, path: Path) -> Self:
        """The model saved at ``path``; a damaged artifact, or a ``semantic_ids/`` folder that
        is not the one saved with it, is a :class:`RecloopError` naming the directory."""
        path = Path(path)
        manifest, arrays = read_artifact(path, cls.__name__)
        with loading(path):
            model = cls(TIGERConfig(**manifest["config"]))
            model.n_users_ = int(manifest["n_users"])
            model.n_items_ = int(manifest["n_items"])
            model.popularity_ = arrays.pop("popularity")
            warm = arrays.pop("warm").astype(bool)
            model.sids_ = SemanticIds.load(path / SEMANTIC_IDS_DIR)
            check_semantic_ids(model.sids_, model.n_items_, manifest.get(SEMANTIC_IDS_KEY))
            if warm.shape != (model.n_items_,) or model.popularity_.shape != warm.shape:
                raise RecloopError(
                    f"warm/popularity arrays have {len(warm)}/{len(model.popularity_)} items, "
                    f"the manifest says {model.n_items_}"
                )
            model._index(warm)
            model.net_ = model._build()
            load_numpy_state(model.net_, {k.removeprefix("net."): v for k, v in arrays.items()})
        model.net_.eval()
        return model

    def summary(self) -> dict[str, Any]:
        """Semantic-ID shape and cold-item count, for reports."""
        return {
            "vocab": list(self.sids_.vocab),
            "cold_items": int((~self.warm_).sum()),
            "semantic_ids": json.loads(self.config.semantic_ids.model_dump_json()),
        }


def _pad(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen a list shorter than ``k`` with item −1 and score −inf."""
    short = k - items.shape[1]
    if short <= 0:
        return items, scores
    return (
        np.pad(items, ((0, 0), (0, short)), constant_values=-1),
        np.pad(scores, ((0, 0), (0, short)), constant_values=-np.inf),
    )


def _take_rows(ex: Exclusions, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exclusion rows ``rows`` (in that order) as a CSR pair re-based to start at 0."""
    starts, lengths = ex.indptr[rows], np.diff(ex.indptr)[rows]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    idx = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return indptr, ex.items[idx].astype(np.int64)


@torch.no_grad()
def beam_search(
    net: TigerNet,
    memory: torch.Tensor,
    memory_pad: torch.Tensor,
    trie: PrefixTrie,
    beam: int,
    blocked: Blocked | None,
    decodable: np.ndarray,
    *,
    match_depth: int | None = None,
    free: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched beam search over Semantic IDs, constrained by ``trie`` and exclusions.

    Returns, per query, the ``beam`` best items (−1 padded) with their sequence
    log-probabilities, and the beams after ``match_depth`` levels (default: all but the last;
    prefix nodes and log-probabilities) for cold-item matching. Only items flagged in
    ``decodable`` are produced at the last level.
    ``free=True`` lets every token through (the trie only tells afterwards which IDs are
    items: the others come back as −1 with finite scores).
    """
    b = memory.shape[0]
    depth = trie.depth
    match_depth = depth - 1 if match_depth is None else match_depth
    device = memory.device
    rows = np.repeat(np.arange(b), beam)
    mem = memory.repeat_interleave(beam, dim=0)
    pad = memory_pad.repeat_interleave(beam, dim=0)
    tokens = torch.zeros((b * beam, 0), dtype=torch.long, device=device)
    nodes = np.zeros(b * beam, dtype=np.int64)
    scores = np.full((b, beam), -np.inf)
    scores[:, 0] = 0.0
    prefix_nodes = np.full((b, beam), -1, dtype=np.int64)
    prefix_scores = scores.copy()
    for level in range(depth):
        if level == match_depth:
            prefix_nodes, prefix_scores = nodes.reshape(b, beam).copy(), scores.copy()
        children = trie.next_tokens(level, nodes, blocked, rows=rows)
        if level == depth - 1 and not free:
            leaf = trie.leaf_items(children)
            children[(children >= 0) & ~decodable[np.maximum(leaf, 0)]] = -1
        logp = net.decode_step(tokens + net.offsets[:level], mem, pad).cpu().numpy()
        if not free:
            logp = np.where(children >= 0, logp, -np.inf)
        else:
            logp = np.where(np.isfinite(scores.reshape(-1, 1)), logp, -np.inf)
        total = (scores.reshape(-1, 1) + logp).reshape(b, -1)
        vocab = logp.shape[1]
        kk = min(beam, total.shape[1])
        best = np.argpartition(-total, kk - 1, axis=1)[:, :kk]
        best_scores = np.take_along_axis(total, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best = np.take_along_axis(best, order, axis=1)
        new_scores = np.full((b, beam), -np.inf)
        new_scores[:, :kk] = np.take_along_axis(best_scores, order, axis=1)
        parent = np.zeros((b, beam), dtype=np.int64)
        token = np.zeros((b, beam), dtype=np.int64)
        parent[:, :kk], token[:, :kk] = best // vocab, best % vocab
        flat_parent = (np.arange(b)[:, None] * beam + parent).ravel()
        new_nodes = children[flat_parent, token.ravel()]
        new_nodes[~np.isfinite(new_scores.ravel())] = -1
        tokens = torch.cat(
            [tokens[torch.from_numpy(flat_parent).to(device)],
             torch.from_numpy(token.ravel()).to(device)[:, None]], dim=1,
        )  # fmt: skip
        nodes, scores = new_nodes, new_scores
    items = trie.leaf_items(nodes).reshape(b, beam)
    items[~np.isfinite(scores)] = -1
    return items, scores.astype(np.float32), prefix_nodes, prefix_scores
