"""Hostile values, hypothesis strategies and raw wire encodings for tests/fuzz.

Strategies start from a valid message and replace some fields with hostile values, so that a generated
request gets past the first check often enough to reach the deeper paths (storage, relay, provision)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from hypothesis import strategies as st

from jukinet.codes import resident_code_from_body
from jukinet.wire.v1 import register_pb2, types_pb2

T = TypeVar("T")

# Refusals by rule; anything else (INTERNAL, UNKNOWN, UNAVAILABLE after a dropped connection, ...) is a bug.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,  # a request id reused for another change
    }
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MEGABYTE = "x" * (1 << 20)

SQL = [
    "Robert'); DROP TABLE event;--",
    "' OR '1'='1",
    '"; DELETE FROM registration; --',
    "1; DROP TABLE access_log",
    "%",
    "_%_",
    "\\",
    "山田'--",
]
DATES = [
    "0000-00-00",
    "2100-02-29",
    "1980-02-30",
    "1980-13-01",
    "1849-12-31",
    "9999-12-31",
    "1980-4-1",
    "１９８０-０４-０１",
    "١٩٨٠-٠٤-٠١",
    "1980-04-01\n",
    "1980-04-01T00:00:00",
    "-001-01-01",
    "",
]
CONTROL = [
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\u202e",
    "\ufeff",
    "\u200b",
    "\r\n",
    "\x7f",
    "\ue000",
    "\U000e0001",
    "\U0010ffff",
    "\u2028",
    " leading",
    "trailing\u3000",
]
LONG = ["x" * 101, "名" * 201, "x" * 65, MEGABYTE]
EXPANDING = ["ß" * 100, "\ufdfa" * 100, "㍻" * 100]  # NFKC/casefold make their search keys longer
DIGITS = ["²" * 11, "١" * 11, "9" * 19, "9" * 20, "-1", "0x10", "1e9", "00000000000"]
POOL = [*SQL, *DATES, *CONTROL, *LONG, *EXPANDING, *DIGITS]

ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
hostile_text = st.one_of(st.text(max_size=40), ascii_text, st.sampled_from(POOL))
hostile_int32 = st.one_of(st.integers(*INT32), st.sampled_from([*INT32, -1, 0, 1, 15, 99]))
hostile_int64 = st.one_of(st.integers(*INT64), st.sampled_from([*INT64, -1, 0, 1, 2**31, 2**53 + 1]))
hostile_date = st.one_of(st.sampled_from(DATES), hostile_text)
# Sizes for repeated fields: at and past the 5,000-per-message limits, 10,000 (the relay limit) and past it.
big_count = st.sampled_from([5000, 5001, 6000, 10_000, 10_001])


def code(body: int) -> str:
    return resident_code_from_body(f"{body:010d}")


SEEDED = [code(3000000000 + i) for i in range(1, 4)]  # recorded by the fixture at municipality 132080
UNKNOWN_CODES = [code(9000000000 + i) for i in range(1, 4)]  # never recorded anywhere
RELAYED_CODES = [code(7000000000 + i) for i in range(1, 4)]  # what the fuzzed relay batches carry
VALID_NAME = "山田\u3000太郎"
VALID_ADDRESS = "東京都調布市小島町2丁目35番1号"
PURPOSES = ["pension-benefit", "pension-proof-of-life", "passport-issue", ""]


def maybe(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Valid three times in four (for messages of one or two fields); shrinks towards the valid value."""
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 3 else valid)


resident_codes = st.one_of(st.sampled_from([*SEEDED, *UNKNOWN_CODES]), hostile_text)
purposes = maybe(
    st.sampled_from(["pension-benefit", "pension-proof-of-life"]),
    st.one_of(st.sampled_from(["passport-issue", ""]), hostile_text),
)


@st.composite
def mutated(
    draw: st.DrawFn, fields: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]
) -> dict[str, Any]:
    """Field values from (valid, hostile) pairs: a valid message with none, one or two hostile fields, so
    that a request reaches the deeper checks and storage as often as it is refused at the edge."""
    names = sorted(fields)
    hostile = draw(st.sets(st.sampled_from(names), max_size=draw(st.sampled_from([0, 1, 1, 2]))))
    return {name: draw(fields[name][1] if name in hostile else fields[name][0]) for name in names}


def _size(value: object) -> int:
    return value.ByteSize() if isinstance(value, Message) else len(str(value))


def repeated(values: Sequence[T], size: int, default: T) -> list[T]:
    """The small ones of `values` (or `default`) cycled to `size` elements: 10,000-element fields without
    generating 10,000 values, and without 10,000 copies of a 1 MB string."""
    small = [v for v in values if _size(v) <= 2048] or [default]
    return [small[i % len(small)] for i in range(size)]


ITEM_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "name": (st.sampled_from([VALID_NAME, *SQL[:4], "Ｙａｍａｄａ　ﾀﾛｳ"]), hostile_text),
    "alias": (st.sampled_from(["", "ヤマダ"]), hostile_text),
    "birth_date": (st.sampled_from(["1980-04-01", "2024-02-29"]), hostile_date),
    "sex": (st.sampled_from([1, 2]), hostile_int32),
    "address": (st.just(VALID_ADDRESS), hostile_text),
    "has_items": (st.just(True), st.just(False)),
}


def _items(values: dict[str, Any]) -> types_pb2.IdentityItems:
    return types_pb2.IdentityItems(
        name=values["name"],
        alias=values["alias"],
        birth_date=values["birth_date"],
        sex=values["sex"],
        address=values["address"],
    )


_CHANGE_TEMPLATES = [(5, ""), (10, SEEDED[0]), (11, SEEDED[1]), (14, SEEDED[2])]  # record (new code), corrections


@st.composite
def register_changes(draw: st.DrawFn) -> register_pb2.RegisterChange:
    """A change from the register system: an ex-officio record (the node assigns a code) or a correction
    of a seeded resident, with up to two hostile fields."""
    template = draw(st.sampled_from(_CHANGE_TEMPLATES))
    values = draw(
        mutated(
            {
                **ITEM_FIELDS,
                "request_id": (st.uuids().map(lambda u: u.hex), st.one_of(hostile_text, st.just("seed-0"))),
                "reason": (st.just(template[0]), hostile_int32),
                "resident_code": (st.just(template[1]), resident_codes),
                "effective_date": (st.sampled_from(["2026-11-01", "1980-04-01"]), hostile_date),
            }
        )
    )
    pb = register_pb2.RegisterChange(
        request_id=values["request_id"],
        reason=values["reason"],
        resident_code=values["resident_code"],
        effective_date=values["effective_date"],
    )
    if values["has_items"]:
        pb.items.CopyFrom(_items(values))
    return pb


_NOV_1 = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())


@st.composite
def change_events(draw: st.DrawFn, seq: int) -> types_pb2.ChangeEvent:
    """A relayed event continuing the receiver's cursor (seq), with up to two hostile fields."""
    values = draw(
        mutated(
            {
                **ITEM_FIELDS,
                "seq": (st.just(seq), st.one_of(hostile_int64, st.sampled_from([seq - 1, seq + 1]))),
                "resident_code": (st.sampled_from(RELAYED_CODES), resident_codes),
                "previous_code": (st.just(""), resident_codes),
                "reason": (st.sampled_from([5, 10, 14]), st.one_of(hostile_int32, st.just(13))),
                "effective_date": (st.just("2026-11-01"), hostile_date),
                "seconds": (st.just(_NOV_1), hostile_int64),
                "nanos": (st.just(0), hostile_int32),
                "has_time": (st.just(True), st.just(False)),
            }
        )
    )
    pb = types_pb2.ChangeEvent(
        seq=values["seq"],
        resident_code=values["resident_code"],
        previous_code=values["previous_code"],
        reason=values["reason"],
        effective_date=values["effective_date"],
    )
    if values["has_items"]:
        pb.items.CopyFrom(_items(values))
    if values["has_time"]:
        pb.recorded_time.seconds = values["seconds"]
        pb.recorded_time.nanos = values["nanos"]
    return pb


# -- raw wire bytes (what protobuf itself would never encode) ------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


INVALID_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80"]
