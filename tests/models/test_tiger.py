"""TIGER: the recommend-only contract, constrained decoding, causality and cold start."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from recloop.data import Exclusions, Interactions, Queries
from recloop.errors import RecloopError
from recloop.models.base import ModelConfig, top_k
from recloop.models.tiger import TIGER, TIGERConfig
from recloop.models.tiger_net import TigerNet, user_buckets

from .contract import RecommenderContract, planted, planted_catalog
from .sid_fixtures import PLANTED_SIDS

FAST: dict[str, object] = {
    "semantic_ids": PLANTED_SIDS,
    "max_len": 16,
    "hidden": 32,
    "n_heads": 2,
    "feedforward": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "dropout": 0.1,
    "lr": 0.003,
    "batch_size": 16,
    "max_epochs": 20,
    "early_stopping": False,
    "device": "cpu",
}


class TestTIGERContract(RecommenderContract):
    model_class = TIGER
    uses_catalog = True
    artifact_files: ClassVar = ["manifest.json", "semantic_ids", "weights.safetensors"]
    invalid_configs: ClassVar = [
        {"hidden": 30, "n_heads": 4},
        {"beam": 0},
        {"cold_share": 1.5},
        {"cold_match_levels": 0},
        {"user_buckets": -1},
        {"windows": "some"},
    ]

    def make_config(self) -> ModelConfig:
        return TIGERConfig(**FAST)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiger() -> TIGER:
    return TIGER(TIGERConfig(**FAST)).fit(planted().train, catalog=planted_catalog())  # type: ignore[arg-type]


def test_every_result_is_a_real_item_with_its_sequence_log_probability(tiger: TIGER) -> None:
    data = planted()
    queries = data.queries.take(np.arange(5))
    items, scores = tiger.recommend(queries, 10)
    net = tiger.net_
    seq = torch.from_numpy(queries.history_items[None, : queries.history_lengths()[0]])
    with torch.no_grad():
        memory = net.encode(seq.long(), None)
        pad = torch.zeros(memory.shape[:2], dtype=torch.bool)
        for item, score in zip(items[0], scores[0], strict=True):
            codes = torch.from_numpy(tiger.sids_.codes[item]) + net.offsets
            total = 0.0
            for level in range(len(codes)):
                logp = net.decode_step(codes[None, :level], memory, pad)
                total += float(logp[0, int(codes[level]) - int(net.offsets[level])])
            assert score == pytest.approx(total, abs=1e-4)


def test_beam_search_finds_the_most_likely_ids(tiger: TIGER) -> None:
    """With a beam as wide as the catalogue, decoding ranks every allowed item exactly."""
    data = planted()
    queries = data.queries.take(np.arange(3))
    n = data.n_items
    items, scores = tiger.recommend(queries, n)
    for row in range(len(queries)):
        shown = items[row][items[row] >= 0]
        assert np.all(np.diff(scores[row][: len(shown)]) <= 1e-6)
        assert set(shown.tolist()) == set(range(n)) - set(queries.history(row).tolist())


def test_exclusions_apply_inside_the_trie(tiger: TIGER) -> None:
    data = planted()
    queries = data.queries.take(np.arange(4))
    top, _ = tiger.recommend(queries, 5)
    banned = Exclusions.from_history(queries).union(Exclusions.from_lists(top.tolist()))
    again, _ = tiger.recommend(queries, 5, banned)
    for row in range(len(queries)):
        assert not set(again[row].tolist()) & set(top[row].tolist())
        assert (again[row] >= 0).all()  # other items fill the list: no dead beams


def test_encoder_is_causal() -> None:
    torch.manual_seed(0)
    codes = np.array(list(itertools.product(range(4), range(4), range(2))))
    net = TigerNet(
        codes, (4, 4, 2), max_len=12, hidden=16, encoder_layers=2, decoder_layers=1,
        n_heads=2, feedforward=32, dropout=0.0, user_buckets=8,
    ).eval()  # fmt: skip
    seq = torch.randint(len(codes), (3, 12))
    changed = seq.clone()
    changed[:, 7:] = torch.randint(len(codes), (3, 5))
    users = torch.tensor([0, 1, 8])
    with torch.no_grad():
        a, b = net.encode(seq, users), net.encode(changed, users)
    torch.testing.assert_close(a[:, :8], b[:, :8])  # user token + items 0..6
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_training_loss_matches_per_prefix_decoding() -> None:
    """One causal pass scores each target exactly as decoding its prefix alone would."""
    torch.manual_seed(0)
    codes = np.array(list(itertools.product(range(3), range(3), range(2))))
    net = TigerNet(
        codes, (3, 3, 2), max_len=6, hidden=16, encoder_layers=1, decoder_layers=2,
        n_heads=2, feedforward=32, dropout=0.0, user_buckets=0,
    ).eval()  # fmt: skip
    seq = torch.tensor([[1, 5, 7, 2, 9, 4]])
    target = torch.tensor([[5, 7, 2, 9, 4, 11]])
    with torch.no_grad():
        batch_loss = float(net.training_step((seq, target, torch.zeros(1, dtype=torch.long))))
        total = 0.0
        for j in range(6):
            memory = net.encode(seq[:, : j + 1], None)
            pad = torch.zeros(memory.shape[:2], dtype=torch.bool)
            tgt = torch.from_numpy(codes[int(target[0, j])]) + net.offsets
            for level in range(3):
                logp = net.decode_step(tgt[None, :level], memory, pad)
                total -= float(logp[0, int(tgt[level]) - int(net.offsets[level])])
    assert batch_loss == pytest.approx(total / 6, rel=1e-5)


def test_user_buckets_are_stable_and_unknown_users_share_one() -> None:
    buckets = user_buckets(np.array([0, 1, 5, -1, -1]), 16)
    assert buckets.tolist() == user_buckets(np.array([0, 1, 5, -1, -1]), 16).tolist()
    assert buckets[3] == buckets[4] == 16
    assert (buckets[:3] < 16).all()


def test_new_items_are_recommendable_without_retraining(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = planted()
    config = TIGERConfig(**{**FAST, "cold_share": 0.5})  # type: ignore[arg-type]
    model = TIGER(config).fit(data.train, catalog=planted_catalog())
    before = {k: v.clone() for k, v in model.net_.state_dict().items()}
    drama_fans = np.flatnonzero(data.group == 0)  # group 0 consumes the "drama" block
    new = model.add_items(["Film 900. Genres: drama, drama cinema"])
    assert new.tolist() == [data.n_items]
    for k, v in model.net_.state_dict().items():
        torch.testing.assert_close(v, before[k])
    queries = data.queries.take(drama_fans)
    items, _ = model.recommend(queries, 10)
    shown = (items == new[0]).any(axis=1).mean()
    assert shown > 0.5, f"the new drama item reached only {shown:.0%} of drama fans"
    assert ((items == new[0]).sum(axis=1) <= 1).all()
    assert np.isin(items, new).sum(axis=1).max() <= 5  # at most cold_share · k cold items
    # it survives save/load, and can be in a history
    model.save(tmp_path / "m")
    loaded = TIGER.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.recommend(queries, 10)[0], items)
    with_new = Queries.from_lists([-1], [[*data.queries.history(0).tolist(), int(new[0])]])
    got, _ = loaded.recommend(with_new, 10)
    assert new[0] not in got[0]


def test_cold_share_zero_never_shows_cold_items() -> None:
    data = planted()
    config = TIGERConfig(**{**FAST, "cold_share": 0.0})  # type: ignore[arg-type]
    model = TIGER(config).fit(data.train, catalog=planted_catalog())
    new = model.add_items(["Film 900. Genres: drama, drama cinema"])
    items, _ = model.recommend(data.queries, 10)
    assert not np.isin(items, new).any()


def test_tiger_needs_a_catalogue() -> None:
    with pytest.raises(RecloopError, match="catalog"):
        TIGER(TIGERConfig(**FAST)).fit(planted().train)  # type: ignore[arg-type]


def test_free_decoding_marks_ids_that_are_no_allowed_item(tiger: TIGER) -> None:
    data = planted()
    items, scores = tiger.recommend(data.queries, 10, constrained=False)
    assert items.shape == (len(data.queries), 10)
    assert np.isfinite(scores).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    for row in range(len(items)):
        shown = items[row][items[row] >= 0]
        assert not set(shown.tolist()) & set(data.queries.history(row).tolist())
    # constrained decoding fills every slot; free decoding can only lose slots
    constrained, _ = tiger.recommend(data.queries, 10)
    assert (constrained >= 0).all()


def test_repeated_exclusions_hide_no_other_item(tiger: TIGER) -> None:
    """An item listed many times (a history with repeats) is excluded once, nothing more."""
    data = planted()
    n = data.n_items
    queries = data.queries.take(np.arange(6))
    history = [queries.history(row).tolist() for row in range(len(queries))]
    repeated = Exclusions.from_lists([h + [h[0]] * 30 for h in history])
    got, got_scores = tiger.recommend(queries, n, repeated)
    expected, expected_scores = tiger.recommend(queries, n, Exclusions.from_lists(history))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_scores, expected_scores)
    # the same through the default exclusions of a history that repeats an item
    with_repeats = Queries.from_lists([-1], [history[0] + [history[0][-1]] * 30])
    items, _ = tiger.recommend(with_repeats, n)
    shown = items[0][items[0] >= 0]
    assert set(shown.tolist()) == set(range(n)) - set(history[0])


def test_beam_is_capped_at_the_catalogue_and_long_lists_are_padded(tiger: TIGER) -> None:
    data = planted()
    n = data.n_items
    assert tiger.beam_width(5) == tiger.config.beam
    assert tiger.beam_width(10**6) == len(tiger.trie_) == n
    assert tiger.beam_width(10**6, constrained=False) == math.prod(tiger.sids_.vocab)
    queries = data.queries.take(np.arange(3))
    full, full_scores = tiger.recommend(queries, n)
    items, scores = tiger.recommend(queries, 20_000)
    assert items.shape == scores.shape == (3, 20_000)
    np.testing.assert_array_equal(items[:, :n], full)
    np.testing.assert_array_equal(scores[:, :n], full_scores)
    assert (items[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
    free, free_scores = tiger.recommend(queries, 20_000, constrained=False)
    assert free.shape == (3, 20_000)
    assert np.isneginf(free_scores[:, math.prod(tiger.sids_.vocab) :]).all()


def test_long_lists_with_cold_items_are_padded() -> None:
    data = planted()
    config = TIGERConfig(**{**FAST, "cold_share": 0.5, "max_epochs": 1})  # type: ignore[arg-type]
    model = TIGER(config).fit(data.train, catalog=planted_catalog())
    model.add_items(["Film 900. Genres: drama, drama cinema"])
    assert model.beam_width(10**6) == data.n_items + 1
    items, scores = model.recommend(data.queries.take(np.arange(2)), 5_000)
    assert items.shape == (2, 5_000)
    assert (items[:, data.n_items + 1 :] == -1).all()
    assert np.isneginf(scores[:, data.n_items + 1 :]).all()


def test_empty_history_gets_distinct_user_popularity() -> None:
    """Repeats count once, as in every other model: one user replaying an item does not
    make it the most popular."""
    data = planted()
    replays = Interactions.from_arrays(
        np.zeros(500, dtype=np.int64), np.full(500, data.n_items - 1),
        users=data.train.users, items=data.train.items,
    )  # fmt: skip
    train = data.train.concat(replays)
    config = TIGERConfig(**{**FAST, "max_epochs": 1})  # type: ignore[arg-type]
    model = TIGER(config).fit(train, catalog=planted_catalog())
    users_per_item = np.asarray(train.to_csr().sum(axis=0)).ravel()
    np.testing.assert_array_equal(model.popularity_, users_per_item)
    items, scores = model.recommend(Queries.from_lists([-1], [[]]), 5)
    expected, expected_scores = top_k(users_per_item[None, :], 5)
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_array_equal(scores, expected_scores)


def test_manifest_records_the_semantic_ids(tiger: TIGER, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    tiger.save(folder)
    record = json.loads((folder / "manifest.json").read_text())["semantic_id_codes"]
    assert record["count"] == tiger.n_items_
    assert len(record["sha256"]) == 64


def test_load_refuses_semantic_ids_of_another_fit(tiger: TIGER, tmp_path: Path) -> None:
    """Same shape, other codes: the recorded hash tells them apart."""
    folder = tmp_path / "m"
    tiger.save(folder)
    codes = np.load(folder / "semantic_ids" / "codes.npy")
    np.save(folder / "semantic_ids" / "codes.npy", codes[::-1].copy())
    with pytest.raises(RecloopError, match=r"semantic_ids/codes\.npy.*SHA-256"):
        TIGER.load(folder)


def test_load_refuses_semantic_ids_for_fewer_items(tiger: TIGER, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    tiger.save(folder)
    codes = np.load(folder / "semantic_ids" / "codes.npy")
    np.save(folder / "semantic_ids" / "codes.npy", codes[:-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["semantic_id_codes"]  # as saved before the hash was recorded
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        RecloopError, match=rf"{re.escape(str(folder))}.*for {tiger.n_items_ - 1} items"
    ):
        TIGER.load(folder)


def test_artifacts_without_the_semantic_id_hash_still_load(tiger: TIGER, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    tiger.save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["semantic_id_codes"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    queries = planted().queries.take(np.arange(4))
    np.testing.assert_array_equal(
        TIGER.load(folder).recommend(queries, 10)[0], tiger.recommend(queries, 10)[0]
    )
