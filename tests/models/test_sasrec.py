"""SASRec: the shared contract, causality, the training windows and both losses."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from recloop.data import Queries
from recloop.models.base import ModelConfig
from recloop.models.sasrec import PAD, SASRec, SASRecConfig, SASRecNet, last_items, training_windows

from .contract import ModelContract, hit_rate, planted

FAST: dict[str, object] = {
    "max_len": 16,
    "hidden": 32,
    "n_layers": 1,
    "n_heads": 2,
    "dropout": 0.3,
    "lr": 0.01,
    "batch_size": 32,
    "max_epochs": 40,
    "early_stopping": False,
    "device": "cpu",
}


class TestSASRecContract(ModelContract):
    model_class = SASRec
    invalid_configs: ClassVar = [
        {"max_len": 1},
        {"hidden": 0},
        {"n_layers": 0},
        {"hidden": 30, "n_heads": 4},  # heads must divide the width
        {"dropout": 1.0},
        {"loss": "bce"},
        {"n_negatives": 0},
        {"windows": "some"},
        {"lr": 0.0},
    ]

    def make_config(self) -> ModelConfig:
        return SASRecConfig(**FAST)  # type: ignore[arg-type]


def test_later_items_do_not_change_earlier_outputs() -> None:
    torch.manual_seed(0)
    net = SASRecNet(50, max_len=12, hidden=16, n_layers=2, n_heads=2, dropout=0.0).eval()
    seq = torch.randint(50, (3, 12))
    changed = seq.clone()
    changed[:, 7:] = torch.randint(50, (3, 5))
    with torch.no_grad():
        a, b = net(seq), net(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    # the same holds for padding: a prefix scored alone equals the prefix inside the sequence
    with torch.no_grad():
        alone = net(seq[:, :7])
    torch.testing.assert_close(alone, a[:, :7])


def test_scores_use_the_last_max_len_items_only() -> None:
    model = SASRec(SASRecConfig(**{**FAST, "max_epochs": 2})).fit(planted().train)  # type: ignore[arg-type]
    history = planted().queries.history(0).tolist()
    longer = [5, 6, 7, 8, *history]  # 17 items; max_len is 16
    scores = model.score(Queries.from_lists([-1, -1], [longer, longer[1:]]))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_training_windows_cover_every_target_once() -> None:
    indptr = np.array([0, 7, 8, 11])
    items = np.arange(11)
    x, y = training_windows(indptr, items, max_len=3, n_items=20, every_chunk=True)
    targets = sorted(y[y != PAD].tolist())
    # every item after a user's first is a target exactly once; a lone item gives no window
    assert targets == [1, 2, 3, 4, 5, 6, 9, 10]
    for row_x, row_y in zip(x, y, strict=True):
        keep = row_y != PAD
        assert (row_x[keep] + 1 == row_y[keep]).all()  # each input predicts its successor
        assert (row_x[~keep] == 20).all()
    _, last_y = training_windows(indptr, items, max_len=3, n_items=20, every_chunk=False)
    assert sorted(last_y[last_y != PAD].tolist()) == [4, 5, 6, 9, 10]


def test_last_items_right_pads_and_truncates() -> None:
    queries = Queries.from_lists([0, 1, 2], [[1, 2, 3, 4, 5], [7], []])
    seq, last = last_items(queries, max_len=3, n_items=9)
    assert seq.tolist() == [[3, 4, 5], [7, 9, 9], [9, 9, 9]]
    assert last.tolist() == [2, 0, 0]


def test_sampled_softmax_also_learns_the_planted_data() -> None:
    config = SASRecConfig(**{**FAST, "loss": "sampled_softmax", "n_negatives": 20})  # type: ignore[arg-type]
    model = SASRec(config).fit(planted().train)
    items, _ = model.recommend(planted().queries, 10)
    assert hit_rate(items, planted().heldout) >= 0.9


def test_full_softmax_loss_matches_cross_entropy() -> None:
    torch.manual_seed(0)
    net = SASRecNet(10, max_len=4, hidden=8, n_layers=1, n_heads=1, dropout=0.0)
    seq = torch.tensor([[1, 2, 3, 10], [4, 10, 10, 10]])
    target = torch.tensor([[2, 3, 5, PAD], [6, PAD, PAD, PAD]])
    logits = net.item_logits(net(seq))
    expected = torch.nn.functional.cross_entropy(
        logits[target != PAD], target[target != PAD], reduction="mean"
    )
    torch.testing.assert_close(net.training_step((seq, target)), expected)


def test_too_long_sequence_is_refused() -> None:
    net = SASRecNet(10, max_len=4, hidden=8, n_layers=1, n_heads=1, dropout=0.0)
    with pytest.raises(Exception, match="max_len"):
        net(torch.zeros(1, 5, dtype=torch.long))
