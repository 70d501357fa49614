"""evaluate() end to end with the Popular model on tiny splits, checked by hand and by loops."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Self

import numpy as np
import pytest

from recloop.data import Catalog, Exclusions, IdMap, Interactions, Queries, Split, Users, loo, ratio
from recloop.errors import RecloopError
from recloop.eval import EvalResult, compare, evaluate
from recloop.models import Popular
from recloop.models.base import ModelConfig


def hand_split() -> Split:
    """Four users, five items, leave-one-out (times increase in row order).

    u0: 0 1 2 3 -> train {0, 1}, valid 2, test 3;  u1: 0 2 4 -> train {0}, valid 2, test 4
    u2: 0 1     -> fewer than 3 rows, all train;   u3: 1 0 3 2 -> train {1, 0}, valid 3, test 2
    Train popularity (distinct users): item 0: 4, item 1: 3, items 2-4: 0 -> rank 0, 1, 2, 3, 4.
    """
    user = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    item = [0, 1, 2, 3, 0, 2, 4, 0, 1, 1, 0, 3, 2]
    data = Interactions.from_arrays(user, item, timestamp=np.arange(len(user)))
    return loo(data)


def test_loo_test_set_by_hand() -> None:
    split = hand_split()
    model = Popular().fit(split)
    res = evaluate(model, split.evaluation_set("test"), ks=(1, 2, 3), progress=False)
    # test queries hold train + valid: u0 {0, 1, 2}, u1 {0, 2}, u3 {1, 0, 3}; all excluded
    # top-3: u0 [3, 4, -1] (only two items left), u1 [1, 3, 4], u3 [2, 4, -1]
    assert res.users.tolist() == [0, 1, 3]
    assert res.recommendations.tolist() == [[3, 4, -1], [1, 3, 4], [2, 4, -1]]
    # targets u0 {3}: rank 1; u1 {4}: rank 3; u3 {2}: rank 1
    assert res.metrics["hit@1"] == pytest.approx(2 / 3)
    assert res.metrics["recall@2"] == pytest.approx(2 / 3)
    assert res.metrics["ndcg@2"] == pytest.approx(2 / 3)
    assert res.metrics["recall@3"] == pytest.approx(1.0)
    # NDCG@3 = (1 + 1/log2 4 + 1) / 3 = 2.5 / 3; MRR@3 = (1 + 1/3 + 1) / 3 = 7/9
    assert res.metrics["ndcg@3"] == pytest.approx(2.5 / 3)
    assert res.metrics["mrr@3"] == pytest.approx(7 / 9)
    # precision@3 counts the padding as misses: (1/3 + 1/3 + 1/3) / 3
    assert res.metrics["precision@3"] == pytest.approx(1 / 3)
    assert res.per_user["recall@2"].tolist() == [1.0, 0.0, 1.0]
    assert res.n_items == 5 and res.model == "Popular"


def test_loo_valid_set_by_hand() -> None:
    split = hand_split()
    res = evaluate(Popular().fit(split), split.evaluation_set("valid"), ks=(2,), progress=False)
    # valid queries hold train only: u0 {0, 1} -> [2, 3]; u1 {0} -> [1, 2]; u3 {0, 1} -> [2, 3]
    # targets u0 {2}: rank 1; u1 {2}: rank 2; u3 {3}: rank 2
    assert res.recommendations.tolist() == [[2, 3], [1, 2], [2, 3]]
    assert res.metrics["recall@2"] == pytest.approx(1.0)
    assert res.metrics["mrr@2"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert res.metrics["ndcg@2"] == pytest.approx((1 + 2 / math.log2(3)) / 3)


def test_beyond_and_segments_by_hand() -> None:
    split = hand_split()
    users = Users(split.train.users, {"gender": ["M", "F", "M", "F"], "age": [17, 30, 60, 45]})
    catalog = Catalog(
        split.train.items,
        title=[f"t{i}" for i in range(5)],
        text=[""] * 5,
        attributes={"genres": [["a"], ["a"], ["b"], ["a", "b"], ["c"]]},
    )
    res = evaluate(
        Popular().fit(split),
        split.evaluation_set("test"),
        ks=(2,),
        train=split.train,
        users=users,
        catalog=catalog,
        progress=False,
    )
    # top-2 lists: u0 [3, 4], u1 [1, 3], u3 [2, 4]
    # coverage = |{1, 2, 3, 4}| / 5 = 0.8; exposure counts [0, 1, 1, 2, 2]:
    # Σ(2i − 6)·x_(i) = −2·1 + 0·1 + 2·2 + 4·2 = 10 -> Gini = 10 / (5 · 6) = 1/3
    assert res.beyond["coverage@2"] == pytest.approx(0.8)
    assert res.beyond["gini@2"] == pytest.approx(1 / 3)
    # p = (train users + 1) / (4 + 1) = [1, 0.8, 0.2, 0.2, 0.2]
    # mean p per list: 0.2, 0.5, 0.2 -> 0.3; novelty: 2.3219, 1.3219, 2.3219 -> 1.9886
    assert res.beyond["avg_popularity@2"] == pytest.approx(0.3)
    assert res.beyond["novelty@2"] == pytest.approx((2 * -math.log2(0.2) + 1.3219281) / 3)
    # ILD: [3, 4] {a,b}/{c}: 1; [1, 3] {a}/{a,b}: 1/2; [2, 4] {b}/{c}: 1 -> 5/6
    assert res.beyond["ild@2"] == pytest.approx(5 / 6)
    seg = res.segments
    # recall@2 per user [1, 0, 1]; u0 is M, u1 and u3 are F
    assert seg["gender"]["M"]["recall@2"] == 1.0 and seg["gender"]["M"]["users"] == 1
    assert seg["gender"]["F"]["recall@2"] == pytest.approx(0.5)
    assert seg["gender"]["F"]["users"] == 2
    assert set(seg["age"]) == {"<18", "25-34", "45-55"}
    # train sizes u0 2, u1 1, u3 2 -> sorted [1, 2, 2]: c1 = 1, c2 = 2 -> u1 low, u0/u3 mid
    assert seg["activity"]["low"]["users"] == 1 and seg["activity"]["mid"]["users"] == 2
    assert "high" not in seg["activity"]
    # head: item 0 (4 of 7 train rows >= 3.5); no target is a head item, item 0 never shown
    assert seg["item_band"]["head"]["users"] == 0
    assert seg["item_band"]["tail"]["users"] == 3
    assert seg["item_band"]["tail"]["recall@2"] == pytest.approx(2 / 3)
    assert seg["item_band"]["head"]["exposure_share@2"] == 0.0
    out = res.to_dict(per_user=True)
    json.dumps(out, allow_nan=False)  # strict JSON: undefined means are None, not NaN
    assert out["segments"]["item_band"]["head"]["recall@2"] is None
    assert out["per_user"]["recall@2"] == [1.0, 0.0, 1.0]


# --------------------------------------------------------------------------- random splits


def random_split(seed: int, n_users: int = 40, n_items: int = 30) -> Split:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=int(rng.integers(3, 20)), replace=False, p=None)
        users += [u] * len(chosen)
        items += chosen.tolist()
    data = Interactions.from_arrays(
        users, items, users=IdMap(range(n_users)), items=IdMap(range(n_items))
    )
    return ratio(data, seed=seed)


def reference_popular(split: Split, part: str, k: int) -> tuple[list[list[int]], dict[str, float]]:
    """Popular's lists and Recall/NDCG@k, one user at a time in plain Python."""
    train_users: dict[int, set[int]] = {}
    for u, i in zip(split.train.user.tolist(), split.train.item.tolist(), strict=True):
        train_users.setdefault(i, set()).add(u)
    count = [len(train_users.get(i, ())) for i in range(split.n_items)]
    ranking = sorted(range(split.n_items), key=lambda i: (-count[i], i))
    held = split.valid if part == "valid" else split.test
    excluded: dict[int, set[int]] = {}
    for u, i in zip(split.train.user.tolist(), split.train.item.tolist(), strict=True):
        excluded.setdefault(u, set()).add(i)
    if part == "test":
        for u, i in zip(split.valid.user.tolist(), split.valid.item.tolist(), strict=True):
            excluded.setdefault(u, set()).add(i)
    targets: dict[int, set[int]] = {}
    for u, i in zip(held.user.tolist(), held.item.tolist(), strict=True):
        targets.setdefault(u, set()).add(i)
    lists, recall, ndcg = [], [], []
    for u in sorted(targets):
        items = [i for i in ranking if i not in excluded.get(u, set())][:k]
        items += [-1] * (k - len(items))
        lists.append(items)
        gains = [1 / math.log2(r + 2) for r, i in enumerate(items) if i in targets[u]]
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(targets[u]), k)))
        recall.append(len(gains) / len(targets[u]))
        ndcg.append(sum(gains) / ideal)
    return lists, {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg))}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("part", ["valid", "test"])
def test_ratio_split_against_reference(seed: int, part: str) -> None:
    split = random_split(seed)
    eval_set = split.evaluation_set(part)  # type: ignore[arg-type]
    lists, expected = reference_popular(split, part, 10)
    res = evaluate(Popular().fit(split), eval_set, ks=(10,), progress=False, batch_size=7)
    assert res.recommendations.tolist() == lists
    for name, value in expected.items():
        assert res.metrics[name] == pytest.approx(value)


class RecommendOnly:
    """Popular behind ``recommend`` alone, as a model without ``score`` (e.g. TIGER) looks."""

    def __init__(self, inner: Popular) -> None:
        self.inner = inner
        self.config: ModelConfig = inner.config

    def fit(self, data: object, catalog: object = None, users: object = None) -> Self:
        return self

    def recommend(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.recommend(queries, k, exclude)

    def save(self, path: Path) -> None:  # pragma: no cover - not used
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> Self:  # pragma: no cover - not used
        raise NotImplementedError


def test_score_and_recommend_paths_agree_and_batching_is_invisible() -> None:
    split = random_split(5)
    eval_set = split.evaluation_set("test")
    model = Popular().fit(split)
    full = evaluate(model, eval_set, progress=False)
    single = evaluate(model, eval_set, progress=False, batch_size=1)
    rec_only = evaluate(RecommendOnly(model), eval_set, progress=False, n_items=split.n_items)
    shown = evaluate(model, eval_set, progress=True, batch_size=3)
    for other in (single, rec_only, shown):
        assert np.array_equal(full.recommendations, other.recommendations)
        assert full.metrics == other.metrics
        assert full.beyond == other.beyond
    assert full.ks == (10, 20) and full.recommendations.shape == (len(eval_set), 20)


def test_recommend_only_without_size_infers_it() -> None:
    split = hand_split()
    res = evaluate(
        RecommendOnly(Popular().fit(split)), split.evaluation_set("test"), ks=(2,), progress=False
    )
    assert res.n_items == 5  # largest item seen in lists or targets, plus one


class BadScores(Popular):
    def score(self, queries: Queries) -> np.ndarray:
        return super().score(queries)[:, :-1]


class LeastPopular(Popular):
    def score(self, queries: Queries) -> np.ndarray:
        return -super().score(queries)


def test_wrong_score_shape_is_an_error() -> None:
    split = hand_split()
    with pytest.raises(RecloopError, match="shape"):
        evaluate(BadScores().fit(split), split.evaluation_set("test"), progress=False)


def test_bad_arguments() -> None:
    split = hand_split()
    model = Popular().fit(split)
    eval_set = split.evaluation_set("test")
    with pytest.raises(ValueError, match="positive"):
        evaluate(model, eval_set, ks=(0,), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, eval_set, batch_size=0, progress=False)
    small = Catalog(IdMap(["x"]), ["x"], ["x"])
    with pytest.raises(ValueError, match="catalog"):
        evaluate(model, eval_set, catalog=small, train=split.train, progress=False)


def test_compare_two_models() -> None:
    split = random_split(7, n_users=120)
    eval_set = split.evaluation_set("test")
    popular = evaluate(Popular().fit(split), eval_set, progress=False)
    inverse = evaluate(LeastPopular().fit(split), eval_set, progress=False)
    assert inverse.metrics["recall@10"] < popular.metrics["recall@10"]
    result = compare(popular, inverse, "recall@10", n_resamples=500)
    assert result.mean_difference == pytest.approx(
        popular.metrics["recall@10"] - inverse.metrics["recall@10"]
    )
    assert result.ci_low <= result.mean_difference <= result.ci_high
    subset = evaluate(Popular().fit(split), eval_set.take(np.arange(10)), progress=False)
    with pytest.raises(ValueError, match="different users"):
        compare(popular, subset)
    with pytest.raises(KeyError, match="auc"):
        compare(popular, inverse, "auc@10")


def test_result_to_dict() -> None:
    split = hand_split()
    res = evaluate(Popular().fit(split), split.evaluation_set("test"), ks=(2,), progress=False)
    assert isinstance(res, EvalResult)
    out = res.to_dict()
    assert out["protocol"].startswith("full ranking")
    assert out["n_users"] == 3 and out["ks"] == [2] and "per_user" not in out
    assert set(out["beyond"]) == {"coverage@2", "gini@2"}
    assert out["segments"] == {}
