"""The report's plots, drawn with matplotlib's Agg canvas from a report payload into PNG bytes.

Each function takes the dict made by :func:`recloop.report.report_payload` and returns PNG
bytes, or ``None`` when there is nothing to draw. Figures are built on
:class:`~matplotlib.figure.Figure` directly (no pyplot), so no global backend state is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recloop.eval.metrics import metric_name

_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_LABEL_CHARS = 28
_DPI = 110


def _label(text: object) -> str:
    """Model or segment text for a plot: shortened, and ``$`` kept literal (no mathtext)."""
    value = str(text)
    if len(value) > _LABEL_CHARS:
        value = value[: _LABEL_CHARS - 1] + "…"
    return value.replace("$", r"\$")


def _color(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _value(value: Any) -> float:
    """NaN for a missing value, so bars are simply left out."""
    return math.nan if value is None else float(value)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e5e8eb", linewidth=0.8)
    ax.set_axisbelow(True)


def _legend(fig: Figure, ax: Axes) -> None:
    """One figure-wide legend above the panels, from ``ax``'s labelled artists."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside upper center",
            ncols=min(len(handles), 5),
            frameon=False,
            fontsize=9,
        )


def _grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    models: Sequence[str],
    values: Callable[[str, str], float],
    *,
    errors: Callable[[str, str], tuple[float, float] | None] | None = None,
    dots: Callable[[str, str], Sequence[float]] | None = None,
    annotate: bool = False,
) -> None:
    """Bars for every (group, model); NaN bars are marked ``n/a``."""
    n = max(len(models), 1)
    width = 0.8 / n
    x = np.arange(len(groups), dtype=np.float64)
    for index, model in enumerate(models):
        offset = x - 0.4 + width * (index + 0.5)
        heights = np.array([values(group, model) for group in groups], dtype=np.float64)
        ax.bar(
            offset,
            np.nan_to_num(heights),
            width * 0.92,
            color=_color(index),
            label=_label(model),
        )
        where: list[float] = []
        tops: list[float] = []
        low: list[float] = []
        high: list[float] = []
        dot_x: list[float] = []
        dot_y: list[float] = []
        for position, height, group in zip(offset, heights, groups, strict=True):
            if math.isnan(height):
                ax.text(position, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            interval = errors(group, model) if errors else None
            if interval is not None:
                where.append(position)
                tops.append(height)
                low.append(max(height - interval[0], 0.0))
                high.append(max(interval[1] - height, 0.0))
            points = [p for p in (dots(group, model) if dots else ()) if not math.isnan(p)]
            if len(points) > 1:
                dot_x += [position] * len(points)
                dot_y += points
            if annotate:
                ax.annotate(
                    f"{height:.2f}",
                    (position, height),
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        if where:
            ax.errorbar(
                where,
                tops,
                yerr=[low, high],
                fmt="none",
                ecolor="#1f2328",
                capsize=2,
                linewidth=1,
            )
        if dot_x:
            ax.scatter(
                dot_x,
                dot_y,
                s=9,
                color="white",
                edgecolors="#1f2328",
                linewidths=0.7,
                zorder=3,
            )
    ax.set_xticks(x, [_label(group) for group in groups])
    _style(ax)


def metric_bars(payload: Mapping[str, Any]) -> bytes | None:
    """Ranking metrics at the primary K per model with bootstrap intervals and seed dots."""
    from recloop.report import PLOT_METRICS

    k = payload["primary_k"]
    summary = {entry["model"]: entry for entry in payload["summary"]}
    models = payload["models"]
    groups = [
        metric_name(m, k)
        for m in PLOT_METRICS
        if any(metric_name(m, k) in entry["mean"] for entry in summary.values())
    ]
    if not groups:
        return None
    fig = _figure(max(6.5, 1.1 * len(groups) * max(len(models), 2) * 0.55 + 2), 4.0)
    ax = fig.add_subplot()
    _grouped_bars(
        ax,
        groups,
        models,
        lambda g, m: _value(summary[m]["mean"].get(g)),
        errors=lambda g, m: summary[m]["interval"].get(g),
        dots=lambda g, m: [_value(v) for v in summary[m]["per_seed"].get(g, [])],
    )
    ax.set_ylabel("mean over test users")
    ax.set_ylim(bottom=0)
    _legend(fig, ax)
    return _png(fig)


def popularity_curve(payload: Mapping[str, Any]) -> bytes | None:
    """Share of train interactions vs share of recommendation slots per popularity bucket."""
    bias = payload.get("popularity_bias")
    if not bias or not bias.get("train_share"):
        return None
    n = bias["n_buckets"]
    x = np.arange(1, n + 1)
    train = np.array([_value(v) for v in bias["train_share"]])
    shares = [train] + [
        np.array([_value(v) for v in s]) for s in bias["recommendation_share"].values()
    ]
    positive = np.concatenate(shares)
    positive = positive[positive > 0]
    floor = float(positive.min()) if len(positive) else 1e-4
    fig = _figure(8.0, 4.2)
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, (False, True), strict=True):
        ax.bar(x, train, 0.8, color="#d0d7de", label="train interactions")
        for index, model in enumerate(payload["models"]):
            share = np.array([_value(v) for v in bias["recommendation_share"].get(model, [])])
            if len(share) != n:
                continue
            if log:
                share = np.where(share > 0, share, np.nan)
            ax.plot(x, share, marker="o", markersize=4, color=_color(index), label=_label(model))
        ax.set_xticks(x)
        ax.set_xlabel("item bucket by train popularity (1 = most popular)")
        _style(ax)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(1e-4, floor / 2), top=1.5)
            ax.set_title("log scale (zero shares not drawn)", fontsize=9, color="#59636e")
        else:
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("share")
            ax.set_title("linear scale", fontsize=9, color="#59636e")
    _legend(fig, axes[0])
    return _png(fig)


def segment_bars(payload: Mapping[str, Any]) -> bytes | None:
    """The report metric per segment value, one panel per segment, bars per model."""
    table = (payload.get("segments") or {}).get("segments") or {}
    panels = [(name, values) for name, values in table.items() if values]
    if not panels:
        return None
    models = payload["models"]
    per_value = max(0.6, 0.22 * len(models))
    widths = [max(len(values), 1) * per_value + 0.3 for _, values in panels]
    fig = _figure(min(max(sum(widths) + 1.0, 7.0), 18.0), 4.2)
    axes = fig.subplots(1, len(panels), sharey=True, width_ratios=widths, squeeze=False)[0]
    for ax, (name, values) in zip(axes, panels, strict=True):
        labels = list(values)
        _grouped_bars(
            ax,
            labels,
            models,
            lambda v, m, values=values: _value(values[v]["metric"].get(m)),  # type: ignore[misc]
        )
        ax.set_xticks(
            np.arange(len(labels)),
            [f"{_label(v)}\n({values[v]['users']})" for v in labels],
            fontsize=8,
        )
        ax.set_title(_label(name.replace("_", " ")), fontsize=10)
    axes[0].set_ylabel(f"{payload['segments']['metric']} (test)")
    axes[0].set_ylim(bottom=0)
    _legend(fig, axes[0])
    return _png(fig)


def coverage_gini(payload: Mapping[str, Any]) -> bytes | None:
    """Coverage@K and exposure Gini@K for every K, bars per model."""
    ks = payload["protocol"]["ks"]
    summary = {entry["model"]: entry for entry in payload["summary"]}
    models = payload["models"]
    present = {name for entry in summary.values() for name in entry["mean"]}
    panels = [
        (metric, [metric_name(metric, k) for k in ks if metric_name(metric, k) in present])
        for metric in ("coverage", "gini")
    ]
    panels = [(metric, groups) for metric, groups in panels if groups]
    if not panels:
        return None
    fig = _figure(max(7.0, 2.5 + 0.5 * len(models) * len(ks) * len(panels)), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, groups) in zip(axes, panels, strict=True):
        _grouped_bars(
            ax,
            groups,
            models,
            lambda g, m: _value(summary[m]["mean"].get(g)),
            dots=lambda g, m: [_value(v) for v in summary[m]["per_seed"].get(g, [])],
            annotate=True,
        )
        ax.set_ylim(0, 1.08)
        ax.set_title(
            "coverage (higher: more items shown)"
            if metric == "coverage"
            else "exposure Gini (lower: more even)",
            fontsize=10,
        )
    _legend(fig, axes[0])
    return _png(fig)


PLOTS: dict[str, Callable[[Mapping[str, Any]], bytes | None]] = {
    "metrics": metric_bars,
    "popularity": popularity_curve,
    "segments": segment_bars,
    "coverage": coverage_gini,
}
"""The report's figures, in page order."""
