"""BPR: the shared contract, fold-in of unknown or changed users, sampling and training."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recloop.data import Queries
from recloop.errors import ConfigError
from recloop.models.base import ModelConfig
from recloop.models.bpr import (
    BPR,
    BPRConfig,
    _sample_negatives,
    _set_bpr_gradients,
    history_fingerprint,
)

from .contract import ModelContract, planted

FAST = BPRConfig(factors=8, lr=0.05, reg=1e-3, epochs=20, batch_size=256, device="cpu")


class TestBPRContract(ModelContract):
    model_class = BPR
    invalid_configs: ClassVar = [
        {"factors": 0},
        {"lr": 0.0},
        {"reg": -1.0},
        {"epochs": 0},
        {"batch_size": 0},
        {"optimizer": "lbfgs"},
        {"fold_in_reg": 0.0},
        {"threads": 0},
        {"device": "tpu"},
    ]

    def make_config(self) -> ModelConfig:
        return FAST


@pytest.fixture(scope="module")
def model() -> BPR:
    return BPR(FAST).fit(planted().train)


def test_known_user_with_its_train_history_uses_learned_factors(model: BPR) -> None:
    queries = planted().queries
    expected = model.user_factors_ @ model.item_factors_.T + model.item_bias_
    np.testing.assert_allclose(model.score(queries), expected, rtol=1e-6)


def test_changed_history_and_unknown_user_are_folded_in(model: BPR) -> None:
    history = [*planted().queries.history(4).tolist(), 79]
    scores = model.score(Queries.from_lists([4, -1, 10_000], [history, history, history]))
    np.testing.assert_array_equal(scores[0], scores[1])  # changed history: same as unknown
    np.testing.assert_array_equal(scores[2], scores[1])  # index beyond the model: unknown
    learned = model.user_factors_[4] @ model.item_factors_.T
    assert not np.allclose(scores[0], learned)


def test_fold_in_maps_the_mean_item_factor(model: BPR) -> None:
    history = [0, 5, 9]
    mean = model.item_factors_[history].astype(np.float64).mean(axis=0)
    expected = mean @ model.fold_in_map_
    indicator = sp.csr_matrix((np.ones(3), history, [0, 3]), shape=(1, model.n_items_))
    np.testing.assert_allclose(model.fold_in(indicator)[0], expected, rtol=1e-4, atol=1e-6)


def test_fold_in_map_is_the_ridge_fit_to_learned_users(model: BPR) -> None:
    x = planted().train.to_csr()
    means = np.asarray(x @ model.item_factors_.astype(np.float64)) / x.sum(axis=1).A
    target = model.user_factors_.astype(np.float64)
    lam = model.config.fold_in_reg
    w = np.linalg.solve(means.T @ means + lam * np.eye(means.shape[1]), means.T @ target)
    np.testing.assert_allclose(model.fold_in_map_, w, rtol=1e-3, atol=1e-4)
    # folding train users in lands close to where training put them
    folded = model.fold_in(x)
    cosine = (
        (folded * target).sum(1) / np.linalg.norm(folded, axis=1) / np.linalg.norm(target, axis=1)
    )
    assert np.median(cosine) > 0.8


def test_fingerprint_is_a_set_hash() -> None:
    rows = Queries.from_lists([0, 0, 0, 0, 0], [[3, 1, 2], [1, 2, 3, 3], [1, 2], [], [0]])
    fp = history_fingerprint(rows.history_csr(5))
    assert fp[0] == fp[1]
    assert len({int(fp[0]), int(fp[2]), int(fp[3]), int(fp[4])}) == 4
    assert fp[3] == 0


@pytest.mark.parametrize("with_bias", [True, False])
def test_hand_written_gradients_match_autograd(with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(10, 4, generator=gen), torch.randn(12, 4, generator=gen)
    bias = torch.randn(12, generator=gen) if with_bias else torch.zeros(12)
    u, i, j = (torch.randint(n, (50,), generator=gen) for n in (10, 12, 12))
    ref = [t.clone().requires_grad_() for t in (users, items, bias)]
    x = (ref[0][u] * (ref[1][i] - ref[1][j])).sum(1) + ref[2][i] - ref[2][j]
    penalty = (ref[0][u].square() + ref[1][i].square() + ref[1][j].square()).sum(1)
    if with_bias:
        penalty = penalty + ref[2][i].square() + ref[2][j].square()
    (torch.nn.functional.softplus(-x).mean() + 0.1 * penalty.mean()).backward()
    loss = _set_bpr_gradients(users, items, bias if with_bias else None, u, i, j, 0.1)
    assert loss == pytest.approx(float(torch.nn.functional.softplus(-x).sum().detach()), rel=1e-5)
    torch.testing.assert_close(users.grad, ref[0].grad)
    torch.testing.assert_close(items.grad, ref[1].grad)
    if with_bias:
        torch.testing.assert_close(bias.grad, ref[2].grad)


def test_negatives_avoid_consumed_items() -> None:
    n_items = 6
    user = torch.tensor([0, 0, 1, 1] * 500)
    consumed = torch.tensor(sorted([0 * n_items + i for i in (0, 1, 2)] + [n_items + 5]))
    neg = _sample_negatives(user, consumed, n_items, torch.Generator().manual_seed(0))
    assert not torch.isin(user * n_items + neg, consumed).any()
    assert set(neg[user == 0].tolist()) == {3, 4, 5}


def test_training_lowers_the_loss_and_restores_threads() -> None:
    before = torch.get_num_threads()
    model = BPR(FAST.model_copy(update={"threads": 1})).fit(planted().train)
    assert torch.get_num_threads() == before
    assert model.loss_history_[-1] < 0.5 * model.loss_history_[0]


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_other_optimizers_train(optimizer: str) -> None:
    lr = {"adagrad": 0.1, "sgd": 1.0}[optimizer]
    cfg = FAST.model_copy(update={"optimizer": optimizer, "lr": lr, "item_bias": True})
    model = BPR(cfg).fit(planted().train)
    assert model.loss_history_[-1] < model.loss_history_[0]
    assert np.isfinite(model.item_bias_).all() and model.item_bias_.any()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        BPR(BPRConfig(device="cuda", epochs=1)).fit(planted().train)
