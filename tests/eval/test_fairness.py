"""Fairness audits: popularity bands, exposure shares, segment gaps and the flip test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recloop.data import Catalog, Dataset, IdMap, Interactions, Queries, Users, ratio
from recloop.data.types import Exclusions
from recloop.errors import ConfigError, DataError
from recloop.eval import evaluate, exposure_gini
from recloop.eval.fairness import (
    counterfactual_flip,
    exposure_audit,
    exposure_from_counts,
    fairness_audit,
    gap_draws,
    gaps_from_table,
    popularity_bands,
    summarise_gaps,
)
from recloop.models import EASE, EASEConfig, Popular
from recloop.models.base import top_k


def _train(counts: list[int], n_users: int = 60) -> Interactions:
    """Item i consumed by the first counts[i] users."""
    users = [u for c in counts for u in range(c)]
    items = [i for i, c in enumerate(counts) for _ in range(c)]
    ids = IdMap(str(u) for u in range(n_users))
    return Interactions.from_arrays(
        users, items, users=ids, items=IdMap(map(str, range(len(counts))))
    )


# -- bands and exposure ------------------------------------------------------------------------


def test_popularity_bands_by_cumulative_share() -> None:
    # rows 50, 30, 10, 6, 4, 0 (of 100): head reaches 50%, tail is what comes after 80%
    train = _train([30, 50, 6, 10, 0, 4])
    bands = popularity_bands(train)
    assert bands.tolist() == ["mid", "head", "tail", "tail", "tail", "tail"]
    # head reaches 60% with two items; 70% is reached before item 3 (80%): no mid band left
    assert popularity_bands(train, 0.6, 0.3).tolist() == ["head", "head"] + ["tail"] * 4
    with pytest.raises(ConfigError, match="tail_share"):
        popularity_bands(train, 0.5, 0.6)
    with pytest.raises(ConfigError, match="head_share"):
        popularity_bands(train, 1.0)


def test_exposure_audit_hand_computed() -> None:
    train = _train([30, 50, 6, 10, 0, 4])  # bands: mid, head, tail, tail, tail, tail
    recs = np.array([[1, 0, 4], [1, 2, -1], [1, 0, 1]])  # the repeated 1 counts once
    genres: list[Any] = [["A"], ["A", "B"], ["B"], None, ["C"], "A"]
    catalog = Catalog(train.items, [""] * 6, [""] * 6, {"genres": genres})
    audit = exposure_audit(recs, train, k=3, catalog=catalog)
    # impressions: item 0 ×2, item 1 ×3, item 2 ×1, item 4 ×1 → 7
    assert audit.impressions == 7 and audit.n_lists == 3
    head, mid, tail = (audit.bands[b] for b in ("head", "mid", "tail"))
    assert head["exposure_share"] == pytest.approx(3 / 7)
    assert mid["exposure_share"] == pytest.approx(2 / 7)
    assert tail["exposure_share"] == pytest.approx(2 / 7)
    assert (head["items"], mid["items"], tail["items"]) == (1, 1, 4)
    assert tail["catalog_share"] == pytest.approx(4 / 6)
    assert head["interaction_share"] == pytest.approx(0.5)
    assert head["ratio"] == pytest.approx((3 / 7) / 0.5)
    assert audit.gini == pytest.approx(exposure_gini(recs, 6, 3))
    assert audit.coverage == pytest.approx(4 / 6)
    # genres, fractional: A gets item0 2 + item1 3/2 = 3.5; B 3/2 + 1 = 2.5; C 1; (none) 0
    g = audit.genres
    assert list(g) == ["A", "B", "C", "(none)"]
    assert [g[x]["exposure_share"] for x in g] == pytest.approx([3.5 / 7, 2.5 / 7, 1 / 7, 0])
    assert sum(g[x]["catalog_share"] for x in g) == pytest.approx(1.0)
    assert g["A"]["catalog_share"] == pytest.approx((1 + 0.5 + 1) / 6)  # items 0, 1 (half), 5
    # rows: A = 30 + 25 + 4 = 59, B = 25 + 6 = 31, (none) = 10 of 100
    assert g["A"]["interaction_share"] == pytest.approx(0.59)
    assert g["(none)"]["interaction_share"] == pytest.approx(0.10)
    assert audit.to_dict()["bands"]["head"]["exposure_share"] == pytest.approx(3 / 7)
    with pytest.raises(ConfigError, match="k must be"):
        exposure_audit(recs, train, k=4)
    # the same audit from counts (as a service that counts its logged impressions would)
    counted = exposure_from_counts(
        np.array([2, 3, 1, 0, 1, 0]), train.item_counts(), genres=genres, k=3, n_lists=3
    )
    assert counted == audit
    with pytest.raises(DataError, match="impression counts"):
        exposure_from_counts(np.ones(3), np.ones(4))


# -- segment gaps ------------------------------------------------------------------------------


def test_gaps_hand_computed_and_intervals_hold_the_point() -> None:
    values = np.tile([0.2, 0.4, 0.6, 0.0, 1.0, np.nan, 0.5], 5)
    labels = np.array(["F", "F", "M", "M", "M", "F", None] * 5, dtype=object)
    gap = summarise_gaps([gap_draws(values, labels, segment="gender", n_resamples=400)])
    # F: 0.2, 0.4 (the NaN users are left out) → 0.3; M: 0.6, 0.0, 1.0 → 0.5333; overall 0.45
    assert gap.values["F"]["mean"] == pytest.approx(0.3)
    assert gap.values["M"]["mean"] == pytest.approx(1.6 / 3)
    assert gap.overall == pytest.approx(2.7 / 6)
    assert gap.values["F"]["vs_overall"] == pytest.approx(0.3 - 0.45)
    assert gap.values["F"]["users"] == 10 and gap.values["M"]["users"] == 15
    assert (gap.best, gap.worst) == ("M", "F")
    assert gap.gap == pytest.approx(1.6 / 3 - 0.3)
    assert gap.gap_ci is not None and gap.gap_ci[0] <= gap.gap <= gap.gap_ci[1]
    low, high = gap.values["F"]["ci_low"], gap.values["F"]["ci_high"]
    assert low is not None and high is not None and low <= -0.15 <= high
    without = summarise_gaps([gap_draws(values, labels, segment="gender", n_resamples=0)])
    assert without.gap == pytest.approx(gap.gap) and without.gap_ci is None
    assert without.values["M"]["ci_low"] is None
    assert gap.to_dict()["gap_ci"] == list(gap.gap_ci)
    # a resample without any user of a value leaves that value's interval undefined
    few = summarise_gaps([gap_draws(values[:7], labels[:7], segment="gender", n_resamples=400)])
    assert few.gap_ci is None and few.values["F"]["ci_low"] is None


def test_bootstrap_draws_match_a_plain_loop() -> None:
    rng = np.random.default_rng(5)
    values = rng.random(40)
    labels = rng.choice(["<18", "25-34", "56+"], size=40).astype(object)
    draws = gap_draws(values, labels, segment="age", n_resamples=50, seed=9)
    assert draws.labels == ("<18", "25-34", "56+")  # age bands in their natural order
    index = np.random.default_rng(9).integers(0, 40, size=(50, 40))
    for r in range(50):
        sample_v, sample_l = values[index[r]], labels[index[r]]
        for j, name in enumerate(draws.labels):
            chosen = sample_v[sample_l == name]
            expected = chosen.mean() if len(chosen) else np.nan
            np.testing.assert_allclose(draws.draws[r, j], expected, rtol=1e-12)
        assert draws.draws_overall[r] == pytest.approx(sample_v.mean())


def test_pooling_seeds_averages_points_and_draws() -> None:
    labels = np.array(["a", "b"] * 10, dtype=object)
    one = gap_draws(np.linspace(0, 1, 20), labels, segment="s", n_resamples=100, seed=1)
    two = gap_draws(np.linspace(1, 0, 20), labels, segment="s", n_resamples=100, seed=2)
    pooled = summarise_gaps([one, two])
    assert pooled.values["a"]["mean"] == pytest.approx((one.means[0] + two.means[0]) / 2)
    assert pooled.gap == pytest.approx(abs(pooled.values["a"]["mean"] - pooled.values["b"]["mean"]))


def test_gaps_from_a_segment_table() -> None:
    table = {"gender": {"F": {"ndcg@10": 0.2, "users": 4}, "M": {"ndcg@10": 0.3, "users": 6}},
             "item_band": {"head": {"ndcg@10": 0.5}}}  # fmt: skip
    gaps = gaps_from_table(table, "ndcg@10", 0.26)
    assert list(gaps) == ["gender"]
    assert gaps["gender"].gap == pytest.approx(0.1) and gaps["gender"].gap_ci is None
    assert gaps["gender"].values["F"]["vs_overall"] == pytest.approx(-0.06)


# -- the audit on an evaluation ----------------------------------------------------------------


def _tiny() -> tuple[Dataset, Any]:
    rng = np.random.default_rng(11)
    n_users, n_items = 24, 20
    user, item = [], []
    weights = 1.0 / np.arange(1, n_items + 1)
    for u in range(n_users):
        n = 6 + u % 5
        user += [u] * n
        item += rng.choice(n_items, size=n, replace=False, p=weights / weights.sum()).tolist()
    data = Interactions.from_arrays(user, item)
    users = Users(data.users, {"gender": ["M", "F", "M"] * 8, "age": [15, 30, 50, 70] * 6})
    genres = [["Drama"] if i % 2 else ["Comedy", "Drama"] for i in range(n_items)]
    catalog = Catalog(data.items, [""] * n_items, [""] * n_items, {"genres": genres})
    dataset = Dataset("tiny", data, catalog, users)
    return dataset, ratio(data, seed=0)


def test_fairness_audit_agrees_with_the_evaluation() -> None:
    dataset, split = _tiny()
    model = Popular().fit(split)
    result = evaluate(model, split.evaluation_set("test"), ks=(5, 10), train=split.train,
                      users=dataset.users, progress=False)  # fmt: skip
    audit = fairness_audit(result, split, dataset, k=5, n_resamples=200)
    assert set(audit.segments) == {"gender", "age", "activity"}
    for name, gap in audit.segments.items():
        for value, row in gap.values.items():
            assert row["mean"] == pytest.approx(result.segments[name][value]["ndcg@5"])
            assert row["users"] == result.segments[name][value]["users"]
    assert audit.exposure.gini == pytest.approx(result.beyond["gini@5"])
    assert audit.exposure.coverage == pytest.approx(result.beyond["coverage@5"])
    assert set(audit.exposure.genres) == {"Comedy", "Drama"}
    payload = audit.to_dict()
    assert payload["metric"] == "ndcg@5" and payload["n_users"] == result.n_users
    with pytest.raises(ConfigError, match="no per-user 'ndcg@7'"):
        fairness_audit(result, split, dataset, k=7)


# -- counterfactual flip -----------------------------------------------------------------------


class GenderSwitch:
    """Recommends items 0..k−1 to men, and to women the same with the first two replaced."""

    def recommend(self, queries: Queries, k: int, exclude: Exclusions | None = None) -> Any:
        assert queries.user_attributes is not None
        rows = []
        for gender in queries.user_attributes["gender"]:
            row = list(range(k))
            if gender == "F":
                row[:2] = [100, 101]
            rows.append(row)
        items = np.array(rows)
        return items, -np.arange(k, dtype=np.float32)[None, :].repeat(len(items), axis=0)


def test_flip_hand_computed() -> None:
    users = Users(IdMap(["a", "b", "c", "d"]), {"gender": ["M", "F", "M", "X"]})
    queries = Queries.from_lists([0, 1, 2, 3], [[5], [6], [], [7]])
    flip = counterfactual_flip(GenderSwitch(), queries, users, "gender", {"M": "F", "F": "M"}, 4)
    assert (flip.n_queries, flip.n_flipped) == (4, 3)  # "X" has no flip
    assert flip.change_rate == pytest.approx(0.5)  # two of four items change for everyone
    assert flip.position_change_rate == pytest.approx(0.5)
    assert flip.any_change_share == 1.0
    assert flip.distribution == [0, 0, 3, 0, 0]
    assert flip.by_value["M"]["users"] == 2 and flip.by_value["F"]["change_rate"] == 0.5
    callable_flip = counterfactual_flip(
        GenderSwitch(), queries, users, "gender", lambda g: "F" if g == "M" else None, 4
    )
    assert callable_flip.n_flipped == 2


def test_flip_of_a_model_that_ignores_attributes_changes_nothing() -> None:
    dataset, split = _tiny()
    model = EASE(EASEConfig(l2=10.0)).fit(split)
    q = split.evaluation_set("test").queries
    flip = counterfactual_flip(model, q, dataset.users, "gender", {"M": "F", "F": "M"}, 5)
    assert flip.n_flipped == len(q) and flip.change_rate == 0.0 and flip.distribution[0] == len(q)


def test_flip_input_errors() -> None:
    users = Users(IdMap(["a"]), {"gender": ["M"]})
    with pytest.raises(ConfigError, match="'age'"):
        counterfactual_flip(GenderSwitch(), Queries.from_lists([0], [[1]]), users, "age", {}, 3)
    with pytest.raises(DataError, match="user -1"):
        counterfactual_flip(GenderSwitch(), Queries.from_lists([-1], [[1]]), users, "gender", {}, 3)
    with pytest.raises(ConfigError, match="needs users"):
        counterfactual_flip(GenderSwitch(), Queries.from_lists([0], [[1]]), None, "gender", {}, 3)
    empty = counterfactual_flip(
        GenderSwitch(), Queries.from_lists([0], [[1]]), users, "gender", {}, 3
    )
    assert empty.n_flipped == 0 and np.isnan(empty.change_rate)
    assert empty.to_dict()["change_rate"] is None


def test_flip_on_movielens_moves_attribute_ease_only(ml100k: Dataset) -> None:
    from recloop.data import make_split
    from recloop.models.attribute_ease import AttributeEASE, AttributeEASEConfig

    split = make_split(ml100k.interactions, "ratio", seed=0)
    queries = split.evaluation_set("test").queries.take(np.arange(300))
    mapping = {"M": "F", "F": "M"}
    attr = AttributeEASE(AttributeEASEConfig(l2=250.0, attribute_weight=4.0))
    attr.fit(split, users=ml100k.users)
    moved = counterfactual_flip(attr, queries, ml100k.users, "gender", mapping, 10)
    assert moved.n_flipped == 300 and 0 < moved.change_rate < 1
    items, _ = top_k(attr.score(queries), 10, Exclusions.from_history(queries).to_csr(1682))
    base, _ = attr.recommend(queries, 10)
    np.testing.assert_array_equal(items, base)  # the queries' own attributes are the fitted ones


# -- the report's section ----------------------------------------------------------------------


def test_report_carries_the_fairness_section() -> None:
    from recloop.report import ReportRun, render_html, report_payload

    dataset, split = _tiny()
    runs = []
    for name, model in (("Popular", Popular()), ("EASE", EASE(EASEConfig(l2=10.0)))):
        model.fit(split)
        result = evaluate(model, split.evaluation_set("test"), ks=(10,), train=split.train,
                          users=dataset.users, progress=False)  # fmt: skip
        runs.append(ReportRun(model=name, seed=0, test=result))
    payload = report_payload(runs, dataset="tiny", splits=split, n_resamples=200,
                             users=dataset.users, catalog=dataset.catalog)  # fmt: skip
    fairness = payload["fairness"]
    assert fairness["metric"] == "ndcg@10" and set(fairness["models"]) == {"Popular", "EASE"}
    ease = fairness["models"]["EASE"]
    assert set(ease["segments"]) == {"gender", "age", "activity"}
    assert ease["segments"]["gender"]["gap_ci"] is not None
    assert ease["gini"] == pytest.approx(runs[1].test.beyond["gini@10"])
    audit = fairness_audit(runs[1].test, split, dataset, k=10, n_resamples=200)
    assert ease["segments"]["age"]["gap"] == pytest.approx(audit.segments["age"].gap)
    assert ease["bands"]["tail"]["exposure_share"] == pytest.approx(
        audit.exposure.bands["tail"]["exposure_share"]
    )
    assert set(ease["genres"]) == {"Comedy", "Drama"}
    page = render_html(payload, plots={})
    assert "<h2>Fairness and exposure</h2>" in page and "Exposure by genre" in page
    # without users the gender and age gaps come from the segment tables, without intervals
    bare = report_payload(runs, dataset="tiny", splits=split, n_resamples=50)
    gender = bare["fairness"]["models"]["EASE"]["segments"]["gender"]
    assert gender["gap"] == pytest.approx(audit.segments["gender"].gap) and gender["gap_ci"] is None
    assert bare["fairness"]["models"]["EASE"]["genres"] == {}
    assert "Exposure by genre" not in render_html(bare, plots={})
    old = {key: value for key, value in payload.items() if key != "fairness"}
    assert "No fairness audit" in render_html(old, plots={})  # a results.json from before


def test_report_keeps_zero_shares() -> None:
    from recloop.report import ReportRun, report_payload

    dataset, split = _tiny()
    model = Popular().fit(split)
    result = evaluate(model, split.evaluation_set("test"), ks=(3,), train=split.train,
                      progress=False)  # fmt: skip
    payload = report_payload([ReportRun("Popular", 0, result)], dataset="tiny", splits=split,
                             n_resamples=0, catalog=dataset.catalog)  # fmt: skip
    bands = payload["fairness"]["models"]["Popular"]["bands"]
    assert bands["tail"]["exposure_share"] == 0.0  # popularity never reaches the tail
    assert bands["head"]["exposure_share"] + bands["mid"]["exposure_share"] == pytest.approx(1.0)


def test_report_pools_seeds_from_tables_without_users() -> None:
    from recloop.data import ratio as ratio_split
    from recloop.report import ReportRun, report_payload

    dataset, _ = _tiny()
    runs, splits = [], []
    for seed in (0, 1):
        split = ratio_split(dataset.interactions, seed=seed)
        model = EASE(EASEConfig(l2=10.0)).fit(split)
        result = evaluate(model, split.evaluation_set("test"), ks=(10,), train=split.train,
                          users=dataset.users, progress=False)  # fmt: skip
        runs.append(ReportRun("EASE", seed, result))
        splits.append(split)
    payload = report_payload(runs, dataset="tiny", splits=splits, n_resamples=100)
    gender = payload["fairness"]["models"]["EASE"]["segments"]["gender"]
    means = {v: np.mean([r.test.segments["gender"][v]["ndcg@10"] for r in runs]) for v in "FM"}
    assert gender["values"]["F"]["mean"] == pytest.approx(means["F"])
    assert gender["gap"] == pytest.approx(abs(means["F"] - means["M"]))
    assert gender["gap_ci"] is None
    activity = payload["fairness"]["models"]["EASE"]["segments"]["activity"]
    assert activity["gap_ci"] is not None  # activity comes from train: labels, so intervals
