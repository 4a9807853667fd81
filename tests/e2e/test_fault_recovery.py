"""10,000+ changes flow while a tier is killed with SIGKILL and restarted: afterwards the center holds
exactly the municipality's truth — no change lost, none applied twice."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jukinet.cli.demo import Operator
from jukinet.cli.netctl import CENTER, LocalNetwork
from jukinet.cli.register_client import is_ok, record_batches
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import slug
from jukinet.wire.v1 import register_pb2_grpc
from tests.helpers.nodes import change, channel

CREATES = 4000
MOVES = 8000
BATCH = 500
PREFECTURE = NodeId(Role.PREFECTURE, "13")
MUNICIPALITY = NodeId(Role.MUNICIPALITY, "132080")


def _net(root: Path, db_factory: Callable[[str], str]) -> LocalNetwork:
    net = LocalNetwork(
        root,
        database_url={"center": db_factory("center"), "prefecture-13": db_factory("prefecture")},
        extra_config="\n[codepool]\nrefill_below = 5000\nblock_size = 10000\n",
    )
    net.prepare_pki([CENTER, PREFECTURE, MUNICIPALITY])
    center = net.start(CENTER)
    prefecture = net.start(PREFECTURE, upstream=center.listen)
    net.start(MUNICIPALITY, upstream=prefecture.listen)
    return net


async def _push_all(net: LocalNetwork, progress: list[int]) -> int:
    muni = net.nodes[slug(MUNICIPALITY)]
    accepted = 0
    codes: list[str] = []
    async with channel(net.pki_dir, "jukinet://register/132080", muni.listen) as ch:
        stub = register_pb2_grpc.RegisterServiceStub(ch)
        creates = [change(f"c{i}", 5, name=f"住民\u3000{i}") for i in range(CREATES)]
        batches = [creates[i : i + BATCH] for i in range(0, CREATES, BATCH)]
        async for results in record_batches(stub, batches, window=2):
            assert all(is_ok(r) for r in results), [r.message for r in results if not is_ok(r)][:3]
            codes += [r.resident_code for r in results]
            accepted += len(results)
            progress[0] = accepted
        moves = [
            change(f"m{i}", 10, codes[i % CREATES], address=f"東京都調布市小島町{i}番", effective="2026-11-02")
            for i in range(MOVES)
        ]
        batches = [moves[i : i + BATCH] for i in range(0, MOVES, BATCH)]
        async for results in record_batches(stub, batches, window=2):
            assert all(is_ok(r) for r in results), [r.message for r in results if not is_ok(r)][:3]
            accepted += len(results)
            progress[0] = accepted
            await asyncio.sleep(0.05)  # keep the flow going across the kill and restart
    return accepted


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["prefecture-13", "center"])
async def test_sigkill_and_restart_lose_and_double_nothing(
    victim: str, tmp_path: Path, db_factory: Callable[[str], str]
) -> None:
    net = _net(tmp_path / "net", db_factory)
    op = Operator(net)
    try:
        muni = net.nodes[slug(MUNICIPALITY)]
        deadline = time.monotonic() + 60
        while (await op.status(muni)).free_codes < CREATES:
            assert time.monotonic() < deadline, "the municipality got no code pool"
            await asyncio.sleep(0.2)
        progress = [0]
        pusher = asyncio.create_task(_push_all(net, progress))
        while progress[0] < 3000:
            await asyncio.sleep(0.05)
        net.kill(victim)  # SIGKILL in the middle of the flow
        await asyncio.sleep(1.5)
        while progress[0] < 7000 and not pusher.done():
            await asyncio.sleep(0.05)
        net.restart(victim)
        assert await pusher == CREATES + MOVES

        center = net.nodes["center"]
        deadline = time.monotonic() + 180
        while True:
            truth = await op.digest(muni, "132080")
            held = await op.digest(center, "132080")
            if (held.head_seq, held.digest) == (truth.head_seq, truth.digest) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert truth.head_seq == CREATES + MOVES
        assert (held.head_seq, held.registration_count, held.digest) == (
            truth.head_seq,
            truth.registration_count,
            truth.digest,
        )
        status = await op.status(center)
        assert status.event_count == CREATES + MOVES  # (origin, seq) is unique: nothing applied twice
        prefecture = await op.status(net.nodes["prefecture-13"])
        assert prefecture.event_count == CREATES + MOVES
    finally:
        net.stop_all()
