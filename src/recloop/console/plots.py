"""Small inline SVG charts drawn on the server: bars, stacked bars, lines, intervals, scatter.

No chart library and no script: each function returns SVG markup (labels escaped) that the
templates embed as is. Colours are set with presentation attributes, which the console's
Content-Security-Policy allows (inline ``style`` would not be).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 580
ROW = 22
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#8c6d31",
    "#6a3d9a",
    "#999999",
    "#000000",
)
"""Okabe-Ito first (readable for colour-blind viewers), then a few more."""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    highlight: bool = False


@dataclass(frozen=True)
class Interval:
    label: str
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    colour: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def gap_colour(t: float) -> str:
    """Green (0: served best) through amber to red (1: served worst)."""
    t = min(1.0, max(0.0, t if math.isfinite(t) else 0.0))
    stops = ((0.0, (26, 152, 80)), (0.5, (230, 159, 0)), (1.0, (215, 48, 39)))
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            rgb = [round(a + (b - a) * f) for a, b in zip(c0, c1, strict=True)]
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return "#d73027"


def _fmt(value: float | None, fmt: str) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return fmt.format(value)


def _label_width(labels: Sequence[str]) -> int:
    longest = max((len(label) for label in labels), default=4)
    return min(220, max(60, 7 * longest + 8))


TITLE_H = 22


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    """The chart: its title shown on top (and read by screen readers), then ``body``."""
    total = height + TITLE_H
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {total}" width="{width}" height="{total}" '
        f'font-family="sans-serif" font-size="12">'
        f"<title>{escape(title)}</title>"
        f'<text x="2" y="15" font-size="13" font-weight="bold" fill="#1d2430">'
        f"{escape(title)}</text>"
        f'<g transform="translate(0,{TITLE_H})">'
    )
    return Markup(head + "".join(body) + "</g></svg>")


def _legend(names: Sequence[str], y: int, x0: int = 8) -> tuple[list[str], int]:
    """Legend swatches from ``y`` down, wrapping; the parts and the height used."""
    parts, x, row = [], x0, 0
    for index, name in enumerate(names):
        step = 22 + 7 * len(name)
        if x + step > WIDTH and x > x0:
            x, row = x0, row + 1
        top = y + row * 18
        parts.append(
            f'<rect x="{x}" y="{top}" width="12" height="12" fill="{colour(index)}"/>'
            f'<text x="{x + 16}" y="{top + 10}">{escape(name)}</text>'
        )
        x += step
    return parts, (row + 1) * 18 if names else 0


def bar_chart(
    bars: Sequence[Bar], *, title: str, fmt: str = "{:.3f}", max_value: float | None = None
) -> Markup:
    """Horizontal bars, one per row, value at the end; highlighted bars drawn darker."""
    label_w = _label_width([b.label for b in bars])
    values = [b.value for b in bars if b.value is not None and math.isfinite(b.value)]
    top = max_value if max_value is not None else max([*values, 0.0])
    top = top if top > 0 else 1.0
    span = WIDTH - label_w - 70
    body = []
    for row, bar in enumerate(bars):
        y = 6 + row * ROW
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">')
        body.append(f"{escape(bar.label)}</text>")
        length = 0.0
        if bar.value is not None and math.isfinite(bar.value):
            length = max(0.0, min(1.0, bar.value / top)) * span
        fill = "#1f4e79" if bar.highlight else "#6fa8dc"
        body.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{length:.1f}" height="{ROW - 6}" '
            f'fill="{fill}"><title>{escape(bar.label)}: {_fmt(bar.value, fmt)}</title></rect>'
        )
        body.append(f'<text x="{label_w + length + 4:.1f}" y="{y + 13}">')
        body.append(f"{_fmt(bar.value, fmt)}</text>")
    return _svg(WIDTH, 12 + len(bars) * ROW, title, body)


def grouped_bar_chart(
    groups: Sequence[tuple[str, Mapping[str, float | None]]],
    series: Sequence[str],
    *,
    title: str,
    fmt: str = "{:.1%}",
) -> Markup:
    """For each group a thin bar per series (e.g. share of impressions vs of the catalogue)."""
    label_w = _label_width([g for g, _ in groups])
    values = [v for _, row in groups for v in row.values() if v is not None and math.isfinite(v)]
    top = max([*values, 0.0]) or 1.0
    span = WIDTH - label_w - 70
    thin = 12
    height_group = thin * len(series) + 8
    legend, legend_h = _legend(series, 4)
    body = list(legend)
    for g, (label, row) in enumerate(groups):
        y0 = legend_h + 8 + g * height_group
        mid = y0 + thin * len(series) / 2 + 4
        body.append(f'<text x="{label_w - 6}" y="{mid:.1f}" text-anchor="end">')
        body.append(f"{escape(label)}</text>")
        for s, name in enumerate(series):
            value = row.get(name)
            length = 0.0
            if value is not None and math.isfinite(value):
                length = max(0.0, value / top) * span
            y = y0 + s * thin
            body.append(
                f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{thin - 2}" '
                f'fill="{colour(s)}"><title>{escape(label)}, {escape(name)}: '
                f"{_fmt(value, fmt)}</title></rect>"
                f'<text x="{label_w + length + 4:.1f}" y="{y + 10}" font-size="10">'
                f"{_fmt(value, fmt)}</text>"
            )
    return _svg(WIDTH, legend_h + 16 + len(groups) * height_group, title, body)


def stacked_bar_chart(
    rows: Sequence[tuple[str, Mapping[str, float]]], names: Sequence[str], *, title: str
) -> Markup:
    """One full-width bar per row, split by each name's share (e.g. arm probabilities)."""
    label_w = _label_width([r for r, _ in rows])
    span = WIDTH - label_w - 10
    legend, legend_h = _legend(names, 4)
    body = list(legend)
    for r, (label, shares) in enumerate(rows):
        y = legend_h + 8 + r * ROW
        body.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">')
        body.append(f"{escape(label)}</text>")
        total = sum(max(0.0, shares.get(n, 0.0)) for n in names) or 1.0
        x = float(label_w)
        for index, name in enumerate(names):
            share = max(0.0, shares.get(name, 0.0)) / total
            width = share * span
            body.append(
                f'<rect x="{x:.1f}" y="{y + 2}" width="{width:.1f}" height="{ROW - 6}" '
                f'fill="{colour(index)}"><title>{escape(label)}, {escape(name)}: '
                f"{share:.1%}</title></rect>"
            )
            if width > 34:
                body.append(
                    f'<text x="{x + 3:.1f}" y="{y + 14}" fill="#fff" font-size="10">'
                    f"{share:.0%}</text>"
                )
            x += width
    return _svg(WIDTH, legend_h + 14 + len(rows) * ROW, title, body)


def _time_label(seconds: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(seconds))


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    y_max: float = 1.0,
    fmt: str = "{:.0%}",
    height: int = 200,
) -> Markup:
    """One line per series over time (x in epoch seconds, shown in UTC), y from 0 to y_max."""
    names = list(series)
    legend, legend_h = _legend(names, 4)
    xs = [x for points in series.values() for x, _ in points]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    left, right, top = 44, WIDTH - 12, legend_h + 10
    bottom = top + height
    body = list(legend)
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * height
        body.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_fmt(frac * y_max, fmt)}</text>"
        )
    for frac, anchor in ((0.0, "start"), (1.0, "end")):
        x = left + frac * (right - left)
        label = _time_label(x_lo + frac * (x_hi - x_lo))
        body.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="{anchor}">{label} UTC</text>'
        )

    def at(x: float, y: float) -> str:
        px = left + (x - x_lo) / (x_hi - x_lo) * (right - left)
        py = bottom - max(0.0, min(1.0, y / y_max if y_max else 0.0)) * height
        return f"{px:.1f},{py:.1f}"

    for index, name in enumerate(names):
        points = sorted(series[name])
        if not points:
            continue
        path = " ".join(at(x, y) for x, y in points)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{colour(index)}" '
            f'stroke-width="2"><title>{escape(name)}</title></polyline>'
        )
        if len(points) == 1:
            cx, cy = at(*points[0]).split(",")
            body.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{colour(index)}"/>')
    return _svg(WIDTH, bottom + 24, title, body)


def interval_chart(
    rows: Sequence[Interval],
    *,
    title: str,
    reference: float | None = None,
    reference_label: str = "logged",
    fmt: str = "{:.3f}",
) -> Markup:
    """A dot and its interval per row (e.g. off-policy estimates), with a reference line."""
    label_w = _label_width([r.label for r in rows])
    numbers = [
        v for r in rows for v in (r.value, r.low, r.high) if v is not None and math.isfinite(v)
    ]
    if reference is not None and math.isfinite(reference):
        numbers.append(reference)
    lo, hi = (min([*numbers, 0.0]), max([*numbers, 0.0])) if numbers else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    left, right = label_w, WIDTH - 70
    height = 12 + len(rows) * ROW

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    body = []
    if reference is not None and math.isfinite(reference):
        x = x_of(reference)
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#888" '
            f'stroke-dasharray="4 3"><title>{escape(reference_label)}: '
            f"{_fmt(reference, fmt)}</title></line>"
        )
    for row, item in enumerate(rows):
        y = 6 + row * ROW + 10
        body.append(f'<text x="{label_w - 6}" y="{y + 4}" text-anchor="end">')
        body.append(f"{escape(item.label)}</text>")
        low, high = item.low, item.high
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            body.append(
                f'<line x1="{x_of(low):.1f}" x2="{x_of(high):.1f}" '
                f'y1="{y}" y2="{y}" stroke="#1f4e79" stroke-width="2"/>'
            )
        if item.value is not None and math.isfinite(item.value):
            x = x_of(item.value)
            body.append(
                f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="#1f4e79"><title>'
                f"{escape(item.label)}: {_fmt(item.value, fmt)} "
                f"[{_fmt(item.low, fmt)}, {_fmt(item.high, fmt)}]</title></circle>"
            )
        body.append(f'<text x="{right + 6}" y="{y + 4}">{_fmt(item.value, fmt)}</text>')
    return _svg(WIDTH, height, title, body)


def scatter_plot(
    points: Sequence[Point],
    labels: Sequence[Label] = (),
    *,
    title: str,
    size: int = 420,
) -> Markup:
    """Points in a square (their own coordinates rescaled to fit), labels on top."""
    xs = [p.x for p in points] + [lb.x for lb in labels]
    ys = [p.y for p in points] + [lb.y for lb in labels]
    if not xs:
        return _svg(WIDTH, 40, title, ['<text x="8" y="24">no points</text>'])
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    pad = 16
    scale = (size - 2 * pad) / max(x_hi - x_lo, y_hi - y_lo, 1e-9)

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + (x - x_lo) * scale, size - pad - (y - y_lo) * scale

    body = [f'<rect x="0" y="0" width="{size}" height="{size}" fill="#fafafa" stroke="#ddd"/>']
    for p in points:
        cx, cy = at(p.x, p.y)
        body.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{p.colour}" fill-opacity="0.7"/>'
        )
    for lb in labels:
        cx, cy = at(lb.x, lb.y)
        body.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="#fff" stroke="#333"/>'
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" font-weight="bold">'
            f"{escape(lb.text)}</text>"
        )
    return _svg(size, size, title, body)
