"""Server-side bar charts for the report: binning and geometry as plain data.

The report draws its charts as inline SVG (no chart library, no network). This
module decides the bins (deltas per column, drifted keys over time) and where
each bar goes; the template only writes the numbers out as ``<rect>`` and
``<text>`` elements, and Jinja2 escapes every label.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WIDTH = 560
HEIGHT = 170
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 28


@dataclass(frozen=True)
class Bin:
    """One bar's worth of data: a range and how many things fall in it."""

    label: str
    count: int


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True)
class BarChart:
    """A bar chart laid out for an SVG viewBox of ``width`` x ``height``."""

    title: str
    subtitle: str
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    y_max: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right: int = WIDTH - RIGHT
    bottom: int = HEIGHT - BOTTOM

    @property
    def total(self) -> int:
        return sum(b.count for b in self.bars)


def layout(title: str, subtitle: str, bins: list[Bin], unit: str, max_ticks: int = 6) -> BarChart:
    """Place bins as bars (a bar's height is proportional to its count)."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    y_max = max((b.count for b in bins), default=0)
    n = max(len(bins), 1)
    slot = plot_w / n
    gap = min(2.0, slot * 0.15)
    bars = []
    for i, b in enumerate(bins):
        h = 0.0 if y_max == 0 else plot_h * b.count / y_max
        if b.count and h < 1:
            h = 1.0
        bars.append(
            Bar(
                x=round(LEFT + i * slot + gap / 2, 2),
                y=round(TOP + plot_h - h, 2),
                width=round(max(slot - gap, 0.5), 2),
                height=round(h, 2),
                count=b.count,
                title=f"{b.label}: {b.count:,} {unit}",
            )
        )
    step = max(1, math.ceil(len(bins) / max_ticks))
    ticks = tuple(
        Tick(x=round(LEFT + (i + 0.5) * slot, 2), text=bins[i].label)
        for i in range(0, len(bins), step)
    )
    return BarChart(title=title, subtitle=subtitle, bars=tuple(bars), ticks=ticks, y_max=y_max)


# --------------------------------------------------------------------------- deltas


def _number(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.4g}"


def delta_bins(values: np.ndarray, max_bins: int = 24) -> list[Bin]:
    """Histogram bins for the deltas of one column.

    Small integer ranges get one bar per value; deltas spanning many orders of
    magnitude get signed decade bins (so one huge delta does not flatten the
    rest); anything else gets equal-width bins.
    """
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    lo, hi = float(values.min()), float(values.max())
    if np.all(values == np.round(values)) and hi - lo < max_bins:
        start = int(lo)
        counts = np.bincount((values - start).astype(np.int64), minlength=int(hi - lo) + 1)
        return [Bin(_number(start + i), int(c)) for i, c in enumerate(counts)]
    magnitudes = np.abs(values[values != 0])
    if magnitudes.size and magnitudes.max() / magnitudes.min() >= 1e3:
        return _decade_bins(values, max_bins)
    edges = np.linspace(lo, hi, max_bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    return [
        Bin(f"{_number(edges[i])} … {_number(edges[i + 1])}", int(c)) for i, c in enumerate(counts)
    ]


def _decade_bins(values: np.ndarray, max_bins: int) -> list[Bin]:
    """Bins (10^e, 10^(e+1)] of |delta| per sign; the end bins absorb the rest."""
    magnitudes = np.abs(values[values != 0])
    low = math.floor(math.log10(magnitudes.min()))
    high = max(math.ceil(math.log10(magnitudes.max())), low + 1)
    sides = 2 if values.min() < 0 < values.max() else 1
    limit = max(1, (max_bins - 1) // sides)
    low = max(low, high - limit)
    exponents = list(range(low, high))

    def count(mags: np.ndarray, e: int) -> int:
        lower = 0.0 if e == low else 10.0**e
        upper = math.inf if e == high - 1 else 10.0 ** (e + 1)
        return int(((mags > lower) & (mags <= upper)).sum())

    def label(e: int) -> str:
        lower = "0" if e == low else _number(10.0**e)
        upper = "∞" if e == high - 1 else _number(10.0 ** (e + 1))
        return f"{lower} … {upper}"

    bins: list[Bin] = []
    negative = -values[values < 0]
    if negative.size:
        bins += [Bin(f"−({label(e)})", count(negative, e)) for e in reversed(exponents)]
    zeros = int((values == 0).sum())
    if zeros:
        bins.append(Bin("0", zeros))
    positive = values[values > 0]
    if positive.size:
        bins += [Bin(label(e), count(positive, e)) for e in exponents]
    return bins


# --------------------------------------------------------------------------- time

_WIDTHS = [
    (1, "%H:%M:%S"),
    (5, "%H:%M:%S"),
    (15, "%H:%M:%S"),
    (60, "%H:%M"),
    (300, "%H:%M"),
    (900, "%H:%M"),
    (3600, "%m-%d %H:%M"),
    (6 * 3600, "%m-%d %H:%M"),
    (86400, "%Y-%m-%d"),
    (7 * 86400, "%Y-%m-%d"),
    (30 * 86400, "%Y-%m-%d"),
    (365 * 86400, "%Y"),
]


def time_bins(epoch_seconds: np.ndarray, max_bins: int = 48) -> tuple[list[Bin], int]:
    """Count timestamps (UTC epoch seconds) in round-width buckets.

    Returns the bins and the bucket width in seconds.
    """
    if epoch_seconds.size == 0:
        return [], 0
    lo, hi = float(epoch_seconds.min()), float(epoch_seconds.max())
    width, fmt = next(
        ((w, f) for w, f in _WIDTHS if (hi - math.floor(lo / w) * w) / w < max_bins),
        _WIDTHS[-1],
    )
    start = math.floor(lo / width) * width
    n = int((hi - start) // width) + 1
    counts = np.bincount(((epoch_seconds - start) // width).astype(np.int64), minlength=n)
    bins = []
    for i, c in enumerate(counts):
        at = dt.datetime.fromtimestamp(start + i * width, dt.UTC)
        bins.append(Bin(at.strftime(fmt), int(c)))
    return bins, width


def describe_width(seconds: int) -> str:
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {name}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


# --------------------------------------------------------------------------- parsing times

# A time in the report is what ``datetime.fromisoformat`` reads (ISO 8601; no zone means
# UTC), in milliseconds. The shapes drift itself writes (datetime.isoformat(), or "Z") are
# cast by Arrow in one call; any other text is tried by datetime alone.
ISO_TIME = (
    r"(?:19|2[01])\d\d-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,6})?)?(?:Z|[+-]\d\d:\d\d)?)?"
)
_ZONED = r"(?:Z|[+-]\d\d:\d\d)$"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _micros(text: str) -> int | None:
    """Microseconds since the epoch of an ISO 8601 text (no zone: UTC); None if not a time."""
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return (stamp - _EPOCH) // _MICROSECOND


def epoch_seconds(times: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """ISO text to UTC epoch seconds at millisecond precision (NaN where not a time).

    Each distinct text is parsed once; a text without a zone is UTC.
    """
    distinct = pc.unique(times)
    millis = np.zeros(len(distinct), dtype=np.int64)
    parsed = np.zeros(len(distinct), dtype=bool)
    shaped = pc.fill_null(pc.match_substring_regex(distinct, f"^{ISO_TIME}$"), False)
    zoned = pc.fill_null(pc.match_substring_regex(distinct, _ZONED), False)
    for zone, subset in (("UTC", pc.and_(shaped, zoned)), (None, pc.and_not(shaped, zoned))):
        at = np.flatnonzero(subset.to_numpy(zero_copy_only=False))
        if not at.size:
            continue
        try:
            stamps = pc.cast(distinct.filter(subset), pa.timestamp("us", tz=zone))
        except pa.ArrowInvalid:
            continue  # an impossible date among them (2026-02-30): each is tried below
        micros = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
        millis[at] = np.floor_divide(micros, 1000)
        parsed[at] = True
    rest = np.flatnonzero(~parsed & distinct.is_valid().to_numpy(zero_copy_only=False))
    for i in rest.tolist():
        micros = _micros(distinct[i].as_py())
        if micros is not None:
            millis[i] = micros // 1000
            parsed[i] = True
    seconds = np.where(parsed, millis.astype(np.float64), np.nan)
    seconds = np.append(seconds / 1e3, np.nan)
    index = pc.fill_null(pc.index_in(times, value_set=distinct), len(distinct))
    return seconds[index.to_numpy(zero_copy_only=False)]


def parse_time(text: Any) -> float | None:
    """UTC epoch seconds of one ISO 8601 time text (no zone: UTC); None if not a time."""
    if not isinstance(text, str) or not text:
        return None
    micros = _micros(text)
    return None if micros is None else round(micros / 10**6, 6)
