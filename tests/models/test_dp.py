"""DP-Mult-DAE: the shared contract, the privacy record, δ and ε rules, and the DP-SGD mechanics."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from conftest import require
from recloop.data import Interactions, Split
from recloop.errors import ConfigError, RecloopError
from recloop.models.base import ModelConfig
from recloop.models.dp import (
    OUTSIDE_EPSILON,
    DPMultDAE,
    DPMultDAEConfig,
    MultinomialNLL,
    noise_for_epsilon,
    private_training,
    resolve_delta,
    user_rows,
)
from recloop.models.multvae import AutoencoderNet
from recloop.models.registry import build_model

from .contract import ModelContract, planted

try:
    import opacus  # type: ignore[import-untyped]  # noqa: F401

    HAVE_OPACUS = True
except ImportError:  # pragma: no cover - the privacy extra is part of the test setup
    HAVE_OPACUS = False


@pytest.fixture(autouse=True)
def _needs_opacus() -> None:
    require(HAVE_OPACUS, "Opacus is not installed: pip install 'recloop[privacy]'")


# A real DP-SGD fit (every user's gradient clipped to 1, Gaussian noise σ = 0.3) that still
# solves the planted blocks; with only 70 users its ε is large (about 200), which the
# contract does not care about. The ε tests below set target_epsilon instead.
FAST: dict[str, Any] = {
    "hidden_dims": (32,),
    "latent_dim": 16,
    "lr": 0.01,
    "expected_batch_size": 35,
    "epochs": 30,
    "target_epsilon": None,
    "noise_multiplier": 0.3,
    "max_grad_norm": 1.0,
    "dropout": 0.0,
    "secret_randomness": False,  # reproducible, as the contract demands
}
# Full-batch steps (q = 1) keep Opacus's noise search instant; subsampled runs are below.
BUDGETED: dict[str, Any] = {
    **FAST,
    "noise_multiplier": None,
    "expected_batch_size": 70,
    "epochs": 2,
}
INVALID: list[dict[str, Any]] = [
    {"latent_dim": 0},
    {"dropout": 1.0},
    {"lr": 0.0},
    {"epochs": 0},
    {"expected_batch_size": 0},
    {"target_epsilon": 0.0},
    {"target_epsilon": -1.0},
    {"delta": 0.0},
    {"delta": 1.0},
    {"max_grad_norm": 0.0},
    {"noise_multiplier": 0.0},
    {"target_epsilon": 1.0, "noise_multiplier": 1.0},  # one source of noise, not two
    {"accountant": "gdp"},
    {"grad_sample_mode": "functorch"},
    {"device": "tpu"},
]


class TestDPMultDAEContract(ModelContract):
    model_class = DPMultDAE
    invalid_configs: ClassVar = INVALID

    def make_config(self) -> ModelConfig:
        return DPMultDAEConfig(**FAST)

    def test_manifest_records_the_privacy_spent(self, fitted: Any, tmp_path: Path) -> None:
        fitted.save(tmp_path / "model")
        manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
        privacy = manifest["privacy"]
        n_users = planted().train.n_users
        assert privacy["private"] is True
        assert privacy["n_users"] == n_users
        assert privacy["delta"] == pytest.approx(1.0 / n_users)
        assert privacy["sample_rate"] == pytest.approx(1.0 / math.ceil(n_users / 35))
        assert privacy["steps"] == FAST["epochs"] * math.ceil(n_users / 35)
        assert privacy["epochs"] == FAST["epochs"]
        assert privacy["epsilon"] > 0.0 and privacy["target_epsilon"] is None
        assert privacy["noise_multiplier"] == FAST["noise_multiplier"]
        assert privacy["max_grad_norm"] == FAST["max_grad_norm"]
        assert privacy["accountant"] == "rdp"
        assert privacy["poisson_sampling"] is True
        assert privacy["outside_epsilon"] == OUTSIDE_EPSILON
        assert (
            OUTSIDE_EPSILON
            == "hyper-parameter tuning on private validation data is outside epsilon"
        )
        loaded = DPMultDAE.load(tmp_path / "model")
        assert loaded.privacy_ == fitted.privacy_

    def test_load_refuses_a_manifest_without_privacy(self, fitted: Any, tmp_path: Path) -> None:
        fitted.save(tmp_path / "model")
        path = tmp_path / "model" / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["privacy"]
        path.write_text(json.dumps(manifest))
        with pytest.raises(RecloopError, match="privacy"):
            DPMultDAE.load(tmp_path / "model")

    def test_fallback_is_the_network_not_train_counts(self, fitted: Any) -> None:
        counts = planted().train.item_counts().astype(np.float32)
        assert not np.allclose(fitted.popularity_, counts / counts.sum())
        assert fitted.popularity_.sum() == pytest.approx(1.0, abs=1e-5)
        with torch.no_grad():
            logits, _, _ = fitted.net_(torch.zeros(1, planted().n_items))
        np.testing.assert_allclose(
            fitted.popularity_, torch.softmax(logits, 1)[0].numpy(), rtol=1e-5
        )


def test_accountant_epsilon_is_within_the_target() -> None:
    subsampled = {"expected_batch_size": 4, "epochs": 2}  # q = 1/18, 36 Poisson steps
    for epsilon, schedule in ((0.5, {}), (2.0, {}), (1.0, subsampled)):
        model = DPMultDAE(DPMultDAEConfig(**{**BUDGETED, **schedule, "target_epsilon": epsilon}))
        model.fit(planted().train)
        spent = model.privacy_.epsilon
        assert spent is not None and spent <= epsilon + 0.01
        assert spent > 0.9 * epsilon  # the search spends the budget, not a fraction of it


def test_smaller_epsilon_means_more_noise() -> None:
    q, steps, delta = 0.05, 200, 1e-3
    sigmas = [noise_for_epsilon(eps, delta, q, steps, "rdp") for eps in (2.0, 1.0, 0.5)]
    assert all(a < b for a, b in itertools.pairwise(sigmas)), sigmas
    fitted = [
        DPMultDAE(DPMultDAEConfig(**{**BUDGETED, "target_epsilon": eps}))
        .fit(planted().train)
        .privacy_.noise_multiplier
        for eps in (4.0, 1.0)
    ]
    assert fitted[0] < fitted[1]


def test_delta_above_one_over_n_users_is_refused() -> None:
    n = planted().train.n_users  # 70
    config = DPMultDAEConfig(**{**BUDGETED, "target_epsilon": 1.0, "delta": 1.5 / n})
    with pytest.raises(ConfigError, match=r"'delta'.*exceeds 1/n_users"):
        DPMultDAE(config).fit(planted().train)
    assert resolve_delta(None, n) == pytest.approx(1.0 / n)
    assert resolve_delta(0.5 / n, n) == pytest.approx(0.5 / n)


def test_unreachable_epsilon_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="'target_epsilon'"):
        noise_for_epsilon(1e-9, 1e-3, 1.0, 10_000, "rdp")


def test_registry_builds_it_and_names_bad_fields() -> None:
    model = build_model("DPMultDAE", {"target_epsilon": 2.0})
    assert isinstance(model, DPMultDAE)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        build_model("DPMultDAE", {"noise_multiplier": -1.0})
    with pytest.raises(ConfigError, match="not both"):
        build_model("DPMultDAE", {"noise_multiplier": 1.0})  # the default ε is 1


def test_non_private_reference_records_no_guarantee(tmp_path: Path) -> None:
    model = DPMultDAE(DPMultDAEConfig(**{**FAST, "noise_multiplier": None, "epochs": 2}))
    assert DPMultDAEConfig().private  # private unless told otherwise
    model.fit(planted().train)
    report = model.privacy_
    assert not report.private
    assert report.epsilon is None and report.delta is None
    assert report.noise_multiplier == 0.0 and report.max_grad_norm is None
    assert report.steps == 2 * math.ceil(planted().train.n_users / 35)
    model.save(tmp_path / "m")
    assert DPMultDAE.load(tmp_path / "m").privacy_ == report


def test_given_noise_multiplier_is_used_and_accounted() -> None:
    config = DPMultDAEConfig(**{**FAST, "noise_multiplier": 1.5, "epochs": 2})
    model = DPMultDAE(config).fit(planted().train)
    assert model.privacy_.private and model.privacy_.noise_multiplier == 1.5
    assert model.privacy_.epsilon is not None and model.privacy_.epsilon > 0.0


def test_ghost_clipping_equals_per_sample_gradient_clipping() -> None:
    """Opacus's ghost norms (the default) and materialised per-user gradients (the plain
    reference) clip identically, so with the same seed both fits give the same weights."""
    base = {**FAST, "epochs": 2}
    ghost = DPMultDAE(DPMultDAEConfig(**base, grad_sample_mode="ghost")).fit(planted().train)
    hooks = DPMultDAE(DPMultDAEConfig(**base, grad_sample_mode="hooks")).fit(planted().train)
    for (name, a), (_, b) in zip(
        ghost.net_.state_dict().items(), hooks.net_.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_gradient_is_the_mean_of_per_user_clipped_gradients(mode: str) -> None:
    """The DP step's gradient, without noise, equals a plain loop over users: each user's
    gradient clipped to C, summed and divided by the expected batch (q = 1: all users)."""
    data = planted()
    rows = user_rows(data.train)
    assert rows.shape == (data.train.n_users, data.n_items)
    assert set(rows.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(0)
    net = AutoencoderNet(data.n_items, (8,), 4, 0.0, variational=False)
    per_user_loss = MultinomialNLL(reduction="none")
    logits, _, _ = net(rows)
    losses = per_user_loss(logits, rows)
    torch.testing.assert_close(losses.mean(), net.training_step(rows))
    grads, norms = [], []
    for i in range(len(rows)):
        g = torch.autograd.grad(losses[i], list(net.parameters()), retain_graph=True)
        grads.append(g)
        norms.append(torch.sqrt(sum((t**2).sum() for t in g)))
    clip = float(torch.stack(norms).median())  # half the users are clipped, half are not
    expected = [
        sum(g[j] * min(1.0, clip / (float(n) + 1e-6)) for g, n in zip(grads, norms, strict=True))
        / len(rows)
        for j in range(len(grads[0]))
    ]
    unclipped = [sum(g[j] for g in grads) / len(rows) for j in range(len(grads[0]))]

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(rows), len(rows))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    dp = private_training(
        net, optimizer, loader, noise_multiplier=0.0, max_grad_norm=clip,
        accountant="rdp", grad_sample_mode=mode, seed=0,
    )  # fmt: skip
    try:
        logits, _, _ = net(rows)
        dp.criterion(logits, rows).backward()
        assert dp.optimizer.pre_step()  # clip, add (zero) noise, scale: the released gradient
        got = [p.grad for p in net.parameters()]
    finally:
        dp.hooks.remove_hooks()
        dp.hooks.cleanup()
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(b, c) for b, c in zip(expected, unclipped, strict=True))


def test_empty_poisson_batches_still_step_and_stay_finite() -> None:
    # q = 1/70: about a third of the steps draw nobody, and they must still be taken
    config = DPMultDAEConfig(**{**FAST, "expected_batch_size": 1, "epochs": 1})
    model = DPMultDAE(config).fit(planted().train)
    assert model.privacy_.steps == planted().train.n_users
    for value in model.net_.state_dict().values():
        assert torch.isfinite(value).all()


def test_fit_on_split_never_reads_validation() -> None:
    data = planted()
    n = data.train.n_users
    valid = Interactions.from_arrays(
        np.arange(n), data.heldout, users=data.train.users, items=data.train.items
    )
    config = DPMultDAEConfig(**{**FAST, "epochs": 2})
    on_split = DPMultDAE(config).fit(Split("ratio", 0, data.train, valid, valid))
    on_train = DPMultDAE(config).fit(data.train)
    np.testing.assert_array_equal(on_split.score(data.queries), on_train.score(data.queries))
    assert "fixed epochs" in on_split.privacy_.validation


def test_secret_randomness_is_not_replayable_from_the_seed() -> None:
    config = DPMultDAEConfig(**{**FAST, "epochs": 2, "secret_randomness": True})
    assert DPMultDAEConfig().secret_randomness  # the default
    a = DPMultDAE(config).fit(planted().train)
    b = DPMultDAE(config).fit(planted().train)
    assert a.privacy_.secret_randomness
    assert not np.array_equal(a.score(planted().queries), b.score(planted().queries))
