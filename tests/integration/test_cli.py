"""The operator and register-system commands against real in-process nodes over mTLS."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jukinet.cli.client import WRONG_SERVER_HINT
from jukinet.rpc.runtime import RunningNode
from jukinet.storage import queries
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc
from tests.helpers.nodes import channel, eventually, jukinet, start


@pytest.fixture
async def municipality(pki_dir: Path, tmp_path: Path) -> AsyncIterator[RunningNode]:
    center = await start("center", "", f"sqlite:///{tmp_path / 'c.db'}", pki_dir)
    prefecture = await start("prefecture", "13", f"sqlite:///{tmp_path / 'p.db'}", pki_dir, upstream=center.address)
    node = await start("municipality", "132080", f"sqlite:///{tmp_path / 'm.db'}", pki_dir, upstream=prefecture.address)
    try:
        await eventually(lambda: node.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
        yield node
    finally:
        for n in (node, prefecture, center):
            await n.stop()


async def test_register_import_reports_accepted_and_rejected_rows(
    municipality: RunningNode, pki_dir: Path, tmp_path: Path
) -> None:
    rows = [
        "request_id,reason,resident_code,effective_date,name,alias,birth_date,sex,address",
        "i1,EX_OFFICIO_RECORD,,2026-11-01,山田\u3000太郎,,1980-04-01,male,東京都調布市小島町2丁目35番1号",
        "i2,BIRTH,,2026-11-02,山田\u3000花子,,2026-11-02,女,東京都調布市小島町2丁目35番1号",
        "i3,INTRA_MOVE,12345678904,2026-11-02,山田\u3000次郎,,1980-04-01,male,東京都調布市1",
        "i4,NO_SUCH_REASON,,2026-11-02,山田\u3000三郎,,1980-04-01,male,東京都調布市1",
    ]
    file = tmp_path / "changes.csv"
    file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    code, _, err = await jukinet(
        "register",
        "import",
        str(file),
        "--node",
        municipality.address,
        "--pki-dir",
        str(pki_dir),
        "--municipality",
        "132080",
        "--rejects",
        str(rejects),
    )
    assert code == 3, err
    assert "accepted 2, rejected 2 of 4 rows" in err
    refused = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert {r["request_id"]: r["field"] for r in refused} == {"i3": "resident_code", "i4": "reason"}
    counts = await municipality.ctx.store.read(queries.counts)
    assert counts.events == 2


async def test_log_show_lists_entries_for_an_operator_and_refuses_others(
    municipality: RunningNode, pki_dir: Path
) -> None:
    operator = "jukinet://operator/municipality-132080/t"
    code, out, err = await jukinet(
        "log", "show", "--node", municipality.address, "--pki-dir", str(pki_dir), "--as", operator, "--json"
    )
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert any(e["method"].endswith("AllocateCodes") and e["direction"] == "made" for e in entries)
    code, _, err = await jukinet(
        "log",
        "show",
        "--node",
        municipality.address,
        "--pki-dir",
        str(pki_dir),
        "--as",
        "jukinet://operator/center/t",
    )
    assert code == 1  # the command expects the center there, and the municipality cannot prove it is
    assert "UNAVAILABLE" in err
    assert WRONG_SERVER_HINT in err


async def test_the_node_refuses_an_operator_of_another_node(municipality: RunningNode, pki_dir: Path) -> None:
    """Server side of the rule: a client that does not check the server name still gets nothing."""
    async with channel(pki_dir, "jukinet://operator/center/t", municipality.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin_pb2_grpc.AdminServiceStub(ch).ListAccessLog(admin_pb2.ListAccessLogRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not an operator of jukinet://municipality/132080" in (info.value.details() or "")


async def test_node_status_and_digest_show_what_the_node_holds(municipality: RunningNode, pki_dir: Path) -> None:
    as_viewer = ("--as", "jukinet://operator/municipality-132080/viewer")
    viewer = ("--node", municipality.address, "--pki-dir", str(pki_dir), *as_viewer)
    code, out, err = await jukinet("node", "status", *viewer, "--json")
    assert code == 0, err
    status = json.loads(out)
    counts = await municipality.ctx.store.read(queries.counts)
    assert status["node"] == "jukinet://municipality/132080"
    assert (status["events"], status["free_codes"], status["cut_off"]) == (counts.events, counts.free_codes, False)
    code, out, err = await jukinet("node", "digest", "132080", *viewer, "--json")
    assert code == 0, err
    expected = await municipality.ctx.store.read(lambda c: queries.digest(c, "132080"))
    assert json.loads(out) == {
        "municipality_code": "132080",
        "registrations": expected.count,
        "active": expected.active,
        "head_seq": expected.head_seq,
        "sha256": expected.sha256.hex(),
    }
    code, _, err = await jukinet("node", "digest", "13208", *viewer)
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "municipality_code" in err
