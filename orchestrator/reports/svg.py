"""Inline SVG charts of the HTML report: progress over time per wave, outcomes per site.

Plain strings, no script: every text is HTML-escaped, every number formatted here. The
charts scale with their container (viewBox) and print as they show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from html import escape

from orchestrator.reports.model import Outcomes, SiteRow, Timeline

WIDTH = 760
WAVE_COLOURS = ("#1d4ed8", "#c2410c", "#15803d", "#7e22ce", "#be123c", "#0e7490", "#a16207",
                "#4d7c0f")
# cycled with the colours so that lines stay apart in black-and-white print
WAVE_DASHES = ("", "7 4", "2 3", "9 3 2 3")
# (Outcomes field, label, colour): the order of the segments in the site bars
OUTCOME_SEGMENTS = (
    ("succeeded", "succeeded", "#2e7d32"),
    ("skipped", "skipped", "#78909c"),
    ("failed", "failed", "#c62828"),
    ("timed_out", "timed out", "#ef6c00"),
    ("cancelled", "cancelled", "#bdbdbd"),
    ("pending", "pending", "#e3f2fd"),
    ("in_flight", "in flight", "#42a5f5"),
)
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400)


def e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zeros."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def nice_step(span: float, max_ticks: int) -> float:
    """1, 2 or 5 times a power of ten, so that span / step <= max_ticks."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def wave_label(number: int) -> str:
    return "canary" if number == 0 else f"wave {number}"


def _time_label(timeline: Timeline, seconds: float, span: float) -> str:
    assert timeline.start is not None
    at = timeline.start + timedelta(seconds=seconds)
    if span >= 86400:
        return at.strftime("%m-%d %H:%M")
    if span >= 600:
        return at.strftime("%H:%M")
    return at.strftime("%H:%M:%S")


def progress_chart(timeline: Timeline) -> str:
    """Cumulative finished tasks per wave over time: one line (`<path>`) per wave."""
    height, left, right, top, bottom = 340, 60, 20, 18, 58
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    points = timeline.points
    span = max((points - 1) * timeline.bucket_seconds, timeline.bucket_seconds)
    y_max_raw = max([s.size for s in timeline.series] + [1])
    y_step = max(1.0, nice_step(y_max_raw, 5))
    y_max = math.ceil(y_max_raw / y_step) * y_step

    def x(seconds: float) -> float:
        return left + plot_w * seconds / span

    def y(value: float) -> float:
        return top + plot_h * (1 - value / y_max)

    parts = [
        f'<svg id="progress-chart" class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="progress-chart-title" preserveAspectRatio="xMidYMid meet">',
        '<title id="progress-chart-title">Finished tasks per wave over time</title>',
    ]
    # grid and y axis
    tick = 0.0
    while tick <= y_max + 1e-9:
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" '
                     f'y1="{_num(y(tick))}" y2="{_num(y(tick))}"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{_num(y(tick) + 4)}" '
                     f'text-anchor="end">{int(tick)}</text>')
        tick += y_step
    parts.append(f'<text class="axis-label" transform="translate(16 {top + plot_h / 2:.0f}) '
                 f'rotate(-90)" text-anchor="middle">finished tasks</text>')
    # x axis
    parts.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" '
                 f'y2="{top + plot_h}"/>')
    if timeline.start is not None and points:
        step = next((s for s in _TIME_STEPS if span / s <= 8), _TIME_STEPS[-1])
        while span / step > 8:
            step *= 2
        # ticks on round clock times (multiples of the step since the epoch, in UTC)
        origin = timeline.start.timestamp()
        t = math.ceil(origin / step - 1e-9) * step - origin
        while t <= span + 1e-9:
            px = _num(x(t))
            parts.append(f'<line class="axis" x1="{px}" x2="{px}" y1="{top + plot_h}" '
                         f'y2="{top + plot_h + 5}"/>')
            parts.append(f'<text class="tick" x="{px}" y="{top + plot_h + 18}" '
                         f'text-anchor="middle">{e(_time_label(timeline, t, span))}</text>')
            t += step
        started = timeline.start.strftime("%Y-%m-%d %H:%M:%S")
        parts.append(f'<text class="axis-label" x="{left + plot_w / 2:.0f}" '
                     f'y="{height - 8}" text-anchor="middle">time (UTC), from {e(started)}'
                     f'</text>')
    else:
        parts.append(f'<text class="axis-label" x="{left + plot_w / 2:.0f}" '
                     f'y="{top + plot_h / 2:.0f}" text-anchor="middle">'
                     'no task has started yet</text>')
    # one line per wave
    for i, series in enumerate(timeline.series):
        values = series.finished
        first = next((k for k, v in enumerate(values) if v), None)
        begin = 0 if first is None else max(0, first - 1)
        coords = [(x(k * timeline.bucket_seconds), y(v))
                  for k, v in enumerate(values) if k >= begin]
        if len(coords) == 1:
            coords.append((x(span), coords[0][1]))
        d = "M" + " L".join(f"{_num(px)},{_num(py)}" for px, py in coords)
        colour = WAVE_COLOURS[i % len(WAVE_COLOURS)]
        dash = WAVE_DASHES[(i // len(WAVE_COLOURS) + i) % len(WAVE_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        label = wave_label(series.wave)
        final = values[-1] if values else 0
        parts.append(
            f'<path class="wave-line" data-wave="{series.wave}" d="{d}" fill="none" '
            f'stroke="{colour}" stroke-width="2.2" stroke-linejoin="round"{dash_attr}>'
            f'<title>{e(label)}: {final} of {series.size} finished</title></path>'
        )
    parts.append("</svg>")
    return "".join(parts)


def progress_legend(timeline: Timeline) -> str:
    items = []
    for i, series in enumerate(timeline.series):
        colour = WAVE_COLOURS[i % len(WAVE_COLOURS)]
        dash = WAVE_DASHES[(i // len(WAVE_COLOURS) + i) % len(WAVE_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        final = series.finished[-1] if series.finished else 0
        items.append(
            f'<li><svg class="swatch" viewBox="0 0 28 10" aria-hidden="true">'
            f'<line x1="1" x2="27" y1="5" y2="5" stroke="{colour}" stroke-width="2.5"'
            f'{dash_attr}/></svg>{e(wave_label(series.wave))} '
            f'<span class="muted">({final}/{series.size})</span></li>'
        )
    return f'<ul class="legend">{"".join(items)}</ul>'


def outcome_legend(present: Sequence[str] | None = None) -> str:
    items = []
    for name, label, colour in OUTCOME_SEGMENTS:
        if present is not None and name not in present:
            continue
        items.append(f'<li><svg class="swatch dot" viewBox="0 0 10 10" aria-hidden="true">'
                     f'<rect width="10" height="10" rx="2" fill="{colour}"/></svg>'
                     f'{e(label)}</li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


def present_outcomes(rows: Sequence[Outcomes]) -> list[str]:
    return [name for name, _, _ in OUTCOME_SEGMENTS if any(getattr(o, name) for o in rows)]


def site_bars(sites: Sequence[SiteRow]) -> str:
    """One horizontal bar per site, its segments the task outcomes."""
    row_h, top, label_w, count_w = 22, 6, 170, 60
    bar_w = WIDTH - label_w - count_w
    height = top * 2 + row_h * max(1, len(sites))
    biggest = max([s.outcomes.targeted for s in sites] + [1])
    parts = [
        f'<svg id="site-chart" class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="site-chart-title">',
        '<title id="site-chart-title">Task outcomes per site</title>',
    ]
    for row, site in enumerate(sites):
        y = top + row * row_h
        name = site.site if len(site.site) <= 24 else site.site[:23] + "\u2026"
        parts.append(f'<text class="tick" x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
                     f'<title>{e(site.site)}</title>{e(name)}</text>')
        offset = float(label_w)
        for field, label, colour in OUTCOME_SEGMENTS:
            n = getattr(site.outcomes, field)
            if not n:
                continue
            w = bar_w * n / biggest
            parts.append(
                f'<rect class="bar" data-outcome="{field}" x="{_num(offset)}" y="{y + 3}" '
                f'width="{_num(max(w, 0.5))}" height="{row_h - 6}" fill="{colour}">'
                f'<title>{e(site.site)}: {n} {e(label)}</title></rect>'
            )
            offset += w
        parts.append(f'<text class="tick" x="{_num(offset + 6)}" y="{y + 15}">'
                     f'{site.outcomes.targeted}</text>')
    parts.append("</svg>")
    return "".join(parts)
