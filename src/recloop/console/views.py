"""What each console page shows, built from the API's JSON answers and the stores.

Pure functions from answers to rows and charts (easy to test without a browser), plus the few
store reads the API has no route for: item titles, the users to pick from, a slate's feedback.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from markupsafe import Markup

from recloop.console import plots
from recloop.service.state import ServiceState
from recloop.store.schema import events as events_table
from recloop.store.schema import users as users_table
from recloop.store.slates import SlateRecord

LEADERBOARD_METRICS = ("ndcg@10", "recall@10", "hit@10", "mrr@10")
BEYOND_METRICS = ("coverage@10", "novelty@10")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VERSION = re.compile(r"v[0-9]{4,9}")
SLATE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class FormError(ValueError):
    """Input a person typed that we cannot use; the message says why, for the page."""


# ------------------------------------------------------------------------------ input
def identifier(value: object, what: str) -> str:
    """A user or item id as the API accepts it: 1-128 characters, no control characters."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise FormError(f"{what} is required")
    if len(text) > 128:
        raise FormError(f"{what} must be at most 128 characters")
    if _CONTROL.search(text):
        raise FormError(f"{what} must not contain control characters")
    return text


def optional_identifier(value: object, what: str) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return identifier(value, what)


def matching(value: object, pattern: re.Pattern[str], what: str) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not pattern.fullmatch(text):
        raise FormError(f"{what} is not valid")
    return text


def integer(value: object, what: str, low: int, high: int, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise FormError(f"{what} must be a whole number") from None
    if not low <= number <= high:
        raise FormError(f"{what} must be between {low} and {high}")
    return number


def text(value: object, what: str, max_length: int, *, required: bool = True) -> str:
    out = value.strip() if isinstance(value, str) else ""
    if required and not out:
        raise FormError(f"{what} is required")
    if len(out) > max_length:
        raise FormError(f"{what} must be at most {max_length} characters")
    return out


def id_list(value: object, what: str) -> list[str]:
    """Ids separated by commas, spaces or new lines."""
    raw = value if isinstance(value, str) else ""
    ids = [part for part in re.split(r"[\s,]+", raw) if part]
    if not ids:
        raise FormError(f"{what}: give at least one id")
    if len(ids) > 200:
        raise FormError(f"{what}: at most 200 ids")
    return [identifier(i, what) for i in ids]


# ------------------------------------------------------------------------------ store reads
def titles(state: ServiceState, item_ids: Iterable[str]) -> dict[str, str]:
    """Titles of the given items (unknown items left out)."""
    return {item: record.title for item, record in state.store.get_items(list(item_ids)).items()}


def known_users(state: ServiceState, limit: int = 200) -> list[tuple[str, int]]:
    """``(user_id, events)`` of the most active users, then profiles without events."""
    count = sa.func.count().label("n")
    query = (
        sa.select(events_table.c.user_id, count)
        .group_by(events_table.c.user_id)
        .order_by(count.desc(), events_table.c.user_id)
        .limit(limit)
    )
    profiles = sa.select(users_table.c.user_id).order_by(users_table.c.user_id).limit(limit)
    with state.store.transaction(write=False) as conn:
        active = [(row.user_id, int(row.n)) for row in conn.execute(query)]
        seen = {user for user, _ in active}
        extra = [(row.user_id, 0) for row in conn.execute(profiles) if row.user_id not in seen]
    return active + extra[: max(0, limit - len(active))]


def slate_feedback(state: ServiceState, slate_id: str, user_id: str) -> dict[str, list[str]]:
    """The event kinds stored for each item of a slate: its user's events citing its
    ``slate_id`` (another user's event citing it is no outcome of it)."""
    from recloop.data.types import EventKind

    query = sa.select(events_table.c.item_id, events_table.c.kind).where(
        events_table.c.slate_id == slate_id, events_table.c.user_id == user_id
    )
    out: dict[str, list[str]] = defaultdict(list)
    with state.store.transaction(write=False) as conn:
        for row in conn.execute(query):
            if row.item_id is not None:
                out[row.item_id].append(EventKind(int(row.kind)).name.lower())
    return dict(out)


# ------------------------------------------------------------------------------ overview
@dataclass(frozen=True)
class VersionRow:
    version: str
    model: str
    created_at: float
    n_items: int
    n_users: int
    events: int | None
    active: bool
    has_card: bool
    metrics: dict[str, float | None]
    holdout_users: int | None


def version_rows(models: Mapping[str, Any]) -> list[VersionRow]:
    """One row per registered version, newest first, with its card's holdout metrics."""
    rows = []
    for v in models.get("versions", []):
        metadata = v.get("metadata") or {}
        card = metadata.get("card") or {}
        evaluation = card.get("evaluation") or {}
        values = {**(evaluation.get("metrics") or {}), **(evaluation.get("beyond") or {})}
        rows.append(
            VersionRow(
                version=v["version"],
                model=v["model"],
                created_at=v["created_at"],
                n_items=v["n_items"],
                n_users=v["n_users"],
                events=metadata.get("events"),
                active=bool(v.get("active")),
                has_card=bool(card),
                metrics={m: _number(values.get(m)) for m in LEADERBOARD_METRICS + BEYOND_METRICS},
                holdout_users=evaluation.get("users"),
            )
        )
    return sorted(rows, key=lambda r: r.version, reverse=True)


def leaderboard(rows: Sequence[VersionRow], metric: str = "ndcg@10") -> list[VersionRow]:
    """Versions by ``metric``, best first; versions without it last."""
    return sorted(
        rows, key=lambda r: (r.metrics.get(metric) is None, -(r.metrics.get(metric) or 0.0))
    )


def leaderboard_charts(rows: Sequence[VersionRow]) -> list[Markup]:
    charts = []
    for metric in ("ndcg@10", "recall@10"):
        bars = [
            plots.Bar(f"{r.version} {r.model}", r.metrics.get(metric), r.active)
            for r in leaderboard(rows, metric)
        ]
        if any(b.value is not None for b in bars):
            charts.append(plots.bar_chart(bars, title=f"{metric} by version (holdout)"))
    return charts


def segment_charts(card: Mapping[str, Any] | None, metric: str = "ndcg@10") -> list[Markup]:
    """One bar chart per segmentation of a model card's holdout metrics."""
    evaluation = (card or {}).get("evaluation") or {}
    charts = []
    for name, table in (evaluation.get("segments") or {}).items():
        bars = [
            plots.Bar(f"{label} ({values.get('users', '?')} users)", _number(values.get(metric)))
            for label, values in table.items()
        ]
        if bars:
            charts.append(plots.bar_chart(bars, title=f"{metric} by {name}"))
    return charts


# ------------------------------------------------------------------------------ try it
@dataclass
class SlateItem:
    position: int
    item_id: str
    title: str
    score: float
    source: str
    generated: bool
    handle: str
    explanation: dict[str, Any] | None = None
    explanation_error: str | None = None
    feedback: list[str] = field(default_factory=list)


@dataclass
class SlateView:
    slate_id: str
    user_id: str
    model_version: str
    personalised: bool
    logged: bool
    items: list[SlateItem]
    segment: str | None = None
    arm: str | None = None


def slate_from_answer(answer: Mapping[str, Any], names: Mapping[str, str]) -> SlateView:
    """A recommendation answer (``/v1/users/{id}/recommendations``) as shown."""
    return SlateView(
        slate_id=answer["slate_id"],
        user_id=answer["user_id"],
        model_version=answer["model_version"],
        personalised=bool(answer.get("personalised", True)),
        logged=False,
        items=[
            SlateItem(
                position=it["position"],
                item_id=it["item_id"],
                title=names.get(it["item_id"], ""),
                score=it["score"],
                source=it["source"],
                generated=bool(it["generated"]),
                handle=it["explanation"],
            )
            for it in answer.get("items", [])
        ],
    )


def slate_from_log(
    record: SlateRecord, names: Mapping[str, str], feedback: Mapping[str, list[str]]
) -> SlateView:
    """A slate as the loop logged it, with the feedback stored for it."""
    policy = record.policy or {}
    return SlateView(
        slate_id=record.slate_id,
        user_id=record.user_id,
        model_version=record.model_version,
        personalised=record.segment != "unpersonalised",
        logged=True,
        segment=record.segment,
        arm=policy.get("arm") if isinstance(policy.get("arm"), str) else None,
        items=[
            SlateItem(
                position=imp.position,
                item_id=imp.item_id,
                title=names.get(imp.item_id, ""),
                score=imp.score,
                source=imp.source,
                generated=bool(imp.generated),
                handle=f"{record.slate_id}/{imp.position}",
                feedback=list(feedback.get(imp.item_id, [])),
            )
            for imp in sorted(record.items, key=lambda i: i.position)
        ],
    )


# ------------------------------------------------------------------------------ loop
def loop_charts(loop: Mapping[str, Any]) -> dict[str, Any]:
    """The Loop page's charts and tables from ``/v1/loop``."""
    arms = [a["name"] for a in loop.get("arms", [])]
    segments = loop.get("segments") or {}
    out: dict[str, Any] = {"arms": arms}
    out["probabilities"] = (
        plots.stacked_bar_chart(
            [(name, seg.get("probabilities") or {}) for name, seg in sorted(segments.items())],
            arms,
            title="P(arm) per segment now",
        )
        if segments and arms
        else None
    )
    history = loop.get("history")
    out["history_available"] = history is not None
    charts = []
    if isinstance(history, list):
        by_segment: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for snapshot in history:
            if not isinstance(snapshot, Mapping):
                continue
            at, segment = _number(snapshot.get("at")), snapshot.get("segment")
            probabilities = snapshot.get("probabilities") or {}
            if at is None or not isinstance(segment, str) or not isinstance(probabilities, dict):
                continue
            for arm, p in probabilities.items():
                value = _number(p)
                if value is not None:
                    by_segment[segment][str(arm)].append((at, value))
        for segment in sorted(by_segment):
            series = {arm: by_segment[segment].get(arm, []) for arm in arms}
            series.update({a: v for a, v in by_segment[segment].items() if a not in series})
            charts.append(
                (segment, plots.line_chart(series, title=f"P(arm) over time, segment {segment}"))
            )
    out["history"] = charts
    out["sources"] = _ctr_chart(loop.get("sources") or {}, "CTR by source")
    out["positions"] = _ctr_chart(
        loop.get("positions") or {}, "CTR by position", key=lambda k: int(k) if k.isdigit() else 0
    )
    offpolicy = loop.get("offpolicy") or {}
    rows = []
    intervals = []
    for policy, estimates in (offpolicy.get("policies") or {}).items():
        row: dict[str, Any] = {"policy": policy}
        for method in ("ips", "snips"):
            est = (estimates or {}).get(method) or {}
            row[method] = {k: _number(est.get(k)) for k in ("value", "ci_low", "ci_high")}
            row[method]["effective_n"] = _number(est.get("effective_n"))
        rows.append(row)
        snips = row["snips"] if row["snips"]["value"] is not None else row["ips"]
        intervals.append(plots.Interval(policy, snips["value"], snips["ci_low"], snips["ci_high"]))
    out["offpolicy_rows"] = rows
    out["offpolicy_slates"] = offpolicy.get("slates", 0)
    out["logged_value"] = _number(offpolicy.get("logged_value"))
    out["offpolicy_chart"] = (
        plots.interval_chart(
            intervals,
            title="Estimated slate reward rate of alternative policies (SNIPS, 95% interval)",
            reference=out["logged_value"],
        )
        if intervals
        else None
    )
    return out


def _ctr_chart(
    table: Mapping[str, Mapping[str, Any]], title: str, key: Any = None
) -> Markup | None:
    if not table:
        return None
    names = sorted(table, key=key) if key else sorted(table)
    bars = [
        plots.Bar(
            f"{name} ({table[name].get('clicks', 0)}/{table[name].get('impressions', 0)})",
            _number(table[name].get("ctr")),
        )
        for name in names
    ]
    return plots.bar_chart(bars, title=title, fmt="{:.2%}")


# ------------------------------------------------------------------------------ gaps
def gap_segment_name(model_version: str, n_segments: int, segment: int) -> str:
    """The segment name generated content carries (see recloop.generative.content)."""
    return f"gaps-{model_version}-n{n_segments}-s{segment}"


def gap_map(gaps: Mapping[str, Any]) -> Markup | None:
    """The 2-D map of users coloured by their segment's gap (red: served worst); None when
    the answer has no map. A point's and a centroid's ``segment`` index ``segments``."""
    found = gaps.get("map")
    if not isinstance(found, Mapping) or not found.get("points"):
        return None
    segments = list(gaps.get("segments") or [])
    colours = gap_colours(gaps)

    def shade(index: Any) -> str:
        if isinstance(index, int) and 0 <= index < len(segments):
            return colours.get(segments[index].get("segment"), "#999999")
        return "#999999"

    def name(index: Any) -> str:
        if isinstance(index, int) and 0 <= index < len(segments):
            return f"s{segments[index].get('segment')}"
        return "?"

    points = [
        plots.Point(float(p["x"]), float(p["y"]), shade(p.get("segment")))
        for p in found.get("points") or []
        if _number(p.get("x")) is not None and _number(p.get("y")) is not None
    ]
    labels = [
        plots.Label(float(c["x"]), float(c["y"]), name(c.get("segment")))
        for c in found.get("centroids") or []
        if _number(c.get("x")) is not None and _number(c.get("y")) is not None
    ]
    return plots.scatter_plot(points, labels, title="Users by segment (PCA of user embeddings)")


def gap_colours(gaps: Mapping[str, Any]) -> dict[int, str]:
    """Each segment's colour on the map (for the table's swatches)."""
    segments = gaps.get("segments") or []
    known = [g for s in segments if (g := _number(s.get("gap"))) is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    out = {}
    for s in segments:
        gap = _number(s.get("gap"))
        out[s["segment"]] = (
            "#999999"
            if gap is None
            else plots.gap_colour((gap - lo) / (hi - lo) if hi > lo else 0.5)
        )
    return out


# ------------------------------------------------------------------------------ review
def highlighted(value: str, spans: Iterable[Sequence[int]]) -> list[tuple[str, bool]]:
    """``value`` cut into ``(text, marked)`` runs, marking the (merged) spans."""
    cuts: list[tuple[int, int]] = []
    for span in spans:
        if len(span) != 2:
            continue
        start, end = max(0, int(span[0])), min(len(value), int(span[1]))
        if start < end:
            cuts.append((start, end))
    cuts.sort()
    merged: list[tuple[int, int]] = []
    for start, end in cuts:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    out, at = [], 0
    for start, end in merged:
        if at < start:
            out.append((value[at:start], False))
        out.append((value[start:end], True))
        at = end
    if at < len(value) or not out:
        out.append((value[at:], False))
    return out


def piece_view(piece: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A review-queue piece with its failed checks' spans marked in title and description."""
    findings = piece.get("findings") or []
    spans: dict[str, list[Sequence[int]]] = defaultdict(list)
    for finding in findings:
        if not finding.get("passed") and finding.get("field") and finding.get("span"):
            spans[finding["field"]].append(finding["span"])
    return {
        **piece,
        "title_runs": highlighted(piece.get("title", ""), spans.get("title", [])),
        "description_runs": highlighted(piece.get("description", ""), spans.get("description", [])),
        "failed": [f for f in findings if not f.get("passed")],
        "passed": [f for f in findings if f.get("passed")],
        "item_rows": [(i, names.get(i, "")) for i in piece.get("items", [])],
    }


# ------------------------------------------------------------------------------ fairness
def fairness_charts(fairness: Mapping[str, Any]) -> dict[str, Any]:
    series = ["impressions", "catalogue"]

    def groups(table: Mapping[str, Any], limit: int) -> list[tuple[str, dict[str, float | None]]]:
        rows = [
            (
                str(name),
                {
                    "impressions": _number((v or {}).get("impressions_share")),
                    "catalogue": _number((v or {}).get("catalogue_share")),
                },
            )
            for name, v in table.items()
        ]
        rows.sort(key=lambda r: -(r[1]["impressions"] or 0.0))
        return rows[:limit]

    bands = fairness.get("by_popularity_band") or {}
    order = {"head": 0, "mid": 1, "tail": 2}
    band_rows = sorted(groups(bands, 10), key=lambda r: order.get(r[0], 9))
    genres = groups(fairness.get("by_genre") or {}, 20)
    return {
        "gini": _number(fairness.get("exposure_gini")),
        "impressions": _number(fairness.get("impressions")),
        "items_shown": _number(fairness.get("items_shown")),
        "catalogue": _number(fairness.get("catalogue")),
        "days": (_number(fairness.get("window_s")) or 0.0) / 86400.0 or None,
        "bands": plots.grouped_bar_chart(
            band_rows, series, title="Share of impressions vs catalogue by popularity band"
        )
        if band_rows
        else None,
        "genres": plots.grouped_bar_chart(
            genres, series, title="Share of impressions vs catalogue by genre"
        )
        if genres
        else None,
        "segments": sorted((fairness.get("by_segment") or {}).items()),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
