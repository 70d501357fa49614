"""The evaluation report: ``results.json`` and a self-contained ``report.html``.

:func:`report_payload` gathers everything into one JSON-ready dict: the protocol, one record
per (model, seed), means ± std over seeds, bootstrap intervals over users, paired comparisons
against a reference model and the data behind every plot. :func:`render_html` draws the HTML
from that dict alone (plots are PNGs embedded as ``data:`` URIs), so a saved ``results.json``
can be rendered again later. :func:`write_report` does both.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.data.split import Split
from recloop.data.types import Catalog, Users
from recloop.errors import ConfigError
from recloop.eval.beyond import BEYOND_METRICS, exposure_counts
from recloop.eval.bootstrap import paired_bootstrap
from recloop.eval.evaluate import EvalResult
from recloop.eval.fairness import (
    BANDS,
    GapDraws,
    exposure_audit,
    gap_draws,
    summarise_gaps,
    table_draws,
)
from recloop.eval.metrics import METRICS, metric_name
from recloop.eval.segments import user_segments

if TYPE_CHECKING:
    from recloop.experiment import ModelRun

REPORT_FORMAT = "recloop-report/1"
CANDIDATES = "full ranking over all items"
RELEVANCE = "binary: the distinct items of the user's positive held-out interactions"
PLOT_METRICS: tuple[str, ...] = ("ndcg", "recall", "mrr", "hit", "precision")
"""Ranking metrics drawn in the metric-bar plot (at the primary cut-off)."""
TABLE_METRICS: tuple[str, ...] = ("ndcg", "recall", "mrr", "hit")
"""Ranking metrics shown in the leaderboard at the primary cut-off (NDCG and recall at the
others)."""
N_BUCKETS = 10
"""Popularity buckets (deciles of the items sorted by train popularity)."""
PlotFunction = Callable[[Mapping[str, Any]], bytes | None]
"""Draws one figure from a report payload as PNG bytes (``None``: nothing to draw)."""
_MAX_CELLS = 1 << 22  # resample indices drawn per chunk, as in recloop.eval.bootstrap
_FILTER_RECORD_KEYS = (
    "filters",
    "rows_in",
    "rows_after_threshold",
    "rows_after_dedup",
    "rows_out",
    "users_out",
    "items_out",
)


@dataclass(frozen=True, eq=False)
class ReportRun:
    """One model on one seed: its label, settings, costs and evaluation results.

    ``model`` is the label shown in the report (runs of one label over several seeds are
    aggregated); ``seed`` must match the seed of one of the splits given to the report.
    """

    model: str
    seed: int
    test: EvalResult
    valid: EvalResult | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None
    peak_rss_mb: float | None = None

    @classmethod
    def from_model_run(cls, run: ModelRun, seed: int, *, name: str | None = None) -> ReportRun:
        """Wrap an :class:`~recloop.experiment.ModelRun`; ``name`` defaults to the class name."""
        return cls(
            model=name or run.model.name,
            seed=seed,
            test=run.test,
            valid=run.valid,
            config=run.model.config.model_dump(mode="json"),
            train_seconds=run.train_seconds,
            peak_rss_mb=run.peak_rss_mb,
        )


# ---------------------------------------------------------------------------- bootstrap


def bootstrap_means(
    values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, max_cells: int = _MAX_CELLS
) -> np.ndarray:
    """Means of ``values`` (metrics × users) over users resampled with replacement.

    Returns (metrics × ``n_resamples``). Every metric sees the same resampled users; NaN
    values (undefined per-user metrics) are left out of each mean.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_metrics, n = values.shape
    if n == 0:
        return np.full((n_metrics, n_resamples), np.nan)
    rng = np.random.default_rng(seed)
    out = np.empty((n_metrics, n_resamples), dtype=np.float64)
    step = max(1, max_cells // n)
    defined = ~np.isnan(values)
    filled = np.where(defined, values, 0.0)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        index = rng.integers(0, n, size=(stop - start, n))
        sums = filled[:, index].sum(axis=2)
        counts = defined[:, index].sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, start:stop] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def percentile_interval(
    resampled: np.ndarray, confidence: float = 0.95
) -> tuple[float, float] | None:
    """The percentile interval of resampled means, or ``None`` if any resample is undefined."""
    resampled = np.asarray(resampled, dtype=np.float64)
    if len(resampled) == 0 or np.isnan(resampled).any():
        return None
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------- payload


def _finite(value: Any) -> float | None:
    """A float, or ``None`` for a missing or NaN value."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _json_ready(value: Any) -> Any:
    """Plain JSON types: NaN becomes ``None``, numpy scalars and arrays become Python ones."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric_order(keys: set[str], ks: Sequence[int]) -> list[str]:
    """Ranking metrics by cut-off in METRICS order, then beyond-accuracy ones, then the rest."""
    ordered = [metric_name(m, k) for k in ks for m in METRICS]
    ordered += [metric_name(m, k) for m in BEYOND_METRICS for k in ks]
    known = [name for name in ordered if name in keys]
    return known + sorted(keys - set(known))


def _primary_k(ks: Sequence[int]) -> int:
    return 10 if 10 in ks else min(ks)


def _split_description(split: Split) -> str:
    meta = split.meta
    if split.protocol == "loo":
        return (
            "chronological leave-one-out per user: the last positive interaction is test, the "
            "second-to-last validation, the rest train; users with fewer than 3 stay in train"
        )
    if split.protocol == "ratio":
        valid, test = meta.get("valid_share", 0.1), meta.get("test_share", 0.1)
        return (
            f"per-user random split: validation ⌊{valid}·n⌋ and test ⌊{test}·n⌋ of each "
            "user's positive interactions (RecBole 1.2 rounding: a user too small for a share "
            "still gives test, then validation, one item while train keeps one), the rest train"
        )
    if split.protocol == "temporal":
        return (
            f"global time cut-offs: validation from t={meta.get('valid_start')}, "
            f"test from t={meta.get('test_start')}"
        )
    if split.protocol == "cold_items":
        return (
            f"cold items: a seeded share {meta.get('share')} of the items loses all train "
            "interactions; half form the validation cold set, half the test cold set"
        )
    return split.protocol


def _split_params(split: Split) -> dict[str, Any]:
    meta = split.meta
    skip = {*_FILTER_RECORD_KEYS, "query_history", "params"}
    params = {key: value for key, value in meta.items() if key not in skip}
    params.update(meta.get("params") or {})
    return params


def _filters(split: Split) -> dict[str, Any] | None:
    """The filters and their row counts as recorded in the split, or ``None``."""
    if "filters" not in split.meta:
        return None
    return {key: split.meta[key] for key in _FILTER_RECORD_KEYS if key in split.meta}


def _protocol(
    dataset: str,
    splits: Mapping[int, Split],
    runs: Sequence[ReportRun],
    ks: list[int],
    bootstrap: dict[str, Any],
) -> dict[str, Any]:
    from recloop import __version__
    from recloop.benchmark import git_commit, machine_info

    first = next(iter(splits.values()))
    n_items = sorted({run.test.n_items for run in runs})
    return {
        "dataset": dataset,
        "split": {
            "protocol": first.protocol,
            "description": _split_description(first),
            "params": _split_params(first),
        },
        "filters": _filters(first),
        "candidates": f"{CANDIDATES} ({', '.join(map(str, n_items))} items)",
        "n_items": n_items[0] if len(n_items) == 1 else n_items,
        "exclusions": first.meta.get("query_history", "each query's history (its train items)"),
        "relevance": RELEVANCE,
        "evaluation": sorted({run.test.protocol for run in runs}),
        "averaged_over": "users with at least one test target",
        "seeds": sorted(splits),
        "ks": ks,
        "split_sizes": {
            str(seed): {
                key: value
                for key, value in splits[seed].summary().items()
                if key in ("train_rows", "valid_rows", "test_rows")
            }
            for seed in sorted(splits)
        },
        "bootstrap": bootstrap,
        "recloop_version": __version__,
        "git_commit": git_commit(),
        "machine": machine_info().model_dump(),
    }


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (NaN for a single seed)."""
    if len(values) < 2:
        return float("nan")
    return float(np.std(values, ddof=1))


def _popularity_bias(
    by_model: Mapping[str, list[ReportRun]], splits: Mapping[int, Split], k: int
) -> dict[str, Any]:
    """Per bucket of items sorted by train popularity: share of train rows and of top-k slots."""
    n_items = next(iter(splits.values())).n_items
    n_buckets = max(1, min(N_BUCKETS, n_items))
    train_share: list[np.ndarray] = []
    buckets_of: dict[int, list[np.ndarray]] = {}
    for seed, split in splits.items():
        counts = split.train.positive().item_counts().astype(np.float64)
        order = np.lexsort((np.arange(len(counts)), -counts))
        buckets = np.array_split(order, n_buckets)
        buckets_of[seed] = buckets
        total = counts.sum()
        shares = [counts[b].sum() / total if total else math.nan for b in buckets]
        train_share.append(np.asarray(shares))
    rec_share: dict[str, list[float]] = {}
    for model, runs in by_model.items():
        per_seed = []
        for run in runs:
            if run.test.recommendations.shape[1] < k:
                continue  # evaluated with shorter lists: "–" at this K, as in the other sections
            split = splits[run.seed]
            exposure = exposure_counts(run.test.recommendations, split.n_items, k)
            total = exposure.sum()
            per_seed.append(
                [exposure[b].sum() / total if total else math.nan for b in buckets_of[run.seed]]
            )
        if per_seed:
            rec_share[model] = np.mean(per_seed, axis=0).tolist()
    sizes = [len(b) for b in np.array_split(np.arange(n_items), n_buckets)]
    return {
        "k": k,
        "n_buckets": n_buckets,
        "bucket_items": sizes,
        "train_share": np.mean(train_share, axis=0).tolist(),
        "recommendation_share": rec_share,
    }


def _segments(by_model: Mapping[str, list[ReportRun]], metric: str) -> dict[str, Any]:
    """``{segment: {value: {"users": n, "metric": {model: mean over seeds}}}}``.

    ``users`` is the count on the first run that has the segment value.
    """
    users: dict[str, dict[str, int]] = {}
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    for model, runs in by_model.items():
        for run in runs:
            for segment, rows in run.test.segments.items():
                for value, row in rows.items():
                    users.setdefault(segment, {}).setdefault(value, int(row.get("users", 0)))
                    cell = values.setdefault(segment, {}).setdefault(value, {})
                    cell.setdefault(model, []).append(row.get(metric, math.nan))
    out = {
        segment: {
            value: {
                "users": users[segment][value],
                "metric": {model: float(np.mean(v)) for model, v in cell.items()},
            }
            for value, cell in rows.items()
        }
        for segment, rows in values.items()
    }
    return {"metric": metric, "segments": out}


def _nan_if_none(value: Any) -> float:
    number = _finite(value)
    return math.nan if number is None else number


def _mean_rows(tables: list[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """Field-wise means over seeds of ``{name: {field: number}}`` tables (names on all seeds)."""
    if not tables:
        return {}
    names = [name for name in tables[0] if all(name in table for table in tables)]
    return {
        name: {
            key: float(np.mean([_nan_if_none(table[name][key]) for table in tables]))
            for key in tables[0][name]
        }
        for name in names
    }


def _fairness(
    by_model: Mapping[str, list[ReportRun]],
    splits: Mapping[int, Split],
    k: int,
    *,
    users: Users | None,
    catalog: Catalog | None,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per model: segment gaps of NDCG@k with intervals, exposure by band and genre, Gini.

    Gender and age gaps need ``users`` (for per-user labels); without them they come from the
    runs' segment tables, means only. Seeds are pooled as elsewhere in the report; a segment
    missing on some seed is left out.
    """
    metric = metric_name("ndcg", k)
    models: dict[str, Any] = {}
    rule = ""
    for model, runs in by_model.items():
        draws: dict[str, list[GapDraws]] = {}
        exposures = []
        for run in runs:
            split = splits[run.seed]
            if metric in run.test.per_user:
                labels = user_segments(run.test.users, users=users, train=split.train)
                for segment, values in labels.items():
                    draws.setdefault(segment, []).append(
                        gap_draws(
                            run.test.per_user[metric],
                            values,
                            segment=segment,
                            metric=metric,
                            n_resamples=n_resamples,
                            seed=seed + run.seed,
                        )
                    )
            if run.test.recommendations.shape[1] >= k:
                audit = exposure_audit(run.test.recommendations, split.train, k=k, catalog=catalog)
                exposures.append(audit)
                rule = audit.band_rule
        tables: dict[str, list[GapDraws]] = {}  # segments the runs have but no labels here
        for run in runs:
            overall = run.test.metrics.get(metric, math.nan)
            for name, found in table_draws(run.test.segments, metric, overall).items():
                if name not in draws:
                    tables.setdefault(name, []).append(found)
        segments = {
            name: summarise_gaps(d, confidence).to_dict()
            for name, d in {**draws, **tables}.items()
            if len(d) == len(runs)
        }
        models[model] = {
            "segments": segments,
            "gini": float(np.mean([a.gini for a in exposures])) if exposures else None,
            "coverage": float(np.mean([a.coverage for a in exposures])) if exposures else None,
            "bands": _mean_rows([a.bands for a in exposures]),
            "genres": _mean_rows([a.genres for a in exposures]),
        }
    return {"metric": metric, "k": k, "band_rule": rule, "models": models}


def _comparisons(
    by_model: Mapping[str, list[ReportRun]],
    reference: str,
    metric: str,
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Paired bootstrap of ``metric`` for each model against ``reference``, per seed and pooled
    (``n_resamples = 0``: the mean differences only)."""
    ref_runs = {run.seed: run for run in by_model[reference]}
    rows: list[dict[str, Any]] = []
    for model, runs in by_model.items():
        if model == reference:
            continue
        pooled: list[np.ndarray] = []
        differences: list[float] = []
        for run in runs:
            row: dict[str, Any] = {"model": model, "reference": reference, "seed": run.seed}
            ref = ref_runs.get(run.seed)
            note = _pairing_problem(run.test, ref.test if ref else None, metric)
            if note or ref is None:
                rows.append({**row, "note": note})
                continue
            a = run.test.per_user[metric].astype(np.float64)
            b = ref.test.per_user[metric].astype(np.float64)
            both = ~(np.isnan(a) | np.isnan(b))
            if not both.any():
                rows.append({**row, "note": f"no user has a defined {metric}"})
                continue
            if n_resamples == 0:  # as everywhere in the report: no resamples, no interval
                difference = float(np.mean(a[both] - b[both]))
                rows.append({**row, "mean_difference": difference, "note": "no bootstrap"})
                continue
            result = paired_bootstrap(
                a[both],
                b[both],
                n_resamples=n_resamples,
                confidence=confidence,
                seed=seed,
                metric=metric,
            )
            found = result.to_dict()
            found["bootstrap_seed"] = found.pop("seed")
            rows.append({**found, **row, "significant": result.significant})
            differences.append(result.mean_difference)
            pooled.append(bootstrap_means(a[both] - b[both], n_resamples=n_resamples, seed=seed)[0])
        if len(runs) > 1 and len(pooled) == len(runs):
            means = np.mean(pooled, axis=0)
            interval = percentile_interval(means, confidence)
            assert interval is not None
            rows.append(
                {
                    "model": model,
                    "reference": reference,
                    "seed": "all",
                    "mean_difference": float(np.mean(differences)),
                    "ci_low": interval[0],
                    "ci_high": interval[1],
                    "p_value": float((means <= 0).mean()),
                    "significant": interval[0] > 0 or interval[1] < 0,
                    "metric": metric,
                }
            )
    return rows


def _pairing_problem(a: EvalResult, b: EvalResult | None, metric: str) -> str | None:
    if b is None:
        return "the reference has no run on this seed"
    if not np.array_equal(a.users, b.users):
        return "the two runs evaluated different users"
    if metric not in a.per_user or metric not in b.per_user:
        return f"no per-user {metric}"
    return None


def _model_entries(
    model: str,
    runs: Sequence[ReportRun],
    ks: Sequence[int],
    *,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One record per seed and the model's summary: mean, std and interval over seeds.

    Seed s resamples users with bootstrap seed ``seed + s``, so every model on one split sees
    the same resampled users; the summary interval averages the seeds' resampled means.
    """
    values = [{**run.test.metrics, **run.test.beyond} for run in runs]
    names = _metric_order({name for v in values for name in v}, ks)
    ranking = [metric_name(m, k) for k in ks for m in METRICS]
    resampled: dict[str, list[np.ndarray]] = {}
    records = []
    for run, flat in zip(runs, values, strict=True):
        present = [name for name in ranking if name in run.test.per_user]
        intervals: dict[str, tuple[float, float] | None] = {}
        if present:
            matrix = np.stack([run.test.per_user[name] for name in present])
            draws = bootstrap_means(matrix, n_resamples=n_resamples, seed=seed + run.seed)
            for name, row in zip(present, draws, strict=True):
                resampled.setdefault(name, []).append(row)
                intervals[name] = percentile_interval(row, confidence)
        valid = {**run.valid.metrics, **run.valid.beyond} if run.valid is not None else None
        records.append(
            {
                "model": model,
                "seed": run.seed,
                "config": dict(run.config),
                "train_seconds": run.train_seconds,
                "peak_rss_mb": run.peak_rss_mb,
                "eval_seconds": run.test.seconds,
                "n_users": run.test.n_users,
                "metrics": {name: flat.get(name, math.nan) for name in names},
                "intervals": intervals,
                "valid_metrics": valid,
                "segments": run.test.segments,
            }
        )
    per_seed = {name: [flat.get(name, math.nan) for flat in values] for name in names}
    train = [run.train_seconds for run in runs if run.train_seconds is not None]
    memory = [run.peak_rss_mb for run in runs if run.peak_rss_mb is not None]
    summary = {
        "model": model,
        "seeds": [run.seed for run in runs],
        "config": dict(runs[0].config),
        "mean": {name: float(np.mean(v)) for name, v in per_seed.items()},
        "std": {name: _std(v) for name, v in per_seed.items()},
        "per_seed": per_seed,
        "interval": {
            name: percentile_interval(np.mean(draws, axis=0), confidence)
            if len(draws) == len(runs)
            else None
            for name, draws in resampled.items()
        },
        "train_seconds": {"mean": float(np.mean(train)), "std": _std(train)} if train else None,
        "peak_rss_mb": max(memory) if memory else None,
    }
    return records, summary


def report_payload(
    runs: Sequence[ReportRun],
    *,
    dataset: str,
    splits: Split | Sequence[Split],
    title: str | None = None,
    reference: str | None = None,
    metric: str | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    bootstrap_seed: int = 0,
    users: Users | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-ready dict (NaN as ``None``).

    ``splits`` holds the split of every seed in ``runs`` (one protocol). ``metric`` (default
    NDCG at 10, or at the smallest cut-off when 10 is not one) orders the leaderboard and is
    compared against ``reference``, or against the best model when no reference is named.
    ``users`` (gender, age) and ``catalog`` (genres) feed the fairness and exposure audit.
    """
    if not runs:
        raise ConfigError("a report needs at least one run")
    split_list = [splits] if isinstance(splits, Split) else list(splits)
    by_seed = {split.seed: split for split in split_list}
    if len(by_seed) != len(split_list):
        raise ConfigError("two splits share a seed; give one split per seed")
    if len({split.protocol for split in split_list}) > 1:
        raise ConfigError("all splits of one report must use the same protocol")
    by_model: dict[str, list[ReportRun]] = {}
    for run in runs:
        if run.seed not in by_seed:
            raise ConfigError(f"run {run.model!r} has seed {run.seed}, but no split has it")
        if any(other.seed == run.seed for other in by_model.get(run.model, [])):
            raise ConfigError(f"model {run.model!r} has two runs on seed {run.seed}")
        by_model.setdefault(run.model, []).append(run)
    for model_runs in by_model.values():
        model_runs.sort(key=lambda run: run.seed)
    used = {seed: by_seed[seed] for seed in sorted({run.seed for run in runs})}

    ks = sorted({k for run in runs for k in run.test.ks})
    k = _primary_k(ks)
    metric = metric or metric_name("ndcg", k)
    bootstrap = {
        "unit": "users (resampled with replacement; seeds averaged, users resampled within each)",
        "n_resamples": n_resamples,
        "confidence": confidence,
        "seed": bootstrap_seed,
        "method": "percentile",
    }

    records: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for model, model_runs in by_model.items():
        model_records, entry = _model_entries(
            model,
            model_runs,
            ks,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=bootstrap_seed,
        )
        records += model_records
        summary.append(entry)

    def rank_key(entry: dict[str, Any]) -> tuple[float, str]:
        value = entry["mean"].get(metric, math.nan)
        return (-value if not math.isnan(value) else math.inf, entry["model"])

    summary.sort(key=rank_key)
    order = [entry["model"] for entry in summary]
    if reference is not None and reference not in by_model:
        raise ConfigError(f"reference model {reference!r} is not among the runs ({order})")
    chosen = reference or order[0]
    ordered = {model: by_model[model] for model in order}
    comparisons = (
        _comparisons(
            ordered,
            chosen,
            metric,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=bootstrap_seed,
        )
        if len(by_model) > 1
        else []
    )
    payload = {
        "format": REPORT_FORMAT,
        "title": title or f"recloop evaluation report: {dataset}, {used[min(used)].protocol} split",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "protocol": _protocol(dataset, used, runs, ks, bootstrap),
        "metric": metric,
        "primary_k": k,
        "models": order,
        "reference": {"model": chosen, "named": reference is not None},
        "summary": summary,
        "records": records,
        "comparisons": comparisons,
        "popularity_bias": _popularity_bias(ordered, used, k),
        "segments": _segments(ordered, metric),
        "fairness": _fairness(
            ordered,
            used,
            k,
            users=users,
            catalog=catalog,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=bootstrap_seed,
        ),
    }
    return dict(_json_ready(payload))


# ---------------------------------------------------------------------------- HTML


class _Html(str):
    """Text that is already HTML (escaped or built here); everything else gets escaped."""


def _h(value: object) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    number = _finite(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _mean_std(mean: Any, std: Any, digits: int = 4) -> _Html:
    text = _h(_num(mean, digits))
    if _finite(std) is not None:
        text += f'<span class="sd">± {_h(_num(std, digits))}</span>'
    return _Html(text)


def _interval(interval: Any, digits: int = 4) -> str:
    if not interval:
        return "–"
    return f"[{_num(interval[0], digits)}, {_num(interval[1], digits)}]"


def _table(headers: Sequence[object], rows: Sequence[Sequence[object]], css: str = "") -> str:
    head = "".join(f"<th>{_h(cell)}</th>" for cell in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_h(cell)}</td>" for cell in row) + "</tr>\n" for row in rows
    )
    cls = f' class="{_h(css)}"' if css else ""
    return f"<table{cls}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _plain(value: Any) -> str:
    """A protocol value as one line of text."""
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_plain(v)}" for key, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def _protocol_html(protocol: Mapping[str, Any]) -> str:
    split = protocol["split"]
    filters = protocol.get("filters")
    if filters:
        rules = _plain(filters.get("filters"))
        counts = f" ({filters.get('rows_in')} → {filters.get('rows_out')} rows)"
        filter_text = rules + (counts if "rows_out" in filters else "")
    else:
        filter_text = "none recorded"
    commit = protocol.get("git_commit") or "unknown"
    sizes = protocol.get("split_sizes", {})
    size_text = "; ".join(
        f"seed {seed}: {s.get('train_rows')} / {s.get('valid_rows')} / {s.get('test_rows')}"
        for seed, s in sizes.items()
    )
    boot = protocol["bootstrap"]
    machine = protocol.get("machine") or {}
    rows: list[tuple[str, str]] = [
        ("Dataset", protocol["dataset"]),
        ("Split protocol", f"{split['protocol']}: {split['description']}"),
        ("Split parameters", _plain(split["params"])),
        ("Filters (before splitting)", filter_text),
        ("Rows train / valid / test", size_text),
        ("Candidates", protocol["candidates"]),
        ("Query history and exclusions", protocol["exclusions"]),
        ("Relevance", protocol["relevance"]),
        ("Averaged over", protocol["averaged_over"]),
        ("Seeds", _plain(protocol["seeds"])),
        ("Cut-offs K", _plain(protocol["ks"])),
        (
            "Intervals",
            f"{boot['confidence']:.0%} {boot['method']} bootstrap, {boot['n_resamples']} "
            f"resamples of {boot['unit']}, seed {boot['seed']}",
        ),
        ("recloop", f"{protocol['recloop_version']} (git {commit})"),
        ("Machine", _plain(machine)),
    ]
    items = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>\n" for k, v in rows)
    return f'<table class="protocol">\n<tbody>\n{items}</tbody>\n</table>'


def _columns(payload: Mapping[str, Any]) -> list[str]:
    """Leaderboard metrics: ranking metrics at every K, then beyond-accuracy at the primary K."""
    ks = payload["protocol"]["ks"]
    k = payload["primary_k"]
    present = {name for entry in payload["summary"] for name in entry["mean"]}
    wanted = [metric_name(m, k) for m in TABLE_METRICS]
    wanted += [metric_name(m, c) for c in ks if c != k for m in ("ndcg", "recall")]
    wanted += [metric_name(m, k) for m in ("coverage", "gini", "novelty")]
    return [name for name in wanted if name in present]


def _leaderboard_html(payload: Mapping[str, Any]) -> str:
    columns = _columns(payload)
    metric = payload["metric"]
    headers = ["#", "model", "seeds", *columns, f"{metric} 95% CI", "train s", "peak MiB"]
    rows = []
    for rank, entry in enumerate(payload["summary"], start=1):
        train = entry.get("train_seconds") or {}
        rows.append(
            [
                rank,
                entry["model"],
                len(entry["seeds"]),
                *(_mean_std(entry["mean"].get(c), entry["std"].get(c)) for c in columns),
                _interval(entry["interval"].get(metric)),
                _mean_std(train.get("mean"), train.get("std"), 2),
                _num(entry.get("peak_rss_mb"), 0),
            ]
        )
    return _table(headers, rows, "numbers")


def _per_seed_html(payload: Mapping[str, Any]) -> str:
    columns = _columns(payload)
    metric = payload["metric"]
    headers = ["model", "seed", *columns, f"valid {metric}", "train s", "peak MiB", "config"]
    rank = {model: i for i, model in enumerate(payload["models"])}
    records = sorted(payload["records"], key=lambda r: (rank[r["model"]], r["seed"]))
    rows = []
    for record in records:
        valid = record.get("valid_metrics") or {}
        config = json.dumps(record["config"], sort_keys=True, default=str)
        rows.append(
            [
                record["model"],
                record["seed"],
                *(_num(record["metrics"].get(c)) for c in columns),
                _num(valid.get(metric)),
                _num(record.get("train_seconds"), 2),
                _num(record.get("peak_rss_mb"), 0),
                _Html(f"<code>{_h(config)}</code>"),
            ]
        )
    return _table(headers, rows, "numbers")


def _comparison_html(payload: Mapping[str, Any]) -> str:
    reference = payload["reference"]
    rows_in = payload["comparisons"]
    if not rows_in:
        return "<p>Only one model: nothing to compare.</p>"
    how = "named reference" if reference["named"] else f"best model by mean {payload['metric']}"
    headers = ["model", "seed", f"Δ {payload['metric']}", "95% CI", "p (Δ ≤ 0)", "verdict"]
    rows = []
    for row in rows_in:
        if row.get("note"):
            difference = _num(row["mean_difference"]) if "mean_difference" in row else "–"
            rows.append([row["model"], row["seed"], difference, "–", "–", row["note"]])
            continue
        low, high = row["ci_low"], row["ci_high"]
        if row["significant"]:
            verdict = "better" if low > 0 else "worse"
        else:
            verdict = "not distinguishable"
        rows.append(
            [
                row["model"],
                row["seed"],
                _num(row["mean_difference"]),
                _interval([low, high]),
                _num(row.get("p_value"), 3),
                verdict,
            ]
        )
    intro = (
        f"<p>Each model minus <b>{_h(reference['model'])}</b> ({_h(how)}), paired over the same "
        "test users of the same seed; “all” averages the seeds' differences.</p>"
    )
    return intro + _table(headers, rows, "numbers")


def _fairness_html(payload: Mapping[str, Any]) -> str:
    """Segment gaps, exposure by popularity band and by genre (tables; no plots)."""
    fairness = payload.get("fairness")
    if not fairness or not fairness.get("models"):
        return "<p>No fairness audit in this report.</p>"
    models = fairness["models"]
    metric, k = fairness["metric"], fairness["k"]
    gap_rows = []
    for model, entry in models.items():
        for segment, gap in entry["segments"].items():
            values = gap.get("values") or {}
            best, worst = gap.get("best"), gap.get("worst")
            gap_rows.append(
                [
                    model,
                    segment,
                    f"{best} ({_num((values.get(best) or {}).get('mean'))})" if best else "–",
                    f"{worst} ({_num((values.get(worst) or {}).get('mean'))})" if worst else "–",
                    _num(gap.get("gap")),
                    _interval(gap.get("gap_ci")),
                    _num((values.get(worst) or {}).get("vs_overall")) if worst else "–",
                ]
            )
    headers = ["model", "segment", "best (mean)", "worst (mean)", "gap", "95% CI"]
    headers.append("worst − overall")
    gaps = _table(headers, gap_rows, "numbers") if gap_rows else "<p>No per-user metric.</p>"
    first = next(iter(models.values()))
    band_rows: list[list[object]] = []
    for label, key in (("catalogue", "catalog_share"), ("train interactions", "interaction_share")):
        shares = [(first["bands"].get(b) or {}).get(key) for b in BANDS]
        band_rows.append([label, "–", "–", *(_num(v, 3) for v in shares)])
    for model, entry in models.items():
        shares = [(entry["bands"].get(b) or {}).get("exposure_share") for b in BANDS]
        band_rows.append(
            [model, _num(entry.get("gini"), 3), _num(entry.get("coverage"), 3),
             *(_num(v, 3) for v in shares)]
        )  # fmt: skip
    bands = _table(
        ["share of", f"gini@{k}", f"coverage@{k}", *(f"{b} share" for b in BANDS)],
        band_rows,
        "numbers",
    )
    genre_names = list(first["genres"])
    genres = ""
    if genre_names:
        genre_rows = [
            [
                name,
                _num(first["genres"][name].get("catalog_share"), 3),
                _num(first["genres"][name].get("interaction_share"), 3),
                *(_num((e["genres"].get(name) or {}).get("exposure_share"), 3)
                  for e in models.values()),
            ]
            for name in genre_names
        ]  # fmt: skip
        genres = "<h3>Exposure by genre</h3>\n" + _table(
            ["genre", "catalogue", "train", *models], genre_rows, "numbers"
        )
    return (
        f"<p>Gaps in {_h(metric)} between user segments (best − worst value, with a "
        "bootstrap interval over users) and where the impressions of the top-"
        f"{_h(k)} lists go. Bands: {_h(fairness.get('band_rule', ''))}. Genres count "
        "fractionally (an item with g genres gives 1/g to each).</p>\n"
        f"<h3>Segment gaps in {_h(metric)}</h3>\n{gaps}\n"
        f"<h3>Exposure by popularity band at K={_h(k)}</h3>\n{bands}\n{genres}"
    )


def _figure_html(title: str, png: bytes | None, caption: str, missing: str) -> str:
    if png is None:
        return f'<h3>{_h(title)}</h3>\n<p class="note">{_h(missing)}</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<figure>\n<h3>{_h(title)}</h3>\n"
        f'<img alt="{_h(title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption>{_h(caption)}</figcaption>\n</figure>"
    )


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; max-width: 1180px; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.meta, .note, figcaption, .sd { color: #59636e; }
.sd { display: block; font-size: .8em; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; }
th, td { padding: .3rem .55rem; border-bottom: 1px solid #e5e8eb; vertical-align: top; }
thead th { background: #f6f8fa; border-bottom: 2px solid #d0d7de; }
table.numbers td, table.numbers th { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td:nth-child(-n+2), table.numbers th:nth-child(-n+2) { text-align: left; }
table.protocol th { text-align: left; white-space: nowrap; width: 14rem; }
code { font-size: .85em; word-break: break-all; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e8eb; }
"""


def render_html(
    payload: Mapping[str, Any],
    plots: Mapping[str, PlotFunction] | None = None,
) -> str:
    """The self-contained HTML page for a :func:`report_payload` dict.

    ``plots`` maps figure names to functions drawing a PNG from the payload; the default is
    :data:`recloop.report_plots.PLOTS` (needs matplotlib).
    """
    if plots is None:
        from recloop.report_plots import PLOTS

        plots = PLOTS
    protocol = payload["protocol"]
    metric = payload["metric"]
    k = payload["primary_k"]
    n_buckets = payload["popularity_bias"]["n_buckets"]
    figures = {
        "metrics": (
            f"Test metrics at K={k}",
            f"Bars: mean over seeds; whiskers: {protocol['bootstrap']['confidence']:.0%} "
            "bootstrap interval of the mean over users; dots: single seeds.",
            "No per-user ranking metrics to plot.",
        ),
        "popularity": (
            f"Popularity bias at K={k}",
            f"Items sorted by train popularity and cut into {n_buckets} equal-size buckets"
            " (1 = most popular). Grey bars: share of train interactions; "
            "lines: share of recommendation slots. A model above the bars in bucket 1 amplifies "
            "popularity; lines near zero on the right never show the tail.",
            "No popularity data.",
        ),
        "segments": (
            f"{metric} by segment",
            "Mean over seeds within each user segment (gender, age band, activity tercile of "
            "train size) and item band (targets restricted to head or tail items). "
            "User counts under each label.",
            "No segments: the runs were evaluated without user attributes or train data.",
        ),
        "coverage": (
            "Catalogue coverage and exposure Gini",
            "Coverage@K: share of items shown to at least one user (higher = more of the "
            "catalogue reaches someone). Gini@K of exposure over all items (0 = equal exposure, "
            "1 = one item takes everything).",
            "No coverage or Gini values.",
        ),
    }
    sections = []
    for name, draw in plots.items():
        title, caption, missing = figures.get(name, (name, "", "Nothing to plot."))
        sections.append(_figure_html(title, draw(payload), caption, missing))
    models = ", ".join(payload["models"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_h(payload["title"])}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_h(payload["title"])}</h1>
<p class="meta">Created {_h(payload["created"])} · models: {_h(models)}</p>
<h2>Protocol</h2>
{_protocol_html(protocol)}
<h2>Leaderboard (test)</h2>
<p>Mean over seeds, with the sample standard deviation over seeds beneath when there are
several; sorted by {_h(metric)}. Peak MiB is the process's peak resident memory when the run
ended.</p>
{_leaderboard_html(payload)}
<h3>Every seed</h3>
{_per_seed_html(payload)}
<h2>Paired comparison on {_h(metric)}</h2>
{_comparison_html(payload)}
<h2>Fairness and exposure</h2>
{_fairness_html(payload)}
<h2>Plots</h2>
{"".join(sections)}
</body>
</html>
"""


def write_report(
    out_dir: Path,
    runs: Sequence[ReportRun],
    *,
    dataset: str,
    splits: Split | Sequence[Split],
    title: str | None = None,
    reference: str | None = None,
    metric: str | None = None,
    n_resamples: int = 1000,
    bootstrap_seed: int = 0,
    plots: Mapping[str, PlotFunction] | None = None,
    users: Users | None = None,
    catalog: Catalog | None = None,
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` into ``out_dir``; returns both paths.

    The arguments are those of :func:`report_payload`; ``plots`` those of :func:`render_html`.
    """
    payload = report_payload(
        runs,
        dataset=dataset,
        splits=splits,
        title=title,
        reference=reference,
        metric=metric,
        n_resamples=n_resamples,
        bootstrap_seed=bootstrap_seed,
        users=users,
        catalog=catalog,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    html_path = out_dir / "report.html"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(payload, plots), encoding="utf-8")
    return json_path, html_path
