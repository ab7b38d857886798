"""The spec file: a corpus of broken specs, each a one-line error naming its section and key."""

from __future__ import annotations

import pytest

from audit import parse_spec, run_audit
from audit.errors import SpecError
from tests.shop import load, spec_text

GOOD = """
version = 1
[streams.stock]
table = "stock_events"
key = ["sku"]
order_by = ["id"]

[entities.inventory]
table = "inventory"
key = ["sku"]

[entities.inventory.columns.on_hand]
stream = "stock"
fold = "sum"
value = "qty"
"""


def test_a_good_spec_parses_into_frozen_dataclasses():
    spec = parse_spec(GOOD)
    column = spec.entities["inventory"].columns["on_hand"]
    assert (column.stream, column.fold, column.value, column.section) == (
        "stock",
        "sum",
        "qty",
        "entities.inventory.columns.on_hand",
    )
    assert spec.streams["stock"].key == ("sku",)
    assert len(spec.sha256) == 64
    with pytest.raises(AttributeError):
        column.fold = "max"  # type: ignore[misc]


BROKEN = [
    ("version = 1\n[streams", r"invalid TOML"),
    (GOOD.replace("version = 1", "version = 2"), r"version: 2 is not supported"),
    (GOOD.replace("version = 1", ""), r"version: missing"),
    (GOOD + "\n[entitys.x]\n", r'unknown section \'entitys\' \(did you mean "entities"\?\)'),
    (
        GOOD.replace('fold = "sum"', 'fodl = "sum"'),
        r'entities\.inventory\.columns\.on_hand: unknown key \'fodl\' \(did you mean "fold"\?\)',
    ),
    (
        GOOD.replace('fold = "sum"', 'fold = "summ"'),
        r"entities\.inventory\.columns\.on_hand\.fold: unknown fold 'summ' "
        r'\(did you mean "sum"\?\)',
    ),
    (
        GOOD.replace('stream = "stock"', 'stream = "stok"'),
        r"entities\.inventory\.columns\.on_hand\.stream: unknown stream \'stok\' "
        r'\(did you mean "stock"\?\)',
    ),
    (
        GOOD.replace('order_by = ["id"]', "order_by = []"),
        r"streams\.stock\.order_by: must be a non-empty list",
    ),
    (
        GOOD.replace('key = ["sku"]\norder_by', 'key = ["sku", "warehouse"]\norder_by'),
        r"entities\.inventory\.columns\.on_hand\.stream: stream 'stock' has a key of 2 column\(s\) "
        r"but entity 'inventory' has 1",
    ),
    (GOOD.replace('value = "qty"', ""), r"entities\.inventory\.columns\.on_hand\.value: required"),
    (
        GOOD.replace('value = "qty"', 'value = "qty"\ntolerance = -1'),
        r"on_hand\.tolerance: must be a number >= 0",
    ),
    (
        GOOD.replace('value = "qty"', 'value = "qty"\ninitial = "ten"'),
        r"on_hand\.initial: fold = 'sum' needs a numeric initial value",
    ),
    (
        GOOD.replace('table = "stock_events"', 'tabel = "stock_events"'),
        r'streams\.stock: unknown key \'tabel\' \(did you mean "table"\?\)',
    ),
    ("version = 1\n[entities.x]\ntable='t'\nkey=['k']\n", r"streams: at least one stream"),
    (
        GOOD.replace(
            '[entities.inventory.columns.on_hand]\nstream = "stock"\nfold = "sum"\nvalue = "qty"\n',
            "",
        ),
        r"entities\.inventory\.columns: at least one",
    ),
    (GOOD + "\n[database]\nurl = 5\n", r"database\.url: must be a non-empty string"),
    ("streams = 3\nversion = 1", r"streams: must be a table"),
]


@pytest.mark.scenario("broken spec corpus: one-line error naming section and key")
@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_specs_are_one_line_errors(text, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


SCHEMA_ERRORS = [
    (
        'table = "ev"',
        'table = "evs"',
        r"streams\.ev\.table: table 'evs' not found \(did you mean "
        r'"ev"\?\)',
    ),
    (
        'key = ["k1", "k2"]\norder_by',
        'key = ["k1", "kk2"]\norder_by',
        r"streams\.ev\.key: column 'kk2' not found in table 'ev' \(did you mean \"k2\"\?\)",
    ),
    ('value = "v"', 'value = "vv"', r"entities\.ent\.columns\.total\.value: column 'vv' not found"),
    (
        'value = "v"',
        'value = "v +* 2"',
        r"entities\.ent\.columns\.total\.value: the database rejects it",
    ),
    (
        'value = "v"',
        'value = "s"',
        r"total\.value: fold 'sum' needs numbers, but column 's' "
        r"holds text",
    ),
    (
        "[entities.ent.columns.total]",
        "[entities.ent.columns.totl]",
        r"entities\.ent\.columns\.totl: column 'totl' not found in table 'ent' \(did you mean "
        r'"total"\?\)',
    ),
]

TOTAL = '\n[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v"\n'


@pytest.mark.scenario("spec errors found against the schema: one-line error")
@pytest.mark.parametrize(("old", "new", "message"), SCHEMA_ERRORS)
def test_spec_errors_found_against_the_schema(backend, tmp_path, old, new, message):
    load(backend, [], [])
    text = spec_text(backend.url, TOTAL).replace(old, new, 1)
    with pytest.raises(SpecError, match=message) as info:
        run_audit(parse_spec(text), out=tmp_path / "audit")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "audit").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".audit")] == []
