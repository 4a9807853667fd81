"""Answering a stream's messages in order while the next ones are already being worked on.

A relay or register stream sends a window of messages before it waits for an answer. Handling them one at a
time (read, write, wait for the commit, answer, read the next) gives the node's writer one message per
transaction and leaves the event loop idle while it commits; reading ahead validates the next messages
meanwhile and hands the writer every message that has arrived, and its group commit writes those together
(random 住民票コード dirty a different index page per row, so fewer, larger commits write fewer pages).
`jukinet_db_transaction_jobs` shows how much grouping a node gets (README, Benchmark).

`writes_in_order` is the form the servicers use: answer_in_order with the stream's StreamWrites, so a
message's write never runs after an earlier message of the stream failed.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from sqlalchemy import Connection

Request = TypeVar("Request")
Answer = TypeVar("Answer")
Result = TypeVar("Result")

DEFAULT_DEPTH = 4  # messages started before the first is answered: the senders keep 4 in flight


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


class EarlierMessageFailed(Exception):
    """A stream's write that was not run because an earlier message of the same stream failed."""


class StreamWrites:
    """The writes of one stream's messages, queued ahead (answer_in_order): the writer runs them in order, and
    once one raises, the later ones raise too without touching the database. So, as when messages were
    handled one at a time, nothing after a refused message is applied; the stream reports the first error."""

    def __init__(self) -> None:
        self._failed = False

    def job(self, fn: Callable[[Connection], Result]) -> Callable[[Connection], Result]:
        def run(conn: Connection) -> Result:
            if self._failed:  # read and set on the writer thread only: jobs run one after another there
                raise EarlierMessageFailed("an earlier message of this stream was refused; nothing after it applies")
            try:
                return fn(conn)
            except BaseException:
                self._failed = True
                raise

        return run


def writes_in_order(
    requests: AsyncIterator[Request], start: Callable[[Request, StreamWrites], Awaitable[Answer]]
) -> AsyncIterator[Answer]:
    """answer_in_order for a stream whose messages each queue a write: `start` gets the stream's StreamWrites
    and wraps the write it queues with `writes.job`."""
    writes = StreamWrites()
    return answer_in_order(requests, lambda request: start(request, writes))
