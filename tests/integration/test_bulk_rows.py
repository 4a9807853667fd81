"""Bulk and unary lookups answer a code whose only registration is active straight from the stored row
(BulkItem.row; look_up's RegistrationRow) when the purpose asks no history. That shortcut must give exactly
the answer the domain path (current_by_code over Registration objects) gives, and the same provision and
access entries, whatever the registrations are: checked against the domain path on random registration
sets, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from center.provision_servicer import _bulk_response, fill_looked
from jukinet.codes import resident_code_from_body
from jukinet.domain.agency import Agency, Purpose
from jukinet.domain.errors import InvalidField
from jukinet.domain.model import EventRow, RegistrationRow
from jukinet.services import provision
from jukinet.services.provision import LookupRequest, bulk_lookup, log_lookups, look_up
from jukinet.services.relay import CallInfo
from jukinet.storage.center_tx import CenterTx
from jukinet.storage.rows import REGISTRATION_COLUMNS
from jukinet.wire.v1 import provision_pb2
from tests.helpers.center_db import AWKWARD_TEXT, rolled_back

CODES = [resident_code_from_body(f"{n:010d}") for n in range(100, 112)]
MUNICIPALITIES = ("132080", "132187", "012084")
FIELD_SETS = (
    frozenset({"name", "birth_date", "address"}),
    frozenset({"name", "alias", "birth_date", "sex", "address"}),
    frozenset({"sex"}),
)
FIELD_SETS_WITH_HISTORY = (*FIELD_SETS, frozenset({"name", "address", "history"}))
CALL = CallInfo(peer="jukinet://agency/pension", request_id="req-1", method="/test/LookupResidents")
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


@contextmanager
def _shortcut(enabled: bool) -> Iterator[None]:
    """The shortcut as shipped, or switched off: no row counts as a single active registration, so every
    code takes the domain path (current_by_code over Registration objects)."""
    if enabled:
        yield
        return
    with patch.object(provision, "_single_active", lambda rows: None):
        yield


@st.composite
def registrations(draw: st.DrawFn) -> list[RegistrationRow]:
    """0-3 registrations per code: active or not, in any municipality, some codes retired to another code."""
    rows: list[RegistrationRow] = []
    for index, code in enumerate(CODES):
        places = draw(st.lists(st.sampled_from(MUNICIPALITIES), max_size=3, unique=True))
        for place in places:
            state = draw(st.sampled_from(("active", "deleted", "retired")))
            successor = CODES[(index + draw(st.integers(1, 3))) % len(CODES)] if state == "retired" else ""
            rows.append(
                (
                    code,
                    place,
                    state == "active",
                    draw(st.sampled_from((1, 2, 6, 8, 10, 13))),
                    "2020-04-01",
                    draw(st.integers(1_600_000_000_000_000, 1_700_000_000_000_000)),
                    draw(st.integers(1, 1000)),
                    successor,
                    draw(st.sampled_from(("山田 太郎", "佐藤\u3000花子", "Smith John"))),
                    draw(st.sampled_from(("", "スミス"))),
                    "1980-02-29",
                    draw(st.sampled_from((1, 2))),
                    "東京都調布市小島町一丁目2番3号",
                )
            )
    return rows


def _answer(
    tx: CenterTx, fields: frozenset[str], asked: list[str | InvalidField]
) -> tuple[bytes, list[tuple[object, ...]]]:
    purpose = Purpose("check", "確認", fields)
    agency = Agency("pension", "年金機構", {purpose.id: purpose})
    items = bulk_lookup(tx, agency=agency, purpose=purpose, codes=asked, call=CALL, now=NOW)
    raw = [c if isinstance(c, str) else "bad" for c in asked]
    response = _bulk_response(raw, fields, items).SerializeToString(deterministic=True)
    provisions = tx.conn.execute(text("SELECT resident_code, fields, channel FROM provision_log ORDER BY id"))
    accesses = tx.conn.execute(text("SELECT subjects, outcome FROM access_log ORDER BY id"))
    return response, [tuple(row) for row in (*provisions, *accesses)]


def _events_for(rows: list[RegistrationRow]) -> list[EventRow]:
    """One recorded event per registration, so that a purpose with history has something to show."""
    return [
        EventRow(r[1], n, r[0], "", r[3], r[4], r[5], r[8], r[9], r[10], r[11], r[12]) for n, r in enumerate(rows, 1)
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=registrations(), fields=st.sampled_from(FIELD_SETS_WITH_HISTORY), data=st.data())
def test_the_row_shortcut_answers_as_the_domain_path_does(
    engine: Engine, rows: list[RegistrationRow], fields: frozenset[str], data: st.DataObject
) -> None:
    asked: list[str | InvalidField] = data.draw(
        st.lists(st.sampled_from([*CODES, InvalidField("resident_code", "bad")]), min_size=1, max_size=20)
    )
    answers = []
    for enabled in (True, False):
        with rolled_back(engine) as conn, _shortcut(enabled):
            tx = CenterTx(conn)
            tx.upsert_registration_rows(rows)
            tx.insert_event_rows(_events_for(rows))
            answers.append(_answer(tx, fields, asked))
    assert answers[0] == answers[1]


def _unary_answers(
    tx: CenterTx, asked: list[tuple[str, frozenset[str]]]
) -> tuple[list[bytes], list[tuple[object, ...]]]:
    """One group of unary lookups, as the servicer answers and logs them."""
    purposes = {fields: Purpose(f"p{n}", "確認", fields) for n, fields in enumerate(FIELD_SETS_WITH_HISTORY)}
    agency = Agency("pension", "年金機構", {p.id: p for p in purposes.values()})
    requests = [LookupRequest(agency, purposes[fields], code, CALL, NOW) for code, fields in asked]
    results = look_up(tx, requests)
    log_lookups(tx, requests, results)
    answers = []
    for request, result in zip(requests, results, strict=True):
        record = provision_pb2.ProvidedRecord()
        if isinstance(result, Exception):
            answers.append(type(result).__name__.encode())
            continue
        fill_looked(record, result, request.purpose.fields)
        answers.append(record.SerializeToString(deterministic=True))
    provisions = tx.conn.execute(text("SELECT resident_code, fields, channel FROM provision_log ORDER BY id"))
    accesses = tx.conn.execute(text("SELECT subjects, outcome FROM access_log ORDER BY id"))
    return answers, [tuple(row) for row in (*provisions, *accesses)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=registrations(), data=st.data())
def test_unary_lookups_answer_from_rows_as_the_domain_path_does(
    engine: Engine, rows: list[RegistrationRow], data: st.DataObject
) -> None:
    """A group mixes purposes with and without history, and may ask for the same code under both."""
    asked = data.draw(
        st.lists(st.tuples(st.sampled_from(CODES), st.sampled_from(FIELD_SETS_WITH_HISTORY)), min_size=1, max_size=12)
    )
    events = _events_for(rows)
    answers = []
    for enabled in (True, False):
        with rolled_back(engine) as conn, _shortcut(enabled):
            tx = CenterTx(conn)
            tx.upsert_registration_rows(rows)
            tx.insert_event_rows(events)
            answers.append(_unary_answers(tx, asked))
    assert answers[0] == answers[1]


def test_the_shortcut_is_taken_for_a_single_active_registration_only(engine: Engine) -> None:
    active, deleted, moved = CODES[0], CODES[1], CODES[2]
    stored: list[RegistrationRow] = [
        (active, "132080", True, 1, "2020-04-01", 1, 1, "", "山田 太郎", "", "1980-02-29", 1, "東京都"),
        (deleted, "132080", False, 8, "2020-04-01", 2, 2, "", "佐藤 花子", "", "1970-01-01", 2, "東京都"),
        (moved, "132080", False, 6, "2020-04-01", 3, 3, "", "鈴木 一郎", "", "1960-01-01", 1, "東京都"),
        (moved, "132187", True, 2, "2020-05-01", 4, 1, "", "鈴木 一郎", "", "1960-01-01", 1, "東京都"),
    ]
    purpose = Purpose("check", "確認", FIELD_SETS[0])
    agency = Agency("pension", "年金機構", {purpose.id: purpose})
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        tx.upsert_registration_rows(stored)
        items = bulk_lookup(tx, agency=agency, purpose=purpose, codes=[active, deleted, moved], call=CALL, now=NOW)
    assert [item.row is not None for item in items] == [True, False, False]
    assert items[2].provided is not None
    assert items[2].provided.record.holder == "132187"


_SELECT_ALL = f"SELECT {', '.join(REGISTRATION_COLUMNS)} FROM registration"  # noqa: S608 - constant names


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(AWKWARD_TEXT, min_size=3, max_size=3),
    numbers=st.lists(st.integers(0, 2**62), min_size=2, max_size=2),
)
def test_registration_rows_come_back_exactly_as_stored(engine: Engine, texts: list[str], numbers: list[int]) -> None:
    """On SQLite registration_rows_of reads the rows packed in one JSON value (see SqlTx._registration_rows):
    every text and integer must come back exactly, as the driver's own rows bring them."""
    name, alias, address = texts
    stored: RegistrationRow = (
        CODES[0], "132080", True, 2, "2020-04-01", numbers[0], numbers[1], CODES[2], name, alias,
        "1980-02-29", 1, address,
    )  # fmt: skip
    other: RegistrationRow = (CODES[0], "012084", False, 10, "2019-01-01", 1, 2, "", "x", "", "1970-01-01", 2, "y")
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        tx.upsert_registration_rows([stored, other])
        found = tx.registration_rows_of([CODES[0], CODES[1]])
        plain = [tuple(row) for row in conn.execute(text(_SELECT_ALL))]
    assert sorted(found) == [CODES[0]]
    assert sorted(found[CODES[0]], key=lambda r: r[1]) == sorted(plain, key=lambda r: r[1])
    by_place = {row[1]: row for row in found[CODES[0]]}
    assert by_place["132080"][8:10] == (name, alias)
    assert by_place["132080"][12] == address
    assert by_place["132080"][5:7] == tuple(numbers)
    assert by_place["132080"][2]
    assert not by_place["012084"][2]
