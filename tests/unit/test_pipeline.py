"""answer_in_order: a stream's next messages are started before the earlier ones are answered, and the answers
still leave in request order; a failure stops the reading but not the answers already started."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, cast

import pytest
from sqlalchemy import Connection

from jukinet.rpc.pipeline import EarlierMessageFailed, StreamWrites, answer_in_order


async def _requests(values: list[int], sent: list[int]) -> AsyncIterator[int]:
    for value in values:
        sent.append(value)
        yield value
        await asyncio.sleep(0)


class _Work:
    """Each started request gets a future the test resolves by hand, in any order."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.futures: dict[int, asyncio.Future[str]] = {}

    def start(self, request: int) -> Awaitable[str]:
        if request < 0:
            raise ValueError(f"bad request {request}")
        self.started.append(request)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.futures[request] = future
        return future


async def _collect(answers: AsyncIterator[str], into: list[str]) -> None:
    async for answer in answers:
        into.append(answer)


async def _until(condition: Callable[[], bool], *, rounds: int = 200) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_reads_ahead_and_answers_in_request_order() -> None:
    work, sent, answers = _Work(), list[int](), list[str]()
    collector = asyncio.create_task(_collect(answer_in_order(_requests([1, 2, 3], sent), work.start), answers))
    await _until(lambda: work.started == [1, 2, 3])  # all three started while none is answered
    assert answers == []
    work.futures[3].set_result("three")
    work.futures[2].set_result("two")
    await asyncio.sleep(0.01)
    assert answers == []  # the first is still open: nothing overtakes it
    work.futures[1].set_result("one")
    await asyncio.wait_for(collector, timeout=5)
    assert answers == ["one", "two", "three"]


async def test_depth_bounds_the_requests_started_before_an_answer() -> None:
    work, sent, answers = _Work(), list[int](), list[str]()
    stream = answer_in_order(_requests(list(range(1, 11)), sent), work.start, depth=3)
    collector = asyncio.create_task(_collect(stream, answers))
    await _until(lambda: len(work.started) == 3)
    await asyncio.sleep(0.01)
    assert work.started == [1, 2, 3]
    work.futures[1].set_result("a")
    await _until(lambda: len(work.started) == 4)
    for request in range(2, 11):
        await _until(partial(work.futures.__contains__, request))
        work.futures[request].set_result(str(request))
    await asyncio.wait_for(collector, timeout=5)
    assert answers == ["a", *map(str, range(2, 11))]


async def test_a_refused_request_stops_reading_after_the_earlier_answers() -> None:
    work, sent, answers = _Work(), list[int](), list[str]()
    stream = answer_in_order(_requests([1, 2, -3, 4], sent), work.start)
    collector = asyncio.create_task(_collect(stream, answers))
    await _until(lambda: work.started == [1, 2] and -3 in sent)
    work.futures[1].set_result("one")
    work.futures[2].set_result("two")
    with pytest.raises(ValueError, match="bad request -3"):
        await asyncio.wait_for(collector, timeout=5)
    assert answers == ["one", "two"]
    assert 4 not in sent
    assert work.started == [1, 2]


async def test_a_broken_stream_is_raised_after_the_answers_already_started() -> None:
    work, answers = _Work(), list[str]()

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("stream broke")

    collector = asyncio.create_task(_collect(answer_in_order(broken(), work.start), answers))
    await _until(lambda: work.started == [1])
    await asyncio.sleep(0.01)
    work.futures[1].set_result("one")
    with pytest.raises(ConnectionError, match="stream broke"):
        await asyncio.wait_for(collector, timeout=5)
    assert answers == ["one"]


async def test_a_failed_answer_is_raised_in_its_turn() -> None:
    work, sent, answers = _Work(), list[int](), list[str]()
    collector = asyncio.create_task(_collect(answer_in_order(_requests([1, 2, 3], sent), work.start), answers))
    await _until(lambda: work.started == [1, 2, 3])
    work.futures[3].set_result("three")
    work.futures[2].set_exception(RuntimeError("commit failed"))
    work.futures[1].set_result("one")
    with pytest.raises(RuntimeError, match="commit failed"):
        await asyncio.wait_for(collector, timeout=5)
    assert answers == ["one"]


_NO_CONNECTION = cast("Connection", None)  # the jobs here never touch a database


def test_a_stream_write_after_a_failed_one_does_not_run() -> None:
    writes, ran = StreamWrites(), list[int]()

    def record(n: int) -> Callable[[Any], int]:
        def job(conn: Any) -> int:
            if n == 2:
                raise RuntimeError("refused")
            ran.append(n)
            return n

        return job

    jobs = [writes.job(record(n)) for n in (1, 2, 3, 4)]
    assert jobs[0](_NO_CONNECTION) == 1
    with pytest.raises(RuntimeError, match="refused"):
        jobs[1](_NO_CONNECTION)
    for later in jobs[2:]:
        with pytest.raises(EarlierMessageFailed):
            later(_NO_CONNECTION)
    assert ran == [1]
