"""The exact JSON text of database values (audit.findings.to_json / from_json).

Findings, evidence.parquet and plans store values as this text, and approvals
hash files that hold it, so its bytes must never change: ``to_json`` is checked
against its original, plainly written form (json.dumps per type) on the values
drivers return, and from_json must read it back.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.sql.elements import quoted_name

from audit.findings import ABSENT, from_json, key_to_json, to_json


def reference(value: Any) -> str:
    """to_json as first written: one json.dumps per type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return json.dumps(value.isoformat())
    if isinstance(value, dt.timedelta):
        return json.dumps(str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return json.dumps({"$base64": base64.b64encode(bytes(value)).decode("ascii")})
    if isinstance(value, uuid.UUID):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(str(k), ensure_ascii=False)}:{reference(v)}" for k, v in value.items()
            )
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(reference(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


class Money(Decimal):
    """A Decimal subclass, as some drivers' types are."""


class Label(str):
    pass


EXACT = [
    (None, "null"),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-(10**30), "-1000000000000000000000000000000"),
    (1.5, "1.5"),
    (1e20, "1e+20"),
    (float("nan"), '"nan"'),
    (float("-inf"), '"-inf"'),
    (Decimal("12345678901234567890.125"), "12345678901234567890.125"),
    (Decimal("1E+3"), "1000"),
    (Decimal("-0.000"), "-0.000"),
    (Decimal("NaN"), '"NaN"'),
    (Money("1.50"), "1.50"),
    ('é\u2028<"\\', '"é\u2028<\\"\\\\"'),
    (Label("x"), '"x"'),
    (quoted_name("Weird Col", quote=True), '"Weird Col"'),
    (dt.datetime(2026, 3, 14, 9, 0, 0, 5), '"2026-03-14T09:00:00.000005"'),
    (dt.datetime(2026, 3, 14, 9, tzinfo=dt.UTC), '"2026-03-14T09:00:00+00:00"'),
    (dt.date(2026, 3, 14), '"2026-03-14"'),
    (dt.time(9, 30), '"09:30:00"'),
    (dt.timedelta(days=1, seconds=5), '"1 day, 0:00:05"'),
    (b"\x00\xff", '{"$base64": "AP8="}'),
    (bytearray(b"ab"), '{"$base64": "YWI="}'),
    (memoryview(b"ab"), '{"$base64": "YWI="}'),
    (uuid.UUID(int=1), '"00000000-0000-0000-0000-000000000001"'),
    ({"a": [1, None], 2: {"b": b"x"}}, '{"a":[1,null],"2":{"b":{"$base64": "eA=="}}}'),
    ((1, "x"), '[1,"x"]'),
    (ipaddress.ip_address("10.0.0.1"), '"10.0.0.1"'),  # anything else: its str()
]


def test_exact_text_of_each_type():
    for value, text in EXACT:
        assert to_json(value) == text, value
        assert reference(value) == text, value


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.binary(),
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_to_json_is_its_original_text(value):
    text = to_json(value)
    assert text == reference(value)
    assert from_json(text) == json.loads(text, parse_float=Decimal)


@settings(max_examples=200, deadline=None)
@given(st.lists(scalars, min_size=1, max_size=3))
def test_keys_round_trip(key):
    assert key_to_json(key) == reference(list(key))


def test_from_json_reads_decimals_exactly_and_rejects_what_json_loads_rejects():
    assert from_json(None) is ABSENT
    assert from_json('[1.10, 2, "x"]') == [Decimal("1.10"), 2, "x"]
    assert str(from_json("0.1000000000000000000001")) == "0.1000000000000000000001"
    assert from_json(b'{"a": 1}') == {"a": 1}  # bytes, as json.loads takes them
    for bad in ("\ufeff1", "[1,", "", "NaN1"):
        try:
            json.loads(bad, parse_float=Decimal)
        except ValueError as exc:
            expected = type(exc)
        else:
            raise AssertionError(bad)
        try:
            from_json(bad)
        except ValueError as exc:
            assert type(exc) is expected
        else:
            raise AssertionError(bad)


@pytest.mark.parametrize(
    "text",
    [" 1", "1 ", " [1.50] ", '\n{"a": 2.0}\n', "1 2", "[1] x", '"a"b', "{} {}", "tru", "\ufeff[1]"],
)
def test_from_json_answers_or_raises_as_json_loads_around_the_value(text):
    """Texts the scanner does not read whole from their first character take the slow path."""
    try:
        expected = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        with pytest.raises(type(exc)) as raised:
            from_json(text)
        assert str(raised.value) == str(exc)
    else:
        value = from_json(text)
        assert value == expected and repr(value) == repr(expected)
