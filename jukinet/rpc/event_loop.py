"""The event loop a node runs on: uvloop where it is installed, asyncio's own otherwise.

A node's event loop does more than serve gRPC: every call resolves futures, wakes tasks and receives
call_soon_threadsafe wake-ups from the database writer. uvloop does that work in C. Measured on the agency
lookup bench (concurrency 16, three interleaved rounds each): the center went from 1,417 to 1,678 lookups/s
(CPU per call 567 -> 481 µs), the bare handler from 3,002 to 3,283. The benches run their raw servers on the
same loop (`run`), so their ratios compare like with like. `JUKINET_EVENT_LOOP=asyncio` forces the standard
loop, to rule the loop out when diagnosing."""

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "JUKINET_EVENT_LOOP"


def loop_name() -> str:
    """ "uvloop" or "asyncio": the loop `run` will use."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs a node's (or a bench server's) main coroutine to completion on the chosen loop."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
