"""Keeps the municipality's pool of 住民票コード filled: asks the center (through the prefecture)
for a new block whenever free codes drop below the configured threshold."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable

import grpc
import structlog
from sqlalchemy import Connection, func, insert, select

from jukinet.domain.identity import NodeId
from jukinet.domain.validate import resident_code
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import channel_options
from jukinet.rpc import authz
from jukinet.rpc.guard import REQUEST_ID_KEY
from jukinet.rpc.switch import LinkSwitch
from jukinet.services.ports import AccessEntry
from jukinet.storage import SqlTx, Store
from jukinet.storage.rows import to_us
from jukinet.storage.schema import code_block, free_code
from jukinet.wire.v1 import codepool_pb2, codepool_pb2_grpc

log = structlog.get_logger(__name__)


def free_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(free_code)).scalar() or 0)


class CodePoolKeeper:
    def __init__(
        self,
        *,
        municipality: str,
        store: Store,
        upstream: str,
        upstream_identity: str,
        credentials: Callable[[], grpc.ChannelCredentials],
        metrics: NodeMetrics,
        refill_below: int,
        block_size: int,
        switch: LinkSwitch | None = None,
    ) -> None:
        self._switch = switch
        self._municipality = municipality
        self._store = store
        self._upstream = upstream
        self._upstream_identity = upstream_identity
        self._channel_options = channel_options(NodeId.parse(upstream_identity))
        self._credentials = credentials
        self._metrics = metrics
        self._refill_below = refill_below
        self._block_size = block_size
        self._wake = asyncio.Event()

    def request_refill(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        request_id = uuid.uuid4().hex
        while not stop.is_set():
            if self._switch is not None and self._switch.cut_off:
                await _sleep(stop, 1.0)  # no traffic on the node's links while cut off
                continue
            try:
                free = await self._store.read(free_count)
            except Exception as error:  # a database hiccup must not stop the node
                log.error("code_pool_check_failed", error=repr(error))
                await _sleep(stop, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._metrics.free_codes.set(free)
            if free < self._refill_below:
                try:
                    # A channel per refill: refills are rare, and a renewed certificate is picked up.
                    async with grpc.aio.secure_channel(
                        self._upstream, self._credentials(), options=self._channel_options
                    ) as channel:
                        await self._refill(codepool_pb2_grpc.CodePoolServiceStub(channel), request_id)
                    request_id = uuid.uuid4().hex  # the next block is a new request
                    backoff = 0.5
                    continue
                except Exception as error:  # unreachable upstream, a bad answer, a database error
                    detail = (
                        f"{error.code().name}: {error.details()}"
                        if isinstance(error, grpc.aio.AioRpcError)
                        else repr(error)
                    )
                    log.warning("code_pool_refill_failed", error=detail, retry_in=backoff)
                    await _sleep(stop, backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)

    async def _refill(self, stub: codepool_pb2_grpc.CodePoolServiceAsyncStub, request_id: str) -> None:
        reply = await stub.AllocateCodes(
            codepool_pb2.AllocateCodesRequest(
                request_id=request_id, municipality_code=self._municipality, count=self._block_size
            ),
            metadata=((REQUEST_ID_KEY, request_id),),
            timeout=30.0,
        )
        codes = [resident_code("resident_codes", c) for c in reply.resident_codes]
        now = dt.datetime.now(dt.UTC)

        def store_block(conn: Connection) -> int:
            if conn.execute(select(code_block.c.block_id).where(code_block.c.request_id == request_id)).first():
                return 0  # already stored (a retry after a lost answer)
            conn.execute(
                insert(code_block),
                [
                    {
                        "block_id": reply.block_id,
                        "request_id": request_id,
                        "municipality": self._municipality,
                        "count": len(codes),
                        "at_us": to_us(now),
                    }
                ],
            )
            SqlTx(conn).insert_code_rows("free_code", codes, reply.block_id)
            SqlTx(conn).append_access(
                [
                    AccessEntry(
                        at=now,
                        request_id=request_id,
                        peer=self._upstream_identity,
                        method=authz.ALLOCATE_CODES,
                        outcome="OK",
                        direction="made",
                    )
                ]
            )
            return len(codes)

        added = await self._store.write(store_block)
        log.info("code_pool_refilled", block_id=reply.block_id, added=added)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
