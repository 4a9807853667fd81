"""Answering a stream's messages in order while the next ones are already being worked on.

A relay or register stream sends a window of messages before it waits for an answer. Handling them one at a
time (read, write, wait for the commit, answer, read the next) gives the node's writer one message per
transaction; reading ahead hands the writer every message that has arrived, and its group commit then writes
them in one transaction. Four 2,000-event messages in one commit write about a third of the database pages
that four commits write (random 住民票コード dirty a different index page per row; see bench/relay.py).
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

DEFAULT_DEPTH = 8


async def answer_in_order(
    requests: AsyncIterator[Request],
    start: Callable[[Request], Awaitable[Answer]],
    *,
    depth: int = DEFAULT_DEPTH,
) -> AsyncIterator[Answer]:
    """Yields one answer per request, in request order.

    `start` is called synchronously for each request in arrival order, as soon as it arrives and while fewer
    than `depth` answers are outstanding; whatever must happen in request order (validating, queueing the
    write) it does before it returns, and the awaitable it returns finishes the answer.

    If reading a request or `start` raises, no further request is read: the answers already started are
    yielded first, then the error is raised. If an answer fails, its error is raised in its turn (the answers
    after it are abandoned, their work is not undone: a write queued is committed or refused on its own)."""
    pending: deque[asyncio.Future[Answer]] = deque()
    iterator = aiter(requests)
    reading: asyncio.Future[Request] | None = None
    failure: BaseException | None = None
    exhausted = False
    try:
        while True:
            if reading is None and not exhausted and failure is None and len(pending) < depth:
                reading = asyncio.ensure_future(anext(iterator))
            if pending and pending[0].done():
                yield pending.popleft().result()
                continue
            waiting = [f for f in (reading, pending[0] if pending else None) if f is not None]
            if not waiting:
                break
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if reading is not None and reading.done():
                finished, reading = reading, None
                try:
                    pending.append(asyncio.ensure_future(start(finished.result())))
                except StopAsyncIteration:
                    exhausted = True
                except Exception as error:  # raised once the answers already started are out
                    failure = error
        if failure is not None:
            raise failure
    finally:
        if reading is not None:
            reading.cancel()
        for answer in pending:
            answer.cancel()
