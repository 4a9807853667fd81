"""Client side of RegisterService for tools (import, demo, bench): pipelined batches on one stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

from jukinet.domain.model import RegisterChange
from jukinet.wire.v1 import register_pb2, register_pb2_grpc, types_pb2


def change_to_pb(change: RegisterChange) -> register_pb2.RegisterChange:
    pb = register_pb2.RegisterChange(
        request_id=change.request_id,
        reason=int(change.reason),  # type: ignore[arg-type]
        resident_code=change.resident_code or "",
        effective_date=change.effective_date.isoformat(),
    )
    if change.items is not None:
        items = change.items
        pb.items.CopyFrom(
            types_pb2.IdentityItems(
                name=items.name,
                alias=items.alias,
                birth_date=items.birth_date.isoformat(),
                sex=int(items.sex),  # type: ignore[arg-type]
                address=items.address,
            )
        )
    return pb


async def record_batches(
    stub: register_pb2_grpc.RegisterServiceAsyncStub,
    batches: Iterable[Sequence[register_pb2.RegisterChange]],
    *,
    window: int = 4,
) -> AsyncIterator[list[register_pb2.ChangeResult]]:
    """Streams the batches (up to `window` unanswered) and yields each batch's results in order."""

    queue: asyncio.Queue[register_pb2.RecordChangesRequest | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)

    async def requests() -> AsyncIterator[register_pb2.RecordChangesRequest]:
        while (item := await queue.get()) is not None:
            yield item

    call = stub.RecordChanges(requests())

    async def feed() -> None:
        for batch in batches:
            await slots.acquire()
            await queue.put(register_pb2.RecordChangesRequest(changes=list(batch)))
        await queue.put(None)

    feeder = asyncio.create_task(feed())
    try:
        async for response in call:
            slots.release()
            yield list(response.results)
        await feeder
    finally:
        feeder.cancel()
        if not call.done():
            call.cancel()


def is_ok(result: register_pb2.ChangeResult) -> bool:
    return result.status_code == 0  # google.rpc.Code OK
