"""Line charts as SVG, drawn on the server: axes, ticks, a legend, one colour per series and
threshold lines. No JavaScript and nothing fetched from elsewhere, so the page works offline and
in any browser (and its screenshot is the page).

Plain Python: the view hands in numbers and names; everything written into the SVG is escaped.
"""

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

# Okabe-Ito: told apart by colour-blind readers too; red is kept for thresholds.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#6B7280", "#8C564B")
THRESHOLD_COLOUR = "#C62828"

# The viewBox, close to the size the page shows a chart at (so 11 px text reads as 11 px).
WIDTH, HEIGHT = 430, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 40, 30
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

# Steps between time ticks, in seconds: the smallest that gives at most MAX_TIME_TICKS ticks.
TIME_STEPS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
MAX_TIME_TICKS = 7


@dataclass(frozen=True)
class Series:
    name: str  # shown in the legend, and as data-series on its elements
    colour: str
    points: Sequence[tuple[float, float | None]]  # (x: seconds since 1970, y); None: no value there
    dashed: bool = False
    key: str = ""  # data-series value (default: name)
    dot_zeros: bool = True  # False: a zero is drawn as line only (jobs per minute: a bucket without jobs)


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str


@dataclass(frozen=True)
class LegendEntry:
    label: str
    colour: str
    dashed: bool = False


@dataclass
class Chart:
    title: str
    series: list[Series]
    x_start: float
    x_end: float
    y_format: Callable[[float], str] | None = None  # tick labels (default: by the step)
    thresholds: list[Threshold] = field(default_factory=list)
    legend: list[LegendEntry] | None = None  # default: one entry per series
    empty_text: str = "No finished jobs in this window"
    y_min_top: float = 0.0  # the y axis reaches at least this high
    width: int = WIDTH
    height: int = HEIGHT


def nice_step(span: float, ticks: int = 4) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) cutting ``span`` into about ``ticks``."""
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * power >= raw:
            return multiple * power
    return 10 * power


def step_decimals(step: float) -> int:
    """Decimals that show every multiple of ``step`` exactly (0.25 -> 2, 5 -> 0)."""
    for decimals in range(0, 7):
        if abs(round(step, decimals) - step) < 1e-9:
            return decimals
    return 6


def time_ticks(start: float, end: float) -> list[tuple[float, str]]:
    """Round UTC times between start and end, labelled for the span shown."""
    span = end - start
    step = next((s for s in TIME_STEPS if span / s <= MAX_TIME_TICKS), TIME_STEPS[-1])
    first = math.ceil(start / step) * step
    ticks = []
    t = first
    while t <= end + 1e-6:
        when = dt.datetime.fromtimestamp(t, tz=dt.UTC)
        if step >= 86400:
            label = when.strftime("%b %d")
        elif span > 86400:
            label = when.strftime("%a %H:%M")
        elif step < 60:
            label = when.strftime("%H:%M:%S")
        else:
            label = when.strftime("%H:%M")
        ticks.append((t, label))
        t += step
    return ticks


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _text_width(text: str, size: float = 11.5) -> float:
    return len(text) * size * 0.56  # an estimate, good enough to place legend entries


def render(chart: Chart) -> str:
    """The chart as an inline <svg> element."""
    width, height = chart.width, chart.height
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    values = [y for s in chart.series for _, y in s.points if y is not None]
    top_value = max([*values, *(t.value for t in chart.thresholds), chart.y_min_top, 0.0])
    step = nice_step(top_value * 1.08 if top_value > 0 else 1.0)
    y_top = max(step, math.ceil(top_value * 1.08 / step) * step) if top_value > 0 else step * 4
    decimals = step_decimals(step)
    fmt = chart.y_format or (lambda v: f"{v:.{decimals}f}")
    x_span = max(chart.x_end - chart.x_start, 1e-9)

    def x_of(t: float) -> float:
        return LEFT + (t - chart.x_start) / x_span * plot_w

    def y_of(v: float) -> float:
        return TOP + plot_h - (v / y_top) * plot_h

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{escape(chart.title)}" font-family="{escape(FONT)}">',
        f"<title>{escape(chart.title)}</title>",
    ]
    # Grid and y ticks.
    tick = 0.0
    while tick <= y_top + step / 1000:
        y = y_of(tick)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="{"#9CA3AF" if tick == 0 else "#E5E7EB"}" stroke-width="1"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{_num(y + 4)}" text-anchor="end" font-size="11" fill="#4B5563">{escape(fmt(tick))}</text>')
        tick += step
    # Time ticks.
    for t, label in time_ticks(chart.x_start, chart.x_end):
        x = x_of(t)
        out.append(f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}" stroke="#9CA3AF"/>')
        out.append(f'<text x="{_num(x)}" y="{TOP + plot_h + 18}" text-anchor="middle" font-size="11" fill="#4B5563">{escape(label)}</text>')
    # Series: a line through neighbouring buckets that have a value, a dot on each.
    for series in chart.series:
        key = escape(series.key or series.name)
        dash = ' stroke-dasharray="5 4"' if series.dashed else ""
        out.append(f'<g class="series" data-series="{key}">')
        run: list[tuple[float, float, float]] = []
        for t, v in [*series.points, (0.0, None)]:
            if v is not None:
                run.append((x_of(t), y_of(v), v))
                continue
            if len(run) > 1:
                coords = " ".join(f"{_num(x)},{_num(y)}" for x, y, _ in run)
                out.append(
                    f'<polyline points="{coords}" fill="none" stroke="{series.colour}" stroke-width="2" stroke-linejoin="round"{dash}/>'
                )
            for x, y, value in run:
                if value == 0 and not series.dot_zeros and len(run) > 1:
                    continue
                fill = "#FFFFFF" if series.dashed else series.colour
                out.append(
                    f'<circle class="point" cx="{_num(x)}" cy="{_num(y)}" r="2.8" fill="{fill}" '
                    f'stroke="{series.colour}" stroke-width="1.5"/>'
                )
            run = []
        out.append("</g>")
    # Thresholds: dashed red lines over the series, labelled on a white halo at the left (the
    # older, often emptier part of the window).
    for threshold in chart.thresholds:
        y = y_of(threshold.value)
        out.append(
            f'<g class="threshold" data-threshold="{_num(threshold.value)}">'
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text x="{LEFT + 6}" y="{_num(y - 6)}" font-size="11" fill="{THRESHOLD_COLOUR}" stroke="#FFFFFF" stroke-width="4" '
            f'stroke-linejoin="round" paint-order="stroke">{escape(threshold.label)}</text></g>'
        )
    if not values:
        out.append(
            f'<text x="{_num(LEFT + plot_w / 2)}" y="{_num(TOP + plot_h / 2)}" text-anchor="middle" '
            f'font-size="13" fill="#9CA3AF">{escape(chart.empty_text)}</text>'
        )
    # Legend along the top.
    x = float(LEFT)
    entries = chart.legend if chart.legend is not None else [LegendEntry(s.name, s.colour, s.dashed) for s in chart.series]
    for entry in entries:
        dash = ' stroke-dasharray="5 4"' if entry.dashed else ""
        out.append(f'<line x1="{_num(x)}" x2="{_num(x + 18)}" y1="16" y2="16" stroke="{entry.colour}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{_num(x + 24)}" y="20" font-size="11.5" fill="#1F2937">{escape(entry.label)}</text>')
        x += 24 + _text_width(entry.label) + 16
    out.append("</svg>")
    return "".join(out)
