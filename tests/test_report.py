"""The evaluation report: JSON payload, self-contained HTML, escaping and the edge cases."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recloop.data import Interactions, Queries, Split, Users, ratio
from recloop.errors import ConfigError
from recloop.eval import EvalResult, evaluate, paired_bootstrap
from recloop.models import Popular
from recloop.report import (
    ReportRun,
    bootstrap_means,
    percentile_interval,
    render_html,
    report_payload,
    write_report,
)

N_USERS, N_ITEMS = 12, 15
EVIL_NAME = '<script>alert("x")</script> $a$'
EVIL_CONFIG = {"note": "<img src=x onerror=alert(1)>", "l2": 1.0}


def tiny_split(seed: int = 0) -> Split:
    """12 users with 5 to 9 interactions each over 15 items; item popularity falls with index."""
    rng = np.random.default_rng(123)
    user, item = [], []
    for u in range(N_USERS):
        n = 5 + u % 5
        chosen = rng.choice(N_ITEMS, size=n, replace=False, p=_zipf(N_ITEMS))
        user += [u] * n
        item += chosen.tolist()
    return ratio(Interactions.from_arrays(user, item), seed=seed)


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


def tiny_users(split: Split) -> Users:
    gender = ["M", "F"] * (N_USERS // 2)
    age = [17, 22, 30, 40, 50, 60] * (N_USERS // 6)
    return Users(split.train.users, {"gender": gender, "age": age})


class Unpopular:
    """A trivial second ranker: the least popular train items first."""

    def __init__(self, split: Split) -> None:
        self.counts = split.train.item_counts().astype(np.float32)

    def score(self, queries: Queries) -> np.ndarray:
        return np.broadcast_to(-self.counts, (len(queries), len(self.counts))).copy()

    def recommend(self, queries: Queries, k: int, exclude: Any = None) -> Any:
        raise NotImplementedError  # evaluate uses score


def run_on(split: Split, model: str = "Popular", *, segments: bool = True, **kw: Any) -> ReportRun:
    ranker = Unpopular(split) if model == "Unpopular" else Popular().fit(split)
    extra: dict[str, Any] = {"train": split.train, "users": tiny_users(split)} if segments else {}
    results = {
        part: evaluate(ranker, split.evaluation_set(part), ks=(5, 10), progress=False, **extra)
        for part in ("valid", "test")
    }
    config = {"count": "users"} if model == "Popular" else {}
    return ReportRun(
        model=kw.pop("name", model),
        seed=split.seed,
        test=results["test"],
        valid=results["valid"],
        config=kw.pop("config", config),
        train_seconds=0.01,
        peak_rss_mb=100.0,
    )


def no_plots() -> dict[str, Any]:
    return {}


def test_report_files_hold_protocol_records_and_plots(tmp_path: Path) -> None:
    split = tiny_split()
    runs = [run_on(split), run_on(split, "Unpopular")]
    json_path, html_path = write_report(tmp_path / "out", runs, dataset="tiny", splits=split)
    assert (json_path.name, html_path.name) == ("results.json", "report.html")

    payload = json.loads(json_path.read_text())
    protocol = payload["protocol"]
    assert protocol["dataset"] == "tiny"
    assert protocol["split"]["protocol"] == "ratio"
    assert protocol["split"]["params"]["valid_share"] == 0.1
    assert protocol["candidates"] == f"full ranking over all items ({N_ITEMS} items)"
    assert protocol["exclusions"] == split.meta["query_history"]
    assert protocol["seeds"] == [0] and protocol["ks"] == [5, 10]
    assert protocol["recloop_version"] and "git_commit" in protocol
    assert protocol["filters"] is None  # ratio() directly: no filters recorded
    assert [(r["model"], r["seed"]) for r in payload["records"]] == [
        ("Popular", 0),
        ("Unpopular", 0),
    ]
    record = payload["records"][0]
    assert record["metrics"]["ndcg@10"] == pytest.approx(runs[0].test.metrics["ndcg@10"])
    low, high = record["intervals"]["ndcg@10"]
    assert low <= record["metrics"]["ndcg@10"] <= high
    assert payload["models"] == ["Popular", "Unpopular"]  # Popular ranks first on this data
    assert payload["reference"] == {"model": "Popular", "named": False}
    (comparison,) = payload["comparisons"]
    assert comparison["model"] == "Unpopular" and comparison["seed"] == 0
    assert comparison["mean_difference"] == pytest.approx(
        runs[1].test.metrics["ndcg@10"] - runs[0].test.metrics["ndcg@10"]
    )
    bias = payload["popularity_bias"]
    assert sum(bias["train_share"]) == pytest.approx(1.0)
    assert sum(bias["recommendation_share"]["Popular"]) == pytest.approx(1.0)
    assert set(payload["segments"]["segments"]) == {"gender", "age", "activity", "item_band"}

    page = html_path.read_text()
    assert "full ranking over all items" in page
    assert html_escape(split.meta["query_history"]) in page
    assert "Popular" in page and "Unpopular" in page
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b", page)


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_untrusted_names_and_configs_are_escaped(tmp_path: Path) -> None:
    from recloop.report_plots import metric_bars

    split = tiny_split()
    runs = [run_on(split, name=EVIL_NAME, config=EVIL_CONFIG), run_on(split, "Unpopular")]
    _, html_path = write_report(
        tmp_path,
        runs,
        dataset="<b>tiny</b>",
        splits=split,
        title="<i>t</i>",
        plots={"metrics": metric_bars},  # the legend holds the name: "$" is no mathtext error
    )
    page = html_path.read_text()
    for raw in ("<script>", "<img src=x", "<b>tiny</b>", "<i>t</i>"):
        assert raw not in page
    assert html_escape(EVIL_NAME) in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/png;base64,") == 1


def test_several_seeds_give_mean_std_and_pooled_comparison() -> None:
    splits = [tiny_split(0), tiny_split(1)]
    runs = [run_on(s, m) for s in splits for m in ("Popular", "Unpopular")]
    payload = report_payload(runs, dataset="tiny", splits=splits, n_resamples=200)
    assert payload["protocol"]["seeds"] == [0, 1]
    popular = payload["summary"][0]
    values = [r.test.metrics["ndcg@10"] for r in runs if r.model == "Popular"]
    assert popular["seeds"] == [0, 1]
    assert popular["per_seed"]["ndcg@10"] == pytest.approx(values)
    assert popular["mean"]["ndcg@10"] == pytest.approx(np.mean(values))
    assert popular["std"]["ndcg@10"] == pytest.approx(np.std(values, ddof=1))
    assert [row["seed"] for row in payload["comparisons"]] == [0, 1, "all"]
    pooled = payload["comparisons"][-1]
    assert pooled["mean_difference"] == pytest.approx(
        np.mean([row["mean_difference"] for row in payload["comparisons"][:2]])
    )
    assert pooled["ci_low"] <= pooled["mean_difference"] <= pooled["ci_high"]
    page = render_html(payload, plots=no_plots())
    assert "<td>all</td>" in page and 'class="sd"' in page


def test_single_model_single_seed_without_segments(tmp_path: Path) -> None:
    from recloop.report_plots import segment_bars

    split = tiny_split()
    _, html_path = write_report(
        tmp_path,
        [run_on(split, segments=False)],
        dataset="tiny",
        splits=[split],
        plots={"segments": segment_bars},
    )
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["comparisons"] == [] and payload["segments"]["segments"] == {}
    assert payload["summary"][0]["std"]["ndcg@10"] is None  # one seed: no std
    page = html_path.read_text()
    assert "Only one model" in page and "No segments" in page
    assert "data:image/png" not in page


def test_nan_metrics_become_null_dashes_and_missing_bars() -> None:
    from recloop.report_plots import metric_bars

    split = tiny_split()
    good = run_on(split)
    test = good.test
    nan_test = dataclasses.replace(
        test,
        metrics={name: float("nan") for name in test.metrics},
        per_user={name: np.full_like(v, np.nan) for name, v in test.per_user.items()},
    )
    broken = dataclasses.replace(run_on(split, "Unpopular"), test=nan_test, model="Broken")
    payload = report_payload([broken, good], dataset="tiny", splits=split, n_resamples=50)
    json.dumps(payload, allow_nan=False)  # strict JSON
    assert payload["models"] == ["Popular", "Broken"]  # NaN ranks last
    summary = {entry["model"]: entry for entry in payload["summary"]}
    assert summary["Broken"]["mean"]["ndcg@10"] is None
    assert summary["Broken"]["interval"]["ndcg@10"] is None
    assert payload["comparisons"][0]["note"] == "no user has a defined ndcg@10"
    page = render_html(payload, plots={"metrics": metric_bars})
    assert "Broken" in page and "–" in page
    assert page.count("data:image/png;base64,") == 1


def test_named_reference_and_bad_inputs() -> None:
    split = tiny_split()
    runs = [run_on(split), run_on(split, "Unpopular")]
    payload = report_payload(runs, dataset="tiny", splits=split, reference="Unpopular")
    assert payload["reference"] == {"model": "Unpopular", "named": True}
    assert [row["model"] for row in payload["comparisons"]] == ["Popular"]
    with pytest.raises(ConfigError, match="reference"):
        report_payload(runs, dataset="tiny", splits=split, reference="EASE")
    with pytest.raises(ConfigError, match="no split"):
        report_payload(runs, dataset="tiny", splits=tiny_split(1))
    with pytest.raises(ConfigError, match="two runs"):
        report_payload([runs[0], runs[0]], dataset="tiny", splits=split)
    with pytest.raises(ConfigError, match="at least one run"):
        report_payload([], dataset="tiny", splits=split)


def test_saved_json_renders_again(tmp_path: Path) -> None:
    split = tiny_split()
    payload = report_payload([run_on(split)], dataset="tiny", splits=split, n_resamples=50)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload))
    page = render_html(json.loads(path.read_text()), plots=no_plots())
    assert "<h2>Protocol</h2>" in page and "Popular" in page


def test_bootstrap_means_match_paired_bootstrap_against_zero() -> None:
    values = np.random.default_rng(0).random(300)
    expected = paired_bootstrap(values, np.zeros_like(values), n_resamples=500, seed=3)
    low, high = percentile_interval(bootstrap_means(values, n_resamples=500, seed=3)[0]) or (0, 0)
    assert (low, high) == pytest.approx((expected.ci_low, expected.ci_high))


def test_bootstrap_means_skip_nan_users() -> None:
    values = np.array([[1.0, np.nan, 1.0], [np.nan, np.nan, np.nan]])
    draws = bootstrap_means(values, n_resamples=100)
    assert np.all((draws[0] == 1.0) | np.isnan(draws[0]))  # resamples of only the NaN user
    assert np.isnan(draws[1]).all()
    assert percentile_interval(draws[1]) is None


def test_from_model_run_keeps_class_name_config_and_costs() -> None:
    from recloop.experiment import ModelRun

    split = tiny_split()
    base = run_on(split)
    model = Popular().fit(split)
    model_run = ModelRun(model, 1.5, base.valid or base.test, base.test, 321.0)
    run = ReportRun.from_model_run(model_run, split.seed)
    assert (run.model, run.seed, run.train_seconds, run.peak_rss_mb) == ("Popular", 0, 1.5, 321.0)
    assert run.config == {"count": "users"}
    assert isinstance(run.test, EvalResult)


def _two_runs(ks_a: tuple[int, ...], ks_b: tuple[int, ...]) -> tuple[list[Any], Any]:
    from recloop.data import Interactions, ratio
    from recloop.eval import evaluate
    from recloop.models import Popular
    from recloop.report import ReportRun

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 8)
    split = ratio(Interactions.from_arrays(user=users, item=rng.integers(0, 25, len(users))))
    test = split.evaluation_set("test")
    model = Popular().fit(split)
    a = evaluate(model, test, ks=ks_a, train=split.train, progress=False)
    b = evaluate(model, test, ks=ks_b, train=split.train, progress=False)
    return [ReportRun("A", 0, a), ReportRun("B", 0, b)], split


def test_a_run_with_shorter_lists_is_left_out_at_the_larger_cut_off() -> None:
    from recloop.report import report_payload

    runs, split = _two_runs((5,), (10,))
    payload = report_payload(runs, dataset="d", splits=split, n_resamples=20)
    assert payload["metric"] == "ndcg@10"
    assert set(payload["popularity_bias"]["recommendation_share"]) == {"B"}


def test_no_resamples_gives_comparisons_without_intervals() -> None:
    from recloop.report import report_payload

    runs, split = _two_runs((10,), (10,))
    payload = report_payload(runs, dataset="d", splits=split, n_resamples=0)
    (row,) = payload["comparisons"]
    assert row["note"] == "no bootstrap" and row["mean_difference"] == 0.0
