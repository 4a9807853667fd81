"""Emergency cut-off of a prefecture in the middle of a 10,000-change stream: peers see UNAVAILABLE and keep
their outboxes; after resume nothing is lost or doubled (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from jukinet.cli.register_client import is_ok, record_batches
from jukinet.storage import queries
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc, register_pb2_grpc, relay_pb2, relay_pb2_grpc
from tests.helpers.nodes import change, channel, eventually, start

TOTAL = 10_000
CREATES = 150
BATCH = 500
OPERATOR = "jukinet://operator/prefecture-13/t"


async def test_cut_off_mid_stream_then_resume_loses_and_doubles_nothing(
    pki_dir: Path, db_factory: Callable[[str], str], tmp_path: Path
) -> None:
    center = await start("center", "", db_factory("center"), pki_dir)
    prefecture = await start("prefecture", "13", db_factory("prefecture"), pki_dir, upstream=center.address)
    municipality = await start(
        "municipality", "132080", f"sqlite:///{tmp_path / 'm.db'}", pki_dir, upstream=prefecture.address
    )
    try:
        await eventually(lambda: municipality.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
        admin_ch = channel(pki_dir, OPERATOR, prefecture.address)
        admin = admin_pb2_grpc.AdminServiceStub(admin_ch)
        codes: list[str] = []
        progress = [0]

        async def push() -> None:
            async with channel(pki_dir, "jukinet://register/132080", municipality.address) as ch:
                stub = register_pb2_grpc.RegisterServiceStub(ch)
                creates = [change(f"c{i}", 5) for i in range(CREATES)]  # within the first pool of 200 codes
                async for results in record_batches(stub, [creates]):
                    assert all(is_ok(r) for r in results)
                    codes.extend(r.resident_code for r in results)
                    progress[0] += len(results)
                moves = [
                    change(f"m{i}", 10, codes[i % CREATES], address=f"東京都調布市{i}番")
                    for i in range(TOTAL - CREATES)
                ]
                for i in range(0, len(moves), BATCH):
                    async for results in record_batches(stub, [moves[i : i + BATCH]]):
                        assert all(is_ok(r) for r in results), "the municipality keeps accepting during a cut-off"
                        progress[0] += len(results)
                    await asyncio.sleep(0.02)

        pusher = asyncio.create_task(push())
        await eventually(lambda: progress[0] >= 3000 or pusher.done(), timeout=60)
        if pusher.done():
            await pusher  # surface the pusher's failure
        started = time.monotonic()
        assert (await admin.CutOff(admin_pb2.CutOffRequest(reason="drill"), timeout=5)).cut_off
        # within a second nothing crosses the prefecture's links, in either direction
        await asyncio.sleep(1.0)
        held = await center.ctx.store.read(lambda c: queries.digest(c, "132080"))
        async with channel(pki_dir, "jukinet://municipality/132080", prefecture.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await relay_pb2_grpc.RelayServiceStub(ch).GetCursors(
                    relay_pb2.GetCursorsRequest(origins=["132080"]), timeout=5
                )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cut off" in (caught.value.details() or "")
        await eventually(lambda: progress[0] >= 7000 or pusher.done(), timeout=60)
        still = await center.ctx.store.read(lambda c: queries.digest(c, "132080"))
        assert still.head_seq == held.head_seq, "the center received nothing while the prefecture was cut off"
        status = await admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        assert status.cut_off
        assert time.monotonic() - started < 60

        assert not (await admin.Resume(admin_pb2.ResumeRequest(), timeout=5)).cut_off
        await pusher

        async def drained() -> bool:
            truth = await municipality.ctx.store.read(lambda c: queries.digest(c, "132080"))
            got = await center.ctx.store.read(lambda c: queries.digest(c, "132080"))
            return truth.head_seq == TOTAL and (got.head_seq, got.sha256) == (truth.head_seq, truth.sha256)

        await eventually(drained, timeout=120)
        counts = await center.ctx.store.read(queries.counts)
        assert counts.events == TOTAL
        log = await prefecture.ctx.store.read(lambda c: queries.access_page(c, before_id=None, limit=5000))
        assert any(e.method.endswith("CutOff") and e.peer == OPERATOR for _, e in log)
        assert any(e.outcome == "UNAVAILABLE" for _, e in log)
        await admin_ch.close(None)
    finally:
        for node in (municipality, prefecture, center):
            await node.stop()
