"""In-process nodes (real grpc.aio servers, real TLS, real databases) and client helpers."""

import asyncio
import contextlib
import datetime as dt
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from center import bootstrap as center_bootstrap
from jukinet.config import NodeConfig
from jukinet.domain.identity import NodeId
from jukinet.pki import SECURE_CHANNEL_OPTIONS, channel_credentials, paths_for
from jukinet.rpc.runtime import RunningNode, start_node
from jukinet.wire.v1 import register_pb2, types_pb2
from municipality_node import bootstrap as municipality_bootstrap
from prefecture_node import bootstrap as prefecture_bootstrap

BUILDERS = {
    "center": center_bootstrap.build,
    "prefecture": prefecture_bootstrap.build,
    "municipality": municipality_bootstrap.build,
}


REPO = Path(__file__).resolve().parents[2]
AGENCIES = REPO / "deploy" / "agencies.toml"


async def start(
    kind: str, code: str, database: str, pki_dir: Path, upstream: str = "", agencies: Path | None = None
) -> RunningNode:
    config = NodeConfig(
        kind=kind,
        code=code,
        listen="127.0.0.1:0",
        database=database,
        pki_dir=pki_dir,
        upstream=upstream,
        refill_below=50,
        block_size=200,
        batch_size=500,
        agencies=agencies,
    )
    return await start_node(config, BUILDERS[kind])


@contextlib.asynccontextmanager
async def sqlite_center(pki_dir: Path, folder: Path) -> AsyncIterator[RunningNode]:
    """A center on its own SQLite file in `folder`, stopped afterwards (for tests with a PKI of their own)."""
    node = await start("center", "", f"sqlite:///{folder / 'c.db'}", pki_dir)
    try:
        yield node
    finally:
        await node.stop()


def channel(pki_dir: Path, identity: str, address: str) -> grpc.aio.Channel:
    paths = paths_for(pki_dir, NodeId.parse(identity))
    return grpc.aio.secure_channel(address, channel_credentials(paths), options=SECURE_CHANNEL_OPTIONS)


async def eventually(check: Callable[[], object], timeout: float = 20.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def items(name: str = "山田\u3000太郎", address: str = "東京都調布市小島町2丁目35番1号") -> types_pb2.IdentityItems:
    return types_pb2.IdentityItems(name=name, birth_date="1980-04-01", sex=types_pb2.SEX_MALE, address=address)


def change(
    request_id: str,
    reason: int,
    code: str = "",
    *,
    effective: str = "2026-11-01",
    with_items: bool = True,
    **item_args: str,
) -> register_pb2.RegisterChange:
    pb = register_pb2.RegisterChange(
        request_id=request_id,
        reason=reason,  # type: ignore[arg-type]
        resident_code=code,
        effective_date=effective,
    )
    if with_items:
        pb.items.CopyFrom(items(**item_args))
    return pb


def event(
    seq: int,
    code: str,
    reason: int = types_pb2.CHANGE_REASON_EX_OFFICIO_RECORD,
    *,
    address: str = "東京都調布市1",
    effective: str = "2026-11-01",
    previous: str = "",
) -> types_pb2.ChangeEvent:
    pb = types_pb2.ChangeEvent(
        seq=seq,
        resident_code=code,
        previous_code=previous,
        reason=reason,  # type: ignore[arg-type]
        effective_date=effective,
        items=items(address=address),
    )
    pb.recorded_time.FromDatetime(dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=seq))
    return pb


async def jukinet(*args: str) -> tuple[int, str, str]:
    """Runs the `jukinet` command line in a subprocess (bounded): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jukinet.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode(), err.decode()
