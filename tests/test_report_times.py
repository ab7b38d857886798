"""Times and charts in the report, computed without pandas.

The report parses stream and attribution times (audit.charts.epoch_seconds,
parse_time) and groups findings for its charts with Arrow and numpy. A time is
what ``datetime.fromisoformat`` reads (no zone: UTC); on the shapes drift
writes that is exactly what the pandas code they replaced computed, and the
charts equal that code's charts.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.charts import describe_width, epoch_seconds, layout, parse_time, time_bins
from audit.report import _FIRST_DIVERGENCE, _delta_charts, _time_chart, delta_bins


def pandas_epoch_seconds(times: pa.Array) -> np.ndarray:
    distinct = pc.unique(times)
    parsed = pd.to_datetime(distinct.to_pandas(), utc=True, format="ISO8601", errors="coerce")
    seconds = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").astype(np.float64)
    seconds[parsed.isna().to_numpy()] = np.nan
    seconds = np.append(seconds / 1e3, np.nan)
    index = pc.fill_null(pc.index_in(times, value_set=distinct), len(distinct))
    return seconds[index.to_numpy()]


def reference_seconds(text):
    """The definition: datetime.fromisoformat, naive as UTC, floored to milliseconds."""
    if not isinstance(text, str) or not text:
        return np.nan
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return np.nan
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    micros = (stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return (micros // 1000) / 1e3


def pandas_parse_time(text):
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    if stamp is pd.NaT:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())


zones = st.sampled_from(["", "Z", "+00:00", "-05:00", "+05:30", "+14:00", "-23:59"])


@st.composite
def iso_texts(draw):
    """Times as datetime.isoformat() writes them (drift's own), in every precision."""
    moment = draw(
        st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2199, 12, 31))
    )
    shape = draw(
        st.sampled_from(["date", "minutes", "seconds", "milliseconds", "microseconds", "digits"])
    )
    sep = draw(st.sampled_from("T "))
    if shape == "date":
        return moment.date().isoformat()
    if shape == "digits":  # 1 to 6 fraction digits
        digits = draw(st.integers(1, 6))
        text = moment.isoformat(sep, "seconds") + "." + f"{moment.microsecond:06d}"[:digits]
    else:
        text = moment.isoformat(sep, shape)
    return text + draw(zones)


# pandas reads "now" and "today" as the clock's time: true of both, but not comparable.
others = st.one_of(
    st.text(max_size=30).filter(lambda t: t.strip().lower() not in ("now", "today")),
    st.sampled_from(
        [
            "2026-02-30T00:00:00",  # the right shape, an impossible date
            "2026-03-14T24:00:00",
            "2026-03-14T09:00:00.1234567Z",  # nanoseconds: pandas' own parser
            "1677-09-22T00:00:00",
            "2262-04-12T00:00:00",
            "2026-03-14T09:00:00+0100",
            "20260314T090000Z",
            "2026-03-14t09:00:00z",
            "2026-0\u0663-14T09:00:00",  # an Arabic-Indic digit: pandas reads it, Arrow does not
            "1710406800",
            "",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(iso_texts() | others | st.none(), max_size=25))
def test_epoch_seconds_read_iso_8601(texts):
    times = pa.array(texts, pa.string())
    expected = np.array([reference_seconds(t) for t in texts], dtype=np.float64)
    np.testing.assert_array_equal(epoch_seconds(times), expected)
    chunked = pa.chunked_array([times[:3], times[3:]], pa.string())
    np.testing.assert_array_equal(epoch_seconds(chunked), expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(iso_texts() | st.none(), max_size=25))
def test_epoch_seconds_of_drifts_own_times_equal_pandas(texts):
    times = pa.array(texts, pa.string())
    np.testing.assert_array_equal(epoch_seconds(times), pandas_epoch_seconds(times))


@settings(max_examples=300, deadline=None)
@given(iso_texts() | others)
def test_parse_time_reads_iso_8601(text):
    expected = reference_seconds(text)
    got = parse_time(text)
    if np.isnan(expected):
        assert got is None
    else:
        assert got is not None and abs(got - expected) < 1e-3


@settings(max_examples=300, deadline=None)
@given(iso_texts())
def test_parse_time_of_drifts_own_times_equals_pandas(text):
    assert parse_time(text) == pandas_parse_time(text)


def test_texts_that_are_not_iso_8601_are_not_times():
    for text in ("now", "today", "Jan 5 2026", "2026/03/14 09:00", "1710406800", "2026-02-30"):
        assert parse_time(text) is None
        assert np.isnan(epoch_seconds(pa.array([text], pa.string()))[0])


def test_parse_time_of_non_text():
    assert parse_time(None) is None and parse_time(17) is None and parse_time("") is None


# --------------------------------------------------------------------------- charts


def pandas_delta_charts(table):
    numeric = table.select(["entity", "column", "delta"]).filter(
        pc.and_(pc.is_valid(table["delta"]), pc.is_valid(table["column"]))
    )
    if numeric.num_rows == 0:
        return ()
    frame = numeric.to_pandas()
    charts = []
    for (entity, column), group in frame.groupby(["entity", "column"], sort=True):
        values = group["delta"].to_numpy(dtype=np.float64)
        charts.append(
            layout(
                f"{entity}.{column}",
                f"{values.size:,} numeric finding(s); delta = expected − actual",
                delta_bins(values),
                "finding(s)",
            )
        )
    return tuple(charts)


def pandas_time_chart(table, attributed):
    table = table.filter(pc.not_equal(table["kind"], "null_key"))
    seconds = pandas_epoch_seconds(table["last_event_at"])
    basis = "the last stream row that touched them"
    if attributed:
        found = pc.extract_regex(pc.fill_null(table["evidence"], ""), _FIRST_DIVERGENCE)
        divergence = pandas_epoch_seconds(pc.struct_field(found, "t"))
        if np.isfinite(divergence).any():
            basis = "their first divergence (attribution), else the last stream row"
            seconds = np.where(np.isfinite(divergence), divergence, seconds)
    keys = pc.binary_join_element_wise(table["entity"], table["key"], "\x00")
    frame = pd.DataFrame({"key": keys.to_pandas(), "seconds": seconds})
    per_key = frame.sort_values("seconds", na_position="last", kind="stable").drop_duplicates("key")
    seconds = per_key["seconds"].to_numpy()
    valid = seconds[np.isfinite(seconds)]
    without = int(len(seconds) - len(valid))
    if valid.size == 0:
        return None, without
    bins, width = time_bins(valid)
    chart = layout(
        "Drifted keys over time (UTC)",
        f"{valid.size:,} key(s) by {basis}; one bar = {describe_width(width)}",
        bins,
        "key(s)",
    )
    return chart, without


def findings_table(n: int, seed: int) -> pa.Table:
    """Findings with repeated keys (one per column), keys shared by two entities,
    keys without any time, NULL deltas and columns, and first divergences."""
    rng = np.random.default_rng(seed)
    entity = rng.choice(["inventory", "orders", "ünïcode"], n)
    key = np.char.add('["K-', np.char.add(rng.integers(0, max(n // 3, 1), n).astype(str), '"]'))
    kind = rng.choice(
        ["mismatch", "missing_row", "null_key", "orphan_row"], n, p=[0.85, 0.05, 0.05, 0.05]
    )
    column = rng.choice(["on_hand", "status", "b"], n)
    delta = np.round(rng.standard_t(2, n) * 10 ** rng.integers(0, 5, n))
    base = np.datetime64("2026-03-14T09:00:00")
    times = np.datetime_as_string(base + rng.integers(0, 86400 * 3, n).astype("timedelta64[s]"))
    last = [None if rng.random() < 0.1 else t + rng.choice(["Z", "", "+02:00"]) for t in times]
    evidence = [
        None
        if rng.random() < 0.5
        else json.dumps({"first_divergence_at": str(base + int(rng.integers(0, 9999))) + "Z"})
        if rng.random() < 0.8
        else json.dumps({"why": "no date"})
        for _ in range(n)
    ]
    return pa.table(
        {
            "entity": entity,
            "key": key,
            "column": pa.array(np.where(kind == "mismatch", column, None), pa.string()),
            "kind": kind,
            "delta": pa.array(
                np.where((kind == "mismatch") & (rng.random(n) < 0.9), delta, np.nan),
                from_pandas=True,
            ),
            "last_event_at": pa.array(last, pa.string()),
            "evidence": pa.array(evidence, pa.string()),
        }
    )


def test_charts_equal_the_pandas_charts():
    for n, seed in ((1, 0), (7, 1), (500, 2), (5000, 3)):
        table = findings_table(n, seed)
        assert _delta_charts(table) == pandas_delta_charts(table)
        for attributed in (False, True):
            assert _time_chart(table, attributed) == pandas_time_chart(table, attributed)
    # A table in several chunks, as a multi-row-group findings.parquet reads.
    table = findings_table(3000, 4)
    chunked = pa.concat_tables([table.slice(0, 1000), table.slice(1000)])
    assert chunked["key"].num_chunks == 2
    assert _delta_charts(chunked) == pandas_delta_charts(table)
    assert _time_chart(chunked, True) == pandas_time_chart(table, True)
