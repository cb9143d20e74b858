"""Charts as inline SVG, drawn on the server: no chart library, no script, nothing fetched.

Each chart is an ``<svg role="img">`` with a title and a text summary (what a screen reader reads), and a
``<title>`` per bar or point (what a mouse hover shows). Colours come from CSS classes (``s0``...``s7``), so the
light and dark themes restyle them, and the page's Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from .format import axis_time, compact

WIDTH, HEIGHT = 480, 200
LEFT, RIGHT, TOP, BOTTOM = 50, 8, 10, 24
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
MAX_MARKERS = 96  # beyond this many points a line has no per-point markers


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: Sequence[float | None]


def _nice_max(peak: float) -> float:
    """A round axis maximum at or above ``peak`` (1, 2, 2.5 or 5 times a power of ten, times four ticks)."""
    if peak <= 0:
        return 1.0
    step = peak / 4
    magnitude = 10 ** math.floor(math.log10(step))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= step:
            return float(factor * magnitude * 4)
    return peak


def chart(
    chart_id: str,
    title: str,
    timestamps: Sequence[int],
    bucket: int,
    series: Sequence[Series],
    *,
    bars: bool = False,
    fmt: Callable[[float], str] = compact,
    summary: str = "",
) -> Markup:
    """One chart; ``bars`` draws the first series as bars (counts), otherwise every series is a line."""
    n = max(len(timestamps), 1)
    values = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(values, default=0.0))
    slot = PLOT_W / n

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * slot

    def y(v: float) -> float:
        return TOP + PLOT_H - (v / top) * PLOT_H

    parts: list[str] = [
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<desc id="{chart_id}-d">{escape(summary)}</desc>',
    ]
    for k in range(5):  # grid lines and y labels
        level = top * k / 4
        gy = y(level)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{escape(fmt(level))}</text>'
        )
    every = max(1, math.ceil(n / 6))
    for i in range(0, len(timestamps), every):
        label = escape(axis_time(timestamps[i], bucket))
        parts.append(f'<text class="tick" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="middle">{label}</text>')
    for index, s in enumerate(series):
        css = f"s{index % 8}"
        if bars and index == 0:
            width = max(slot * 0.72, 1.0)
            for i, bar in enumerate(s.values):
                if not bar:
                    continue
                tip = escape(f"{axis_time(timestamps[i], bucket)} UTC: {fmt(bar)} {s.label}")
                parts.append(
                    f'<rect class="bar {css}" x="{x(i) - width / 2:.1f}" y="{y(bar):.1f}" width="{width:.1f}" '
                    f'height="{TOP + PLOT_H - y(bar):.1f}"><title>{tip}</title></rect>'
                )
            continue
        path: list[str] = []
        pen_up = True
        for i, point in enumerate(s.values):
            if point is None:
                pen_up = True
                continue
            path.append(f"{'M' if pen_up else 'L'}{x(i):.1f} {y(point):.1f}")
            pen_up = False
        if path:
            parts.append(f'<path class="line {css}" d="{" ".join(path)}"/>')
        if len(s.values) <= MAX_MARKERS:
            for i, point in enumerate(s.values):
                if point is not None:
                    tip = escape(f"{axis_time(timestamps[i], bucket)} UTC: {fmt(point)} {s.label}")
                    dot = f'<circle class="dot {css}" cx="{x(i):.1f}" cy="{y(point):.1f}" r="2.5">'
                    parts.append(f"{dot}<title>{tip}</title></circle>")
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(series: Sequence[Series]) -> Markup:
    items = "".join(
        f'<li><span class="swatch s{i % 8}" aria-hidden="true"></span>{escape(s.label)}</li>'
        for i, s in enumerate(series)
    )
    return Markup(f'<ul class="legend">{items}</ul>')


def peak_summary(label: str, timestamps: Sequence[int], bucket: int, values: Sequence[float | None], total: str) -> str:
    """The text a screen reader gets instead of the picture: the total and the busiest bucket."""
    known = [(v, i) for i, v in enumerate(values) if v is not None]
    if not known or max(known)[0] == 0:
        return f"{label}: none in this range."
    peak, at = max(known)
    return f"{label}: {total} in this range; highest {compact(peak)} at {axis_time(timestamps[at], bucket)} UTC."
