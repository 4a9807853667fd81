"""Agencies look up residents at the center for a granted purpose; every answer is provision-logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import select

from jukinet.codes import resident_code_from_body
from jukinet.rpc.error_details import details_of
from jukinet.rpc.runtime import RunningNode
from jukinet.storage import queries
from jukinet.storage.schema import provision_log
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2
from tests.helpers.nodes import AGENCIES, channel, event, start

R = types_pb2
ALICE = resident_code_from_body("3000000003")
ALICE_NEW = resident_code_from_body("4000000004")
BOB = resident_code_from_body("5000000005")


@dataclass
class Center:
    node: RunningNode
    pki: Path


@pytest.fixture
async def center(pki_dir: Path, db_factory: Callable[[str], str]) -> AsyncIterator[Center]:
    node = await start("center", "", db_factory("center"), pki_dir, agencies=AGENCIES)
    try:
        async with channel(pki_dir, "jukinet://prefecture/13", node.address) as ch:
            stub = relay_pb2_grpc.RelayServiceStub(ch)
            events = [
                event(1, ALICE, address="東京都調布市小島町1番"),
                event(2, BOB, address="東京都調布市小島町2番"),
                event(3, ALICE_NEW, R.CHANGE_REASON_CODE_CHANGE, address="東京都調布市小島町1番", previous=ALICE),
                event(4, BOB, R.CHANGE_REASON_DEATH, address="東京都調布市小島町2番", effective="2026-11-03"),
            ]
            call = stub.PushEvents(iter([relay_pb2.PushEventsRequest(origin="132080", events=events)]))
            assert [r.acked_seq async for r in call] == [4]
        yield Center(node, pki_dir)
    finally:
        await node.stop()


async def _lookup(
    c: Center, purpose: str, code: str, who: str = "jukinet://agency/pension"
) -> provision_pb2.ProvidedRecord:
    async with channel(c.pki, who, c.node.address) as ch:
        reply = await provision_pb2_grpc.ProvisionServiceStub(ch).LookupResident(
            provision_pb2.LookupResidentRequest(purpose=purpose, resident_code=code), timeout=10
        )
        return reply.record


async def test_a_retired_code_answers_with_the_current_record_and_its_history(center: Center) -> None:
    record = await _lookup(center, "pension-benefit", ALICE)
    assert record.resident_code == ALICE_NEW
    assert record.status == provision_pb2.RESIDENT_STATUS_ACTIVE
    assert record.items.address == "東京都調布市小島町1番"
    assert record.municipality_code == "132080"
    assert [(h.reason, h.resident_code, h.previous_code) for h in record.history] == [
        (R.CHANGE_REASON_EX_OFFICIO_RECORD, ALICE, ""),
        (R.CHANGE_REASON_CODE_CHANGE, ALICE_NEW, ALICE),
    ]


async def test_the_current_code_answers_with_the_history_under_its_earlier_codes(center: Center) -> None:
    """Asked by the code that replaced ALICE, the history still starts under ALICE: the same person's
    history, whichever of their codes an agency holds."""
    by_new, by_old = (
        await _lookup(center, "pension-benefit", ALICE_NEW),
        await _lookup(center, "pension-benefit", ALICE),
    )
    assert [(h.reason, h.resident_code) for h in by_new.history] == [
        (R.CHANGE_REASON_EX_OFFICIO_RECORD, ALICE),
        (R.CHANGE_REASON_CODE_CHANGE, ALICE_NEW),
    ]
    assert by_new == by_old


async def test_a_purpose_receives_only_its_fields(center: Center) -> None:
    record = await _lookup(center, "pension-proof-of-life", BOB)
    assert record.status == provision_pb2.RESIDENT_STATUS_DELETED
    assert list(record.provided_fields) == ["address", "birth_date", "name"]
    assert record.items.name
    assert record.items.sex == R.SEX_UNSPECIFIED
    assert list(record.history) == []


async def test_every_answer_is_provision_logged(center: Center) -> None:
    await _lookup(center, "pension-proof-of-life", BOB)
    rows = await center.node.ctx.store.read(
        lambda c: list(c.execute(select(provision_log).order_by(provision_log.c.id)))
    )
    assert [(r.agency, r.purpose, r.resident_code, r.fields) for r in rows] == [
        ("pension", "pension-proof-of-life", BOB, "address birth_date name")
    ]


async def test_bulk_answers_with_history_as_lookups_do_and_logs_each_record(center: Center) -> None:
    """A purpose with history: each bulk result carries the same record and history as a lookup of that
    code; a bad code in between is its own INVALID_ARGUMENT; one bulk provision per record provided."""
    codes = [ALICE, BOB, "12345678904", ALICE_NEW]
    async with channel(center.pki, "jukinet://agency/pension", center.node.address) as ch:
        call = provision_pb2_grpc.ProvisionServiceStub(ch).LookupResidents(
            iter([provision_pb2.LookupResidentsRequest(purpose="pension-benefit", resident_codes=codes)])
        )
        results = [r for response in [r async for r in call] for r in response.results]
    assert [r.status_code for r in results] == [0, 0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    for code, result in zip(codes, results, strict=True):
        if result.status_code == 0:
            assert result.record == await _lookup(center, "pension-benefit", code)
    # The same whole history by the retired code and by the current one.
    assert [len(results[i].record.history) for i in (0, 1, 3)] == [2, 2, 2]
    assert results[0].record.history == results[3].record.history
    rows = await center.node.ctx.store.read(
        lambda c: list(c.execute(select(provision_log).order_by(provision_log.c.id)))
    )
    bulk = [(r.resident_code, r.purpose) for r in rows if r.channel == "bulk"]
    assert bulk == [(ALICE_NEW, "pension-benefit"), (BOB, "pension-benefit"), (ALICE_NEW, "pension-benefit")]
    assert {r.fields for r in rows if r.channel == "bulk"} == {"address alias birth_date history name sex"}
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=20))
    [bulk_entry] = [e for _, e in log if e.method.endswith("/LookupResidents")]
    assert set(bulk_entry.subjects) == {ALICE, BOB, ALICE_NEW}  # as asked, and the current code provided


@pytest.mark.parametrize(
    ("who", "purpose", "code", "status"),
    [
        ("jukinet://agency/pension", "passport-issue", ALICE_NEW, grpc.StatusCode.PERMISSION_DENIED),
        ("jukinet://agency/pension", "", ALICE_NEW, grpc.StatusCode.INVALID_ARGUMENT),
        ("jukinet://agency/pension", "pension-benefit", "12345678904", grpc.StatusCode.INVALID_ARGUMENT),
        (
            "jukinet://agency/pension",
            "pension-benefit",
            resident_code_from_body("9999999999"),
            grpc.StatusCode.NOT_FOUND,
        ),
        ("jukinet://prefecture/13", "pension-benefit", ALICE_NEW, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_refusals_are_answered_and_logged(
    center: Center, who: str, purpose: str, code: str, status: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _lookup(center, purpose, code, who)
    assert caught.value.code() is status
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=5))
    latest = log[0][1]
    assert (latest.peer, latest.outcome, latest.purpose) == (who, status.name, purpose)
    provided = await center.node.ctx.store.read(
        lambda c: list(c.execute(select(provision_log).order_by(provision_log.c.id)))
    )
    assert provided == []


@pytest.mark.parametrize(
    ("purpose", "code", "reason", "field"),
    [
        ("passport-issue", ALICE_NEW, "WRONG_PURPOSE", None),
        ("pension-benefit", "12345678904", "INVALID_FIELD", "resident_code"),
        ("pension-benefit", resident_code_from_body("9999999999"), "NOT_FOUND", None),
    ],
)
async def test_refusals_carry_machine_readable_details(
    center: Center, purpose: str, code: str, reason: str, field: str | None
) -> None:
    """google.rpc.Status in the trailer: ErrorInfo with the stable reason and the request id the access log
    holds; BadRequest naming the field for a malformed one."""
    async with channel(center.pki, "jukinet://agency/pension", center.node.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await provision_pb2_grpc.ProvisionServiceStub(ch).LookupResident(
                provision_pb2.LookupResidentRequest(purpose=purpose, resident_code=code),
                metadata=(("x-request-id", f"req-{reason}"),),
                timeout=10,
            )
    rich = details_of(caught.value.trailing_metadata())
    assert rich is not None
    assert (rich.code, rich.message) == (caught.value.code().value[0], caught.value.details())
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert [d.Unpack(info) for d in rich.details if d.Is(info.DESCRIPTOR)] == [True]
    assert (info.reason, info.domain, info.metadata["request_id"]) == (reason, "jukinet", f"req-{reason}")
    violations = [
        d.Unpack(bad) and [v.field for v in bad.field_violations] for d in rich.details if d.Is(bad.DESCRIPTOR)
    ]
    assert violations == ([[field]] if field else [])
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=5))
    assert log[0][1].request_id == f"req-{reason}"


async def test_an_undecodable_request_carries_the_same_details(center: Center) -> None:
    """Refused by the lenient parser before the servicer runs: still INVALID_FIELD naming the request, and
    access-logged under the caller's identity."""
    async with channel(center.pki, "jukinet://agency/pension", center.node.address) as ch:
        raw = ch.unary_unary(
            "/jukinet.wire.v1.ProvisionService/LookupResident",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\x02\xff\xfe", timeout=10)  # field 1 (purpose): invalid UTF-8
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    rich = details_of(caught.value.trailing_metadata())
    assert rich is not None
    assert rich.message == caught.value.details()
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert [d.Unpack(info) for d in rich.details if d.Is(info.DESCRIPTOR)] == [True]
    assert info.reason == "INVALID_FIELD"
    assert [[v.field for v in bad.field_violations] for d in rich.details if d.Unpack(bad)] == [["request"]]
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=5))
    latest = log[0][1]
    assert (latest.peer, latest.method, latest.outcome) == (
        "jukinet://agency/pension",
        "/jukinet.wire.v1.ProvisionService/LookupResident",
        "INVALID_ARGUMENT",
    )
    assert latest.request_id == info.metadata["request_id"]


async def test_concurrent_lookups_each_get_their_own_answer_and_log_entry(center: Center) -> None:
    """Concurrent calls share store jobs (WriteBatcher): each caller still gets its own record or its own
    NOT_FOUND, and each found one leaves exactly one provision entry and one access entry of its call."""
    unknown = resident_code_from_body("9999999999")
    wanted = [ALICE_NEW, unknown, BOB, ALICE] * 10
    async with channel(center.pki, "jukinet://agency/pension", center.node.address) as ch:
        stub = provision_pb2_grpc.ProvisionServiceStub(ch)

        async def one(index: int, code: str) -> str:
            try:
                reply = await stub.LookupResident(
                    provision_pb2.LookupResidentRequest(purpose="pension-proof-of-life", resident_code=code),
                    metadata=[("x-request-id", f"call-{index}")],
                    timeout=10,
                )
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return reply.record.resident_code

        answers = await asyncio.gather(*(one(i, code) for i, code in enumerate(wanted)))
    expected = {ALICE_NEW: ALICE_NEW, unknown: "NOT_FOUND", BOB: BOB, ALICE: ALICE_NEW}
    assert answers == [expected[code] for code in wanted]
    rows = await center.node.ctx.store.read(
        lambda c: list(c.execute(select(provision_log).order_by(provision_log.c.id)))
    )
    found = {f"call-{i}": expected[code] for i, code in enumerate(wanted) if code != unknown}
    assert sorted((r.request_id, r.resident_code) for r in rows) == sorted(found.items())
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=100))
    outcomes = {entry.request_id: entry.outcome for _, entry in log if entry.request_id.startswith("call-")}
    assert outcomes == {f"call-{i}": "OK" if code != unknown else "NOT_FOUND" for i, code in enumerate(wanted)}
