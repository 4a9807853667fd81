"""`jukinet agency lookup` and `jukinet disclose` against a real in-process center over mTLS."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from jukinet.codes import resident_code_from_body
from jukinet.rpc.runtime import RunningNode
from jukinet.storage.schema import feed_subscription
from jukinet.wire.v1 import relay_pb2, relay_pb2_grpc
from tests.helpers.nodes import AGENCIES, channel, event, eventually, jukinet, start
from tests.integration.test_disclosure import ALICE, ALICE_NEW, BENEFIT, OPERATOR, PENSION, PROOF, seed

AGENCY = "jukinet://agency/pension"


@pytest.fixture
async def center(pki_dir: Path, tmp_path: Path) -> AsyncIterator[RunningNode]:
    node = await start("center", "", f"sqlite:///{tmp_path / 'c.db'}", pki_dir, agencies=AGENCIES)
    try:
        await seed(node, pki_dir)
        yield node
    finally:
        await node.stop()


async def _agency_lookup(
    node: RunningNode, pki_dir: Path, code: str, purpose: str, *extra: str
) -> tuple[int, str, str]:
    return await jukinet(
        "agency",
        "lookup",
        code,
        "--purpose",
        purpose,
        "--node",
        node.address,
        "--pki-dir",
        str(pki_dir),
        "--as",
        AGENCY,
        *extra,
    )


async def _disclose(node: RunningNode, pki_dir: Path, code: str, *extra: str) -> tuple[int, str, str]:
    return await jukinet("disclose", code, "--node", node.address, "--pki-dir", str(pki_dir), "--as", OPERATOR, *extra)


async def test_agency_lookup_prints_the_provided_record(center: RunningNode, pki_dir: Path) -> None:
    code, out, err = await _agency_lookup(center, pki_dir, ALICE, PROOF[0], "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record == {
        "resident_code": ALICE_NEW,
        "status": "active",
        "municipality_code": "132080",
        "items": {"address": "東京都調布市小島町1番", "birth_date": "1980-04-01", "name": "山田\u3000太郎"},
        "provided_fields": ["address", "birth_date", "name"],
    }
    code, out, err = await _agency_lookup(center, pki_dir, ALICE_NEW, BENEFIT[0])
    assert code == 0, err
    assert ALICE_NEW in out
    assert "code_change" in out


async def test_agency_lookup_for_a_purpose_not_granted_exits_1(center: RunningNode, pki_dir: Path) -> None:
    code, out, err = await _agency_lookup(center, pki_dir, ALICE_NEW, "passport-issue", "--json")
    assert code == 1
    assert out == ""
    assert err.startswith("PERMISSION_DENIED: ")
    assert "passport-issue" in err


async def test_disclose_lists_the_provisions(center: RunningNode, pki_dir: Path) -> None:
    for purpose in (PROOF[0], BENEFIT[0]):
        code, _, err = await _agency_lookup(center, pki_dir, ALICE_NEW, purpose, "--json")
        assert code == 0, err
    code, out, err = await _disclose(center, pki_dir, ALICE, "--json")
    assert code == 0, err
    disclosed = json.loads(out)
    assert disclosed["record"]["resident_code"] == ALICE_NEW
    assert [h["reason"] for h in disclosed["record"]["history"]] == ["ex_officio_record", "code_change"]
    assert [(p["agency_name"], p["purpose"], p["fields"], p["channel"]) for p in disclosed["provisions"]] == [
        (PENSION, PROOF[0], PROOF[2], "lookup"),
        (PENSION, BENEFIT[0], BENEFIT[2], "lookup"),
    ]
    assert all(p["time"].endswith("+09:00") for p in disclosed["provisions"])

    code, out, err = await _disclose(center, pki_dir, ALICE_NEW, "--to", "2026-01-01")
    assert code == 0, err
    assert f"本人確認情報 of {ALICE_NEW}" in out
    assert "lookup" not in out  # the provisions table has no rows

    code, _, err = await _disclose(center, pki_dir, ALICE_NEW, "--from", "yesterday")
    assert code == 1
    assert err.startswith("INVALID_ARGUMENT: from_date")


def _common(node: RunningNode, pki_dir: Path) -> list[str]:
    return ["--node", node.address, "--pki-dir", str(pki_dir), "--as", AGENCY]


async def test_agency_search_bulk_and_follow_print_json(center: RunningNode, pki_dir: Path, tmp_path: Path) -> None:
    code, out, err = await jukinet(
        "agency", "search", "--name", "山田 太郎", "--birth-date", "1980-04-01", "--sex", "male",
        "--purpose", BENEFIT[0], *_common(center, pki_dir), "--json",
    )  # fmt: skip
    assert code == 0, err
    found = json.loads(out)
    assert ALICE_NEW in {r["resident_code"] for r in found}

    codes = tmp_path / "codes.txt"
    codes.write_text(f"{ALICE}\n12345678904\n", encoding="utf-8")
    code, out, err = await jukinet("agency", "bulk", str(codes), "--purpose", BENEFIT[0], *_common(center, pki_dir))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["status_code"] for line in lines] == [0, 3]
    assert lines[0]["record"]["resident_code"] == ALICE_NEW
    assert "1 found, 1 refused of 2" in err

    follow = asyncio.create_task(
        jukinet("agency", "follow", "--purpose", PROOF[0], "--limit", "1", *_common(center, pki_dir))
    )
    # the first call creates the subscription (the feed holds what comes after it); then a change arrives
    await eventually(
        lambda: center.ctx.store.read(lambda c: c.execute(select(func.count()).select_from(feed_subscription)).scalar())
    )
    async with channel(pki_dir, "jukinet://prefecture/13", center.address) as ch:
        call = relay_pb2_grpc.RelayServiceStub(ch).PushEvents(
            iter(
                [relay_pb2.PushEventsRequest(origin="132080", events=[event(5, resident_code_from_body("7000000007"))])]
            )
        )
        assert [r.acked_seq async for r in call] == [5]
    code, out, err = await follow
    assert code == 0, err
    item = json.loads(out.splitlines()[0])
    assert item["seq"] == 1
    assert item["record"]["provided_fields"] == ["address", "birth_date", "name"]
    assert item["change"]["resident_code"] == resident_code_from_body("7000000007")
