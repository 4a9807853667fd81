"""Center operators disclose a resident's record and every provision of their data; the call is logged."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest
from sqlalchemy import func, select

from jukinet.codes import resident_code_from_body
from jukinet.rpc import authz
from jukinet.rpc.runtime import RunningNode
from jukinet.services.ports import ProvisionEntry
from jukinet.storage import SqlTx, queries
from jukinet.storage.schema import provision_log
from jukinet.wire.v1 import (
    disclosure_pb2,
    disclosure_pb2_grpc,
    provision_pb2,
    provision_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
    types_pb2,
)
from tests.helpers.nodes import AGENCIES, channel, event, start

R = types_pb2
JST = ZoneInfo("Asia/Tokyo")
ALICE = resident_code_from_body("3000000003")
ALICE_NEW = resident_code_from_body("4000000004")
BOB = resident_code_from_body("5000000005")
OPERATOR = "jukinet://operator/center/t"
PENSION = "日本年金機構 (national pension)"
BENEFIT = (
    "pension-benefit",
    "年金給付の支給 (paying pensions)",
    ["address", "alias", "birth_date", "history", "name", "sex"],
)
PROOF = ("pension-proof-of-life", "受給権者の生存確認 (replaces 現況届)", ["address", "birth_date", "name"])


@dataclass
class Center:
    node: RunningNode
    pki: Path


@pytest.fixture
async def center(pki_dir: Path, db_factory: Callable[[str], str]) -> AsyncIterator[Center]:
    node = await start("center", "", db_factory("center"), pki_dir, agencies=AGENCIES)
    try:
        await seed(node, pki_dir)
        yield Center(node, pki_dir)
    finally:
        await node.stop()


async def seed(node: RunningNode, pki_dir: Path) -> None:
    """Alice (whose code changed to ALICE_NEW) and Bob (who died), pushed by prefecture 13."""
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


async def _lookup(c: Center, purpose: str, code: str) -> provision_pb2.ProvidedRecord:
    async with channel(c.pki, "jukinet://agency/pension", c.node.address) as ch:
        reply = await provision_pb2_grpc.ProvisionServiceStub(ch).LookupResident(
            provision_pb2.LookupResidentRequest(purpose=purpose, resident_code=code), timeout=10
        )
        return reply.record


async def _disclose(
    c: Center, code: str, who: str = OPERATOR, **request: str | int
) -> disclosure_pb2.DiscloseResidentResponse:
    async with channel(c.pki, who, c.node.address) as ch:
        stub: disclosure_pb2_grpc.DisclosureServiceAsyncStub = disclosure_pb2_grpc.DisclosureServiceStub(ch)
        return await stub.DiscloseResident(
            disclosure_pb2.DiscloseResidentRequest(resident_code=code, **request),  # type: ignore[arg-type]
            timeout=10,
        )


def _listed(reply: disclosure_pb2.DiscloseResidentResponse) -> list[tuple[object, ...]]:
    return [
        (p.agency, p.agency_name, p.purpose, p.purpose_name, list(p.fields), p.channel, p.resident_code)
        for p in reply.provisions
    ]


def _expected(*purposes: tuple[str, str, list[str]], code: str = ALICE_NEW) -> list[tuple[object, ...]]:
    return [("pension", PENSION, pid, name, fields, "lookup", code) for pid, name, fields in purposes]


async def test_disclosure_lists_exactly_the_provisions_made_oldest_first(center: Center) -> None:
    await _lookup(center, PROOF[0], ALICE_NEW)
    await _lookup(center, BENEFIT[0], ALICE_NEW)
    await _lookup(center, PROOF[0], BOB)  # someone else's: never listed
    await _lookup(center, BENEFIT[0], ALICE_NEW)

    reply = await _disclose(center, ALICE_NEW)

    assert _listed(reply) == _expected(PROOF, BENEFIT, BENEFIT)
    times = [p.time.ToDatetime() for p in reply.provisions]
    assert times == sorted(times)
    assert reply.next_page_token == ""
    record = reply.record
    assert (record.resident_code, record.status) == (ALICE_NEW, provision_pb2.RESIDENT_STATUS_ACTIVE)
    assert (record.items.name, record.items.sex) == ("山田\u3000太郎", R.SEX_MALE)
    assert record.items.address == "東京都調布市小島町1番"
    assert list(record.provided_fields) == sorted(BENEFIT[2])
    # the full history, also what was recorded under the retired code
    assert [(h.reason, h.resident_code, h.previous_code) for h in record.history] == [
        (R.CHANGE_REASON_EX_OFFICIO_RECORD, ALICE, ""),
        (R.CHANGE_REASON_CODE_CHANGE, ALICE_NEW, ALICE),
    ]
    # a disclosure provides nothing to anyone
    count = await center.node.ctx.store.read(
        lambda c: c.execute(select(func.count()).select_from(provision_log)).scalar()
    )
    assert count == 4


async def test_provisions_are_paginated_and_windowed_by_jst_dates(center: Center) -> None:
    for purpose in (PROOF, BENEFIT, PROOF):
        await _lookup(center, purpose[0], ALICE_NEW)
    first = await _disclose(center, ALICE_NEW, page_size=2)
    assert _listed(first) == _expected(PROOF, BENEFIT)
    assert first.next_page_token
    second = await _disclose(center, ALICE_NEW, page_size=2, page_token=first.next_page_token)
    assert _listed(second) == _expected(PROOF)
    assert second.next_page_token == ""

    today = dt.datetime.now(JST).date()
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    before = await _disclose(center, ALICE_NEW, from_date="2026-01-01", to_date=yesterday)
    assert list(before.provisions) == []
    assert before.record.resident_code == ALICE_NEW
    since = await _disclose(center, ALICE_NEW, from_date=yesterday)
    assert len(since.provisions) == 3


async def test_a_retired_code_discloses_provisions_under_every_code_of_the_chain(center: Center) -> None:
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    entry = ProvisionEntry(earlier, "before-the-change", "pension", PROOF[0], ALICE, tuple(PROOF[2]))
    await center.node.ctx.store.write(lambda c: SqlTx(c).append_provisions([entry]))
    await _lookup(center, BENEFIT[0], ALICE)  # provided (and logged) under the current code

    for code in (ALICE, ALICE_NEW):
        reply = await _disclose(center, code)
        assert reply.record.resident_code == ALICE_NEW
        assert _listed(reply) == _expected(PROOF, code=ALICE) + _expected(BENEFIT)


async def test_the_disclosure_itself_is_access_logged(center: Center) -> None:
    await _disclose(center, ALICE)
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=1))
    latest = log[0][1]
    assert (latest.peer, latest.method, latest.outcome) == (OPERATOR, authz.DISCLOSE_RESIDENT, "OK")
    assert latest.subjects == (ALICE, ALICE_NEW)
    about = await center.node.ctx.store.read(
        lambda c: queries.access_page(c, before_id=None, limit=10, resident_code=ALICE_NEW)
    )
    assert about[0][1].method == authz.DISCLOSE_RESIDENT  # newest first; the relay's push comes before


@pytest.mark.parametrize(
    ("who", "code", "fields", "status"),
    [
        ("jukinet://agency/pension", ALICE_NEW, {}, grpc.StatusCode.PERMISSION_DENIED),
        ("jukinet://prefecture/13", ALICE_NEW, {}, grpc.StatusCode.PERMISSION_DENIED),
        ("jukinet://operator/prefecture-13/t", ALICE_NEW, {}, grpc.StatusCode.PERMISSION_DENIED),
        (OPERATOR, "12345678904", {}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, "", {}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, ALICE_NEW, {"from_date": "2026-13-01"}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, ALICE_NEW, {"to_date": "2026/11/01"}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, ALICE_NEW, {"from_date": "2026-11-02", "to_date": "2026-11-01"}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, ALICE_NEW, {"page_size": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, ALICE_NEW, {"page_token": "x1"}, grpc.StatusCode.INVALID_ARGUMENT),
        (OPERATOR, resident_code_from_body("9999999999"), {}, grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_refusals_are_answered_and_logged(
    center: Center, who: str, code: str, fields: dict[str, str | int], status: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _disclose(center, code, who, **fields)
    assert caught.value.code() is status
    log = await center.node.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=1))
    latest = log[0][1]
    assert (latest.peer, latest.method, latest.outcome) == (who, authz.DISCLOSE_RESIDENT, status.name)
