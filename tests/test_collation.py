"""Stream keys are grouped and matched under the entity key's collation (audit/collation.py).

Each test builds a stream ``ev`` and an entity ``ent`` keyed by one text column
``k`` whose collations differ: case-insensitive on one side (MariaDB
``utf8mb4_general_ci`` / ``utf8mb4_uca1400_ai_ci``, SQLite ``NOCASE``, a
nondeterministic ICU collation on PostgreSQL), case-sensitive on the other. The
entity's key decides what one entity is: against a binary entity key the events
of ``'a'`` and ``'A'`` fold apart; against a case-insensitive one they fold
together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from audit import attribution, parse_spec, run_audit
from audit.dialects import get_dialect
from audit.diff import build_diff
from audit.errors import SpecError
from audit.evidence import EVIDENCE
from audit.schema import bind_spec
from drift.cli import main
from tests.conftest import Backend, make_backend
from tests.shop import brief

#: Per engine: a case-insensitive collation, and the case-sensitive one it is mixed with.
CI = {"sqlite": "NOCASE", "mysql": "utf8mb4_general_ci", "postgresql": "drift_ci"}
CS = {"sqlite": "BINARY", "mysql": "utf8mb4_bin", "postgresql": '"default"'}

SUM = '[entities.ent.columns.total]\nstream = "ev"\nfold = "sum"\nvalue = "v"\n'
LAST = '[entities.ent.columns.last_s]\nstream = "ev"\nfold = "last"\nvalue = "s"\n'
LAST_WHERE = LAST + "where = \"s <> 'never'\"\n"

# 'a' and 'A' are one entity under a case-insensitive key and two under a binary one;
# 'C' has an entity row only as 'c'.
EVENTS = [(1, "a", 1, "x"), (2, "A", 10, "y"), (3, "b", 5, "z"), (4, "C", 7, "w")]
ROWS = [("a", 1, "x"), ("b", 5, "z"), ("c", 7, "w")]


@pytest.fixture(params=("sqlite", "postgresql", "mysql"))
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(engine_name: str, tmp_path: Path) -> Iterator[Backend]:
    backend_gen = make_backend(engine_name, tmp_path)
    backend = next(backend_gen)
    try:
        if engine_name == "postgresql":
            backend.execute(
                "CREATE COLLATION drift_ci (provider = icu, locale = 'und-u-ks-level2', "
                "deterministic = false)"
            )
        yield backend
    finally:
        next(backend_gen, None)


def create(
    backend: Backend,
    stream_collation: str,
    entity_collation: str,
    events=EVENTS,  # type: ignore[no-untyped-def]
    rows=ROWS,  # type: ignore[no-untyped-def]
) -> None:
    text = "TEXT" if backend.name == "sqlite" else "VARCHAR(20)"
    if backend.name == "mysql":
        text += " CHARACTER SET utf8mb4"
    backend.execute(
        f"CREATE TABLE ev (id INTEGER PRIMARY KEY, k {text} COLLATE {stream_collation}, "
        f"v INTEGER, s VARCHAR(20))"
    )
    backend.execute(
        f"CREATE TABLE ent (k {text} COLLATE {entity_collation} NOT NULL PRIMARY KEY, "
        "total INTEGER, last_s VARCHAR(20))"
    )
    for row in events:
        backend.execute(
            "INSERT INTO ev VALUES (:i, :k, :v, :s)", i=row[0], k=row[1], v=row[2], s=row[3]
        )
    for row in rows:
        backend.execute("INSERT INTO ent VALUES (:k, :t, :s)", k=row[0], t=row[1], s=row[2])


def spec(backend: Backend, columns: str = SUM + LAST, stream_key: str = "k"):  # type: ignore[no-untyped-def]
    return parse_spec(
        f"""
version = 1
[database]
url = "{backend.url}"

[streams.ev]
table = "ev"
key = ["{stream_key}"]
order_by = ["id"]

[entities.ent]
table = "ent"
key = ["k"]
{columns}
"""
    )


def audit(backend: Backend, tmp_path: Path, columns: str = SUM + LAST, name: str = "audit", **kw):  # type: ignore[no-untyped-def]
    key = kw.pop("stream_key", "k")
    result = run_audit(spec(backend, columns, key), out=tmp_path / name, write_report=False, **kw)
    return result, brief(pq.read_table(result.findings_path).to_pylist())


def diff_sql(backend: Backend, columns: str = SUM + LAST) -> str:
    with backend.engine.connect() as conn:
        bound = bind_spec(spec(backend, columns), conn)
        conn.rollback()
    diff = build_diff(bound, bound.entities["ent"], get_dialect(backend.engine.dialect.name))
    return str(diff.select.compile(backend.engine)).upper()


BINARY_ENTITY = {
    (("A",), None, "missing_row", "ABSENT", "ABSENT"),
    (("C",), None, "missing_row", "ABSENT", "ABSENT"),
    (("c",), None, "orphan_row", "ABSENT", "ABSENT"),
}


def _kinds(found):  # type: ignore[no-untyped-def]
    """Findings without their values (checked separately)."""
    return {(key, column, kind, "ABSENT", "ABSENT") for key, column, kind, _, _ in found}


def test_a_binary_entity_key_keeps_spellings_apart(db, tmp_path):
    """A case-insensitive stream key used to fold 'a' and 'A' into one entity (total
    11) and to match event 'C' to row 'c'; the entity key is binary: they are three
    entities, 'A' and 'C' have no row and 'c' no event."""
    create(db, CI[db.name], CS[db.name])
    _, found = audit(db, tmp_path)
    assert _kinds(found) == BINARY_ENTITY
    missing = {key: expected for key, _, kind, expected, _ in found if kind == "missing_row"}
    assert missing == {
        ("A",): (("last_s", "y"), ("total", 10)),
        ("C",): (("last_s", "w"), ("total", 7)),
    }


def test_a_case_insensitive_entity_key_gathers_every_spelling(db, tmp_path):
    """A binary stream key used to leave event 'A' beside entity 'a' (a missing row
    'A') and event 'C' beside row 'c'; under the entity's case-insensitive key they
    are the same entities: 'a' folds both events, 'c' is clean."""
    create(db, CS[db.name], CI[db.name])
    _, found = audit(db, tmp_path)
    assert found == {
        (("a",), "total", "mismatch", 11, 1),
        (("a",), "last_s", "mismatch", "y", "x"),
    }


def test_a_stream_key_expression_is_asked_its_collation(db, tmp_path):
    """The stream key as an expression (with a colon and a percent sign, which must
    reach the database as written): its collation is asked of the database too."""
    create(db, CS[db.name], CI[db.name])
    key = "replace(k, ':%', ':%')" if db.name != "mysql" else "REPLACE(k, ':%', ':%')"
    _, found = audit(db, tmp_path, stream_key=key)
    assert found == {
        (("a",), "total", "mismatch", 11, 1),
        (("a",), "last_s", "mismatch", "y", "x"),
    }


@pytest.mark.parametrize("columns", [SUM, LAST, LAST_WHERE, SUM + LAST])
def test_a_missing_row_is_named_by_its_least_spelling(db, tmp_path, columns):
    """Events 'b' and 'B' of a case-insensitive entity without a row: one missing row,
    named by the spelling that sorts first in binary order ('B'), whichever shape
    the query takes (GROUP BY, window carrying the aggregates, picked row)."""
    events = [(1, "b", 1, "x"), (2, "B", 2, "y"), (3, "b", 4, "z")]
    create(db, CS[db.name], CI[db.name], events=events, rows=[])
    _, found = audit(db, tmp_path, columns)
    assert {(key, kind) for key, _, kind, _, _ in found} == {(("B",), "missing_row")}


def test_same_collations_keep_their_sql(db):
    """Both sides alike: no COLLATE on the key (the SQL and its index use are unchanged)."""
    create(db, CS[db.name], CS[db.name])
    assert "EV.K COLLATE" not in diff_sql(db)


def test_mixed_collations_group_under_the_entity_key(db):
    create(db, CI[db.name], CS[db.name])
    sql = diff_sql(db)
    name = CS[db.name].upper()
    assert f"EV.K COLLATE {name}" in sql


def test_same_case_insensitive_collations_follow_the_engine(db, tmp_path):
    """Both sides case-insensitive: the engine's own equality, as before (one entity)."""
    create(db, CI[db.name], CI[db.name])
    _, found = audit(db, tmp_path)
    assert {(column, kind, e, a) for _, column, kind, e, a in found} == {
        ("total", "mismatch", 11, 1),
        ("last_s", "mismatch", "y", "x"),
    }
    assert "EV.K COLLATE" not in diff_sql(db)


def test_an_incremental_audit_reads_keys_under_the_entity_collation(db, tmp_path):
    """A new event 'A' for the case-insensitive entity 'a': the incremental audit
    must refold every event of 'a' (both spellings), as a full audit does."""
    create(db, CS[db.name], CI[db.name], events=[(1, "a", 1, "x")], rows=[("a", 1, "x")])
    state = tmp_path / "state.json"
    _, first = audit(db, tmp_path, name="first", since_last=state)
    assert first == set()
    db.execute("INSERT INTO ev VALUES (2, 'A', 10, 'y')")
    result, found = audit(db, tmp_path, name="second", since_last=state)
    assert result.summary["scope"] == "incremental"
    _, full = audit(db, tmp_path, name="full")
    assert (
        found
        == full
        == {
            (("a",), "total", "mismatch", 11, 1),
            (("a",), "last_s", "mismatch", "y", "x"),
        }
    )


def test_evidence_holds_every_spelling_of_the_key(db, tmp_path):
    """Evidence for entity 'a' (case-insensitive key) holds its events 'a' and 'A'."""
    create(db, CS[db.name], CI[db.name])
    result, _ = audit(db, tmp_path)
    evidence = pq.read_table(result.out_dir / EVIDENCE).to_pylist()
    rows = sorted((e["key"], e["position"], e["row"]) for e in evidence)
    assert [(key, position) for key, position, _ in rows] == [('["a"]', 0), ('["a"]', 1)]
    assert '"k":"A"' in rows[0][2] and '"k":"a"' in rows[1][2]


def test_keys_of_different_character_sets_are_refused(tmp_path, capsys):
    backend_gen = make_backend("mysql", tmp_path)
    db = next(backend_gen)
    try:
        db.execute(
            "CREATE TABLE ev (id INTEGER PRIMARY KEY, k VARCHAR(20) CHARACTER SET latin1 "
            "COLLATE latin1_general_ci, v INTEGER, s VARCHAR(20))"
        )
        db.execute(
            "CREATE TABLE ent (k VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
            "PRIMARY KEY, total INTEGER, last_s VARCHAR(20))"
        )
        with pytest.raises(SpecError, match=r"streams\.ev\.key\[0\]: its character set latin1"):
            audit(db, tmp_path)
        # From the command line: one line, exit code 2.
        spec_file = tmp_path / "drift.toml"
        spec_file.write_text(
            f'version = 1\n[database]\nurl = "{db.url}"\n[streams.ev]\ntable = "ev"\n'
            'key = ["k"]\norder_by = ["id"]\n[entities.ent]\ntable = "ent"\nkey = ["k"]\n' + SUM
        )
        assert main(["-q", "audit", "-c", str(spec_file), "-o", str(tmp_path / "cli")]) == 2
        err = capsys.readouterr().err.strip()
        assert "character set latin1" in err and "\n" not in err
        # The way out the message names: the stream key as an expression in the entity's terms.
        with db.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO ev VALUES (1, 'a', 1, 'x'), (2, 'A', 2, 'y')")
        key = "CONVERT(k USING utf8mb4) COLLATE utf8mb4_bin"
        fixed = parse_spec(
            f'version = 1\n[database]\nurl = "{db.url}"\n[streams.ev]\ntable = "ev"\n'
            f'key = ["{key}"]\norder_by = ["id"]\n[entities.ent]\ntable = "ent"\nkey = ["k"]\n'
            + SUM
        )
        result = run_audit(fixed, out=tmp_path / "fixed", write_report=False)
        found = brief(pq.read_table(result.findings_path).to_pylist())
        assert {key for key, *_ in found} == {("a",), ("A",)}
    finally:
        next(backend_gen, None)


@pytest.mark.parametrize("stream_ci", [True, False])
def test_mariadb_accent_insensitive_uca_collation(tmp_path, stream_ci):
    """utf8mb4_uca1400_ai_ci also equates 'é' and 'e': against utf8mb4_bin they are two
    entities; under it, one."""
    backend_gen = make_backend("mysql", tmp_path)
    db = next(backend_gen)
    try:
        ai, binary = "utf8mb4_uca1400_ai_ci", "utf8mb4_bin"
        events = [(1, "e", 1, "x"), (2, "é", 10, "y")]
        create(
            db, ai if stream_ci else binary, binary if stream_ci else ai, events, [("e", 1, "x")]
        )
        _, found = audit(db, tmp_path, SUM)
        if stream_ci:
            assert found == {(("é",), None, "missing_row", (("total", 10),), "ABSENT")}
        else:
            assert found == {(("e",), "total", "mismatch", 11, 1)}
    finally:
        next(backend_gen, None)


def test_attribution_reads_every_spelling_of_the_key(db):
    """Attribution's lookups of stream rows (each run's effect, a column's history) by
    the key of a case-insensitive entity find its rows spelled 'a' and 'A'."""
    text = "TEXT" if db.name == "sqlite" else "VARCHAR(20) CHARACTER SET utf8mb4"
    text = "VARCHAR(20)" if db.name == "postgresql" else text
    db.execute(
        f"CREATE TABLE ev (id INTEGER PRIMARY KEY, k {text} COLLATE {CS[db.name]}, "
        "v INTEGER, s VARCHAR(20), run_id INTEGER)"
    )
    db.execute(
        f"CREATE TABLE ent (k {text} COLLATE {CI[db.name]} NOT NULL PRIMARY KEY, "
        "total INTEGER, last_s VARCHAR(20))"
    )
    db.execute(
        "INSERT INTO ev VALUES (1, 'a', 1, 'x', 7), (2, 'A', 10, 'y', 8), (3, 'b', 5, 'z', 7)"
    )
    db.execute("INSERT INTO ent VALUES ('a', 1, 'x'), ('b', 5, 'z')")
    parsed = parse_spec(
        f'version = 1\n[database]\nurl = "{db.url}"\n[streams.ev]\ntable = "ev"\n'
        'key = ["k"]\norder_by = ["id"]\nrun_id = "run_id"\n'
        '[entities.ent]\ntable = "ent"\nkey = ["k"]\n' + SUM + LAST
    )
    with db.engine.connect() as conn:
        bound = bind_spec(parsed, conn)
        entity = bound.entities["ent"]
        total, last_s = entity.columns
        effects = attribution.fetch_effects(conn, bound, total, [("a",)], entity)
        history = attribution.fetch_stream_rows(conn, bound, last_s, [("a",)], True, entity)
        conn.rollback()
    assert effects == {("a",): {"7": 1, "8": 10}}
    assert [row["value"] for row in history[("a",)]] == ["x", "y"]


def test_a_witness_and_a_second_stream_read_keys_under_the_entity_collation(db, tmp_path):
    """Entity 'a' (case-insensitive key) with events 'a' (+1) and 'A' (+10) in a binary
    stream, and a second stream of the entity's collation that witnesses the total (11,
    spelled 'A') and gives last_s: all agree, no finding. Grouped under the binary key,
    'A' was a missing row and the witness disagreed with 'A''s 10."""
    text = {"sqlite": "TEXT", "mysql": "VARCHAR(20) CHARACTER SET utf8mb4"}.get(db.name, "TEXT")
    create(db, CS[db.name], CI[db.name], events=[(1, "a", 1, "x"), (2, "A", 10, "x")], rows=[])
    db.execute(
        f"CREATE TABLE wit (id INTEGER PRIMARY KEY, k {text} COLLATE {CI[db.name]}, "
        "v INTEGER, s VARCHAR(20))"
    )
    db.execute("INSERT INTO wit VALUES (1, 'A', 11, 'y')")
    db.execute("INSERT INTO ent VALUES ('a', 11, 'y')")
    parsed = parse_spec(
        f'version = 1\n[database]\nurl = "{db.url}"\n'
        '[streams.ev]\ntable = "ev"\nkey = ["k"]\norder_by = ["id"]\n'
        '[streams.wit]\ntable = "wit"\nkey = ["k"]\norder_by = ["id"]\n'
        '[entities.ent]\ntable = "ent"\nkey = ["k"]\n'
        + SUM
        + 'also = [{ stream = "wit", fold = "last", value = "v" }]\n'
        + '[entities.ent.columns.last_s]\nstream = "wit"\nfold = "last"\nvalue = "s"\n'
    )
    result = run_audit(parsed, out=tmp_path / "w", write_report=False)
    assert pq.read_table(result.findings_path).to_pylist() == []
    with db.engine.connect() as conn:
        keyed = bind_spec(parsed, conn).entities["ent"].keyed_streams
        conn.rollback()
    assert set(keyed) == {"ev"}  # only the stream whose collation differs
