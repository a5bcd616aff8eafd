"""Geometry for the server-rendered SVG charts of the staff pages
(templates/analytics/_bar_chart.html, _interval_chart.html).

Readable without colour: every bar prints its value, every mark has a <title>, the chart
has a text description, and periods that had not ended at the as-of date are hatched
(a pattern, not a hue) and their value carries an asterisk. The table with the same
numbers sits next to each chart. Nothing here sets a style: the page's CSP forbids inline
styles, so colours come from classes in static/css/analytics.css and geometry from SVG
attributes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from django.utils import formats
from django.utils.translation import gettext as _

_ids = itertools.count(1)

HEAT_BUCKETS = 10


def number(value: float, places: int) -> str:
    """A value as the reader's language writes numbers (the tables next to the charts agree)."""
    return formats.number_format(round(value, places), places, use_l10n=True, force_grouping=True)


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value_text: str
    incomplete: bool
    negative: bool
    missing: bool = False
    show_label: bool = True
    text_y: float = 0.0
    center: float = 0.0


def bar_chart(
    points: list[tuple[str, float | None, bool]],
    *,
    width: int | None = None,
    height: int = 200,
    places: int = 0,
    title: str = "",
    unit: str = "",
) -> dict:
    """points: (label, value or None, complete). Returns what the template draws.

    The width grows with the number of bars (at least 30 units each) so that every bar
    can print its value; the SVG scales to the page width."""
    margin_top, margin_bottom, margin_side = 22, 36, 8
    values = [v for _, v, _ in points if v is not None]
    texts = [number(v, places) + "*" for v in values] or ["–"]
    # Each bar is wide enough for its printed value (11 px text, about 6.5 px a character);
    # labels below are thinned to every n-th bar when they would overlap.
    slot = max(30.0, 6.5 * max(len(t) for t in texts) + 8)
    width = width or max(360, int(slot * len(points) + 2 * margin_side))
    top = max([0.0, *values])
    bottom = min([0.0, *values])
    span = (top - bottom) or 1.0
    # Room above the highest bar (and below the lowest) for the printed values.
    plot = height - margin_top - margin_bottom - (14 if bottom < 0 else 0)
    step = (width - 2 * margin_side) / max(len(points), 1)
    zero = margin_top + plot * (top / span if top else 0)
    longest_label = max((len(label) for label, _, _ in points), default=1)
    label_every = max(1, math.ceil((6.5 * longest_label + 10) / step))
    bars = []
    for i, (label, value, complete) in enumerate(points):
        x = margin_side + i * step + step * 0.1
        common = {
            "x": x,
            "width": step * 0.8,
            "label": label,
            "incomplete": not complete,
            # Counted from the newest bar, so the latest period always carries its label.
            "show_label": (len(points) - 1 - i) % label_every == 0,
            "center": x + step * 0.4,
        }
        if value is None:
            bars.append(
                Bar(y=zero, height=0, value_text="–", negative=False, missing=True, text_y=zero - 4, **common)
            )
            continue
        h = plot * abs(value) / span
        y = zero - h if value >= 0 else zero
        text = number(value, places) + ("*" if not complete else "")
        text_y = y - 4 if value >= 0 else zero + h + 12
        bars.append(
            Bar(y=y, height=max(h, 0.5), value_text=text, negative=value < 0, text_y=text_y, **common)
        )
    chart_id = f"chart-{next(_ids)}"
    return {
        "id": chart_id,
        "title": title,
        "unit": unit,
        "description": _describe(points, places, unit),
        "width": width,
        "height": height,
        "zero": zero,
        "bars": bars,
        "label_y": height - 12,
        "any_incomplete": any(not c for _, _, c in points),
        "empty": not values,
        "axis_end": width - margin_side,
    }


def _describe(points, places: int, unit: str) -> str:
    """A one-line summary for screen readers: range of periods, lowest and highest."""
    known = [(label, value) for label, value, _ in points if value is not None]
    if not known:
        return "–"
    low = min(known, key=lambda p: p[1])
    high = max(known, key=lambda p: p[1])
    suffix = f" {unit}" if unit else ""
    last = known[-1]
    return _(
        "%(first)s to %(last)s: lowest %(low)s (%(low_at)s), highest %(high)s (%(high_at)s), "
        "latest %(latest)s (%(latest_at)s)."
    ) % {
        "first": points[0][0],
        "last": points[-1][0],
        "low": number(low[1], places) + suffix,
        "low_at": low[0],
        "high": number(high[1], places) + suffix,
        "high_at": high[0],
        "latest": number(last[1], places) + suffix,
        "latest_at": last[0],
    }


@dataclass
class Interval:
    label: str
    y: float
    x: float | None
    low: float | None
    high: float | None
    text: str
    note: str

    @property
    def diamond(self) -> str:
        """A diamond instead of a dot marks a point estimate without an interval (the naive
        gap): the shape, not the colour, tells it apart."""
        if self.x is None:
            return ""
        x, y = round(self.x, 1), round(self.y, 1)
        return f"{x},{y - 7} {x + 7},{y} {x},{y + 7} {x - 7},{y}"

    @property
    def tick_top(self) -> float:
        return self.y - 6

    @property
    def tick_bottom(self) -> float:
        return self.y + 6


def interval_chart(
    rows: list[tuple[str, float | None, float | None, float | None, str]],
    *,
    width: int = 640,
    places: int = 2,
    title: str = "",
    reference: float | None = 0.0,
) -> dict:
    """A forest plot: per row (label, estimate, low, high, note) a point and its interval,
    with a reference line (zero: no effect). The estimate and interval are printed at the
    right of each row, so the chart reads without colour and without the axis."""
    row_height, top, label_width, text_width, side = 30, 24, 190, 200, 10
    height = top + row_height * max(len(rows), 1) + 22
    plot_left, plot_right = label_width, width - text_width - side
    numbers = [v for _, e, lo, hi, _ in rows for v in (e, lo, hi) if v is not None]
    if reference is not None:
        numbers.append(reference)
    low_all, high_all = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    pad = (high_all - low_all) * 0.05 or 1.0
    low_all, high_all = low_all - pad, high_all + pad

    def x_of(value):
        return plot_left + (value - low_all) / (high_all - low_all) * (plot_right - plot_left)

    items = []
    for i, (label, estimate, low, high, note) in enumerate(rows):
        y = top + row_height * i + row_height / 2
        if estimate is None:
            text = "–"
        elif low is None or high is None:
            text = number(estimate, places)
        else:
            text = f"{number(estimate, places)} [{number(low, places)}; {number(high, places)}]"
        items.append(
            Interval(
                label=label,
                y=y,
                x=None if estimate is None else x_of(estimate),
                low=None if low is None else x_of(low),
                high=None if high is None else x_of(high),
                text=text,
                note=note,
            )
        )
    return {
        "id": f"chart-{next(_ids)}",
        "title": title,
        "width": width,
        "height": height,
        "rows": items,
        "reference_x": None if reference is None else x_of(reference),
        "reference_text": None if reference is None else number(reference, places),
        "plot_top": top - 8,
        "plot_bottom": height - 18,
        "label_x": label_width - 8,
        "text_x": plot_right + 12,
        "axis_low": number(low_all + pad, places),
        "axis_high": number(high_all - pad, places),
        "plot_left": plot_left,
        "plot_right": plot_right,
        "empty": not rows,
    }


def heat_bucket(value: float | None) -> int | None:
    """Which of the ten shades (CSS classes heat-0 … heat-9) a share 0…1 gets; None when
    there is no share (empty cohort). Every cell prints its number too."""
    if value is None:
        return None
    return min(HEAT_BUCKETS - 1, max(0, int(value * HEAT_BUCKETS)))
