"""Relay throughput: register system -> municipality -> prefecture -> center, against one bare hop.

    .venv/bin/python bench/relay.py [--changes N] [--preload-center N] [--quick] [--keep] [--dir DIR]

Two measurements in one run, on the same machine and the same records:

ceiling
    The raw cost of ONE hop: a bare grpc.aio bidi stream over mTLS (certificates from jukinet.pki) of
    PushEventsRequest batches of ChangeEvents as large as the nodes' relay sends them (jukinet.config
    RELAY_BATCH, 10,000), into a bare server process that reads every field and writes each batch with ONE
    sqlite3 executemany INSERT into the `event` table, in one transaction (WAL, synchronous=FULL and the
    nodes' other pragmas), then acks; as many batches in flight as the relay keeps (RELAY_WINDOW, 4). With
    --preload-center the server writes into a copy of the preloaded center database, so both figures
    are taken at the same database size. Measured in 3 rounds, one before the end-to-end run and two
    after; the ratio uses their median (a round takes seconds, and a neighbour's burst can halve one).

end to end
    A real center, prefecture 13 and municipality 132080 (node processes started with LocalNetwork). The
    bench pushes N creates (職権記載 / 国外からの転入, the node assigns the codes) as the register system,
    in batches of 2,000 with 4 in flight, and times from the first push until the center's cursor for
    132080 reaches N. Each create takes a code from the municipality's pool: before the clock starts the
    pool is filled with more than N codes and the municipality restarted with a low refill mark, so no
    block of codes is allocated during the run (refills are rare background work in production).
    The center's cursor is read with RelayService.GetCursors under the prefecture's
    certificate (an indexed max(seq) lookup): GetStatus and GetDigest scan whole tables, which would load
    the very process being measured.

Progress goes to stderr, a summary to stdout, and the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.timestamp_pb2 import Timestamp

from jukinet.cli.client import client_channel
from jukinet.cli.demo import Operator
from jukinet.cli.netctl import CENTER, LocalNetwork, NodeProcess
from jukinet.cli.register_client import is_ok, record_batches
from jukinet.codes import resident_code_from_body
from jukinet.config import RELAY_BATCH, RELAY_WINDOW
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.model import IdentityItems, Sex
from jukinet.domain.validate import today_jst
from jukinet.pki import (
    SECURE_CHANNEL_OPTIONS,
    SECURE_SERVER_OPTIONS,
    channel_credentials,
    create_ca,
    issue,
    paths_for,
    server_credentials,
    slug,
)
from jukinet.rpc import event_loop
from jukinet.storage import make_engine
from jukinet.storage.engine import SQLITE_PRAGMAS
from jukinet.synthetic import ResidentFactory
from jukinet.wire.v1 import register_pb2, register_pb2_grpc, relay_pb2, relay_pb2_grpc, types_pb2

MUNICIPALITY = NodeId(Role.MUNICIPALITY, "132080")  # 調布市
PREFECTURE = NodeId(Role.PREFECTURE, "13")  # 東京都
CEILING_ROUNDS = 3  # one before the network run, the rest after: their median resists a noisy machine
PRELOAD_ORIGIN = "131016"  # 千代田区: another Tokyo municipality, so its seqs never meet 132080's
BATCH = 2000  # the register system's messages (changes per RecordChanges message)
WINDOW = 4
POOL_SIZE = 5000
POLL_S = 0.2
PROGRESS_S = 3.0
CATCH_UP_LIMIT_S = 15 * 60  # first push -> center caught up
CEILING_LIMIT_S = 10 * 60
START_LIMIT_S = 120.0
PRELOAD_TXN_ROWS = 10_000
PRELOAD_BLOCK = 100_000  # codes per synthetic code_block row of the preload
CODE_BLOCK = 100_000  # the center's largest block (center/codepool.py MAX_BLOCK)
RUN_REFILL_BELOW = 1000


def codepool_config(refill_below: int) -> str:
    return f"\n[codepool]\nrefill_below = {refill_below}\nblock_size = {CODE_BLOCK}\n"


POOL_EXHAUSTED = "CODE_POOL_EXHAUSTED"
SCRIPT = Path(__file__).resolve()

INSERT_EVENT = (
    "INSERT INTO event (origin, seq, resident_code, previous_code, reason, effective_date, recorded_us,"
    " name, alias, birth_date, sex, address, request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
INSERT_REGISTRATION = (
    "INSERT INTO registration (resident_code, municipality, active, reason, effective_date, recorded_us,"
    " seq, replaced_by, name, alias, birth_date, sex, address) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
INSERT_ISSUED = "INSERT INTO issued_code (resident_code, block_id) VALUES (?, ?)"
INSERT_BLOCK = "INSERT INTO code_block (block_id, request_id, municipality, count, at_us) VALUES (?, ?, ?, ?, ?)"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- realistic records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """One pooled identity, ready for every encoding the bench needs."""

    items: IdentityItems
    pb: types_pb2.IdentityItems
    reason: types_pb2.ChangeReason.ValueType
    birth: dt.date
    span_days: int


def people(municipality: str, count: int, seed: int, today: dt.date) -> list[Person]:
    factory = ResidentFactory(municipality, seed=seed, today=today)
    rng = random.Random(seed)
    pool: list[Person] = []
    for _ in range(count):
        items = factory.items()
        foreign = bool(items.alias) or rng.random() < 0.02
        reason = types_pb2.CHANGE_REASON_ENTRY_FROM_ABROAD if foreign else types_pb2.CHANGE_REASON_EX_OFFICIO_RECORD
        pb = types_pb2.IdentityItems(
            name=items.name,
            alias=items.alias,
            birth_date=items.birth_date.isoformat(),
            sex=types_pb2.SEX_MALE if items.sex is Sex.MALE else types_pb2.SEX_FEMALE,
            address=items.address,
        )
        span = (today - items.birth_date).days
        pool.append(Person(items, pb, reason, items.birth_date, span))
    return pool


def effective_date(person: Person, rng: random.Random) -> str:
    return (person.birth + dt.timedelta(days=rng.randint(0, person.span_days))).isoformat()


def unique_codes(count: int, rng: random.Random) -> list[str]:
    codes: dict[str, None] = {}
    while len(codes) < count:
        codes[resident_code_from_body(f"{rng.randrange(10**10):010d}")] = None
    return list(codes)


def register_batches(
    count: int, pool: Sequence[Person], rng: random.Random, run_id: str
) -> list[list[register_pb2.RegisterChange]]:
    """`count` creates without a code (the node assigns one), cycling through the pool."""
    changes = [
        register_pb2.RegisterChange(
            request_id=f"{run_id}-{i}",
            reason=person.reason,
            effective_date=effective_date(person, rng),
            items=person.pb,
        )
        for i in range(count)
        for person in (pool[i % len(pool)],)
    ]
    return [changes[i : i + BATCH] for i in range(0, len(changes), BATCH)]


def relay_batches(
    count: int, origin: str, pool: Sequence[Person], rng: random.Random
) -> list[relay_pb2.PushEventsRequest]:
    """The same kind of records as the hop between two nodes carries them."""
    codes = unique_codes(count, rng)
    now_us = time.time_ns() // 1000
    batches: list[relay_pb2.PushEventsRequest] = []
    for start in range(0, count, RELAY_BATCH):
        events = []
        for i in range(start, min(start + RELAY_BATCH, count)):
            person = pool[i % len(pool)]
            recorded = now_us + i
            events.append(
                types_pb2.ChangeEvent(
                    seq=i + 1,
                    resident_code=codes[i],
                    reason=person.reason,
                    effective_date=effective_date(person, rng),
                    recorded_time=Timestamp(seconds=recorded // 1_000_000, nanos=recorded % 1_000_000 * 1000),
                    items=person.pb,
                )
            )
        batches.append(relay_pb2.PushEventsRequest(origin=origin, events=events))
    return batches


# -- processes -----------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return float("nan")
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (thread name, utime + stime)} for every live thread of a process."""
    threads: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = task.joinpath("stat").read_text(encoding="utf-8", errors="replace")
                name = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rpartition(")")[2].split()
                threads[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return threads


def thread_split(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread over a window: the main thread (the asyncio loop: gRPC handlers, proto
    conversion, validation) and the busiest other threads (named name#tid; for a node the busiest plain
    Python one is its database writer thread)."""
    spent = {tid: cpu - before.get(tid, ("", 0.0))[1] for tid, (_, cpu) in after.items()}
    split = {"main": round(spent.pop(pid, 0.0), 2)}
    for tid, cpu in sorted(spent.items(), key=lambda item: -item[1])[:3]:
        split[f"{after[tid][0]}#{tid}"] = round(cpu, 2)
    split["other"] = round(max(0.0, sum(spent.values()) - sum(v for k, v in split.items() if k != "main")), 2)
    return split


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def read_json_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None  # noqa: S101
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        readable, _, _ = select.select([process.stdout], [], [], 0.2)
        if not readable:
            continue
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if isinstance(message, dict):
                    return message
    raise RuntimeError(f"the ceiling server did not report its port within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout:
        process.stdout.close()


# -- ceiling: one bare hop -----------------------------------------------------------------------


def open_node_like_sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in SQLITE_PRAGMAS:  # the nodes' settings, so the ceiling is measured like a node
        db.execute(pragma)
    return db


class CeilingServicer(relay_pb2_grpc.RelayServiceServicer):
    """Per batch: read every field, ONE executemany INSERT in one transaction, ack."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def PushEvents(  # noqa: N802
        self,
        request_iterator: AsyncIterator[relay_pb2.PushEventsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[relay_pb2.PushEventsResponse]:
        db = self._db
        async for request in request_iterator:
            origin = request.origin
            rows = []
            for e in request.events:
                items, ts = e.items, e.recorded_time
                rows.append(
                    (
                        origin,
                        e.seq,
                        e.resident_code,
                        e.previous_code,
                        int(e.reason),
                        e.effective_date,
                        ts.seconds * 1_000_000 + ts.nanos // 1000,
                        items.name,
                        items.alias,
                        items.birth_date,
                        int(items.sex),
                        items.address,
                        None,
                    )
                )
            db.execute("BEGIN")
            try:
                db.executemany(INSERT_EVENT, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            yield relay_pb2.PushEventsResponse(origin=origin, acked_seq=rows[-1][1] if rows else 0)

    async def GetCursors(  # noqa: N802
        self, request: relay_pb2.GetCursorsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.GetCursorsResponse:
        return relay_pb2.GetCursorsResponse()


async def serve_ceiling(pki_dir: Path, db_path: Path) -> None:
    db = open_node_like_sqlite(db_path)
    server = grpc.aio.server(options=list(SECURE_SERVER_OPTIONS))
    relay_pb2_grpc.add_RelayServiceServicer_to_server(CeilingServicer(db), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(paths_for(pki_dir, CENTER)))
    await server.start()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:  # never outlive the bench
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    await server.stop(grace=1.0)
    db.close()


def start_ceiling_server(pki_dir: Path, db_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--ceiling-server", str(pki_dir), str(db_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )


@dataclass(frozen=True, slots=True)
class CeilingResult:
    events: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


async def push_ceiling(address: str, pki_dir: Path, batches: Sequence[relay_pb2.PushEventsRequest]) -> float:
    credentials = channel_credentials(paths_for(pki_dir, PREFECTURE))
    async with grpc.aio.secure_channel(address, credentials, options=SECURE_CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = relay_pb2_grpc.RelayServiceStub(channel)
        queue: asyncio.Queue[relay_pb2.PushEventsRequest | None] = asyncio.Queue()
        slots = asyncio.Semaphore(RELAY_WINDOW)

        async def requests() -> AsyncIterator[relay_pb2.PushEventsRequest]:
            while (item := await queue.get()) is not None:
                yield item

        async def feed() -> None:
            for batch in batches:
                await slots.acquire()
                await queue.put(batch)
            await queue.put(None)

        started = time.perf_counter()
        call = stub.PushEvents(requests())
        feeder = asyncio.create_task(feed())
        acked = 0
        try:
            async for reply in call:
                slots.release()
                acked = reply.acked_seq
            await feeder
        finally:
            feeder.cancel()
        elapsed = time.perf_counter() - started
        expected = batches[-1].events[-1].seq
        if acked != expected:
            raise RuntimeError(f"ceiling server acked seq {acked}, expected {expected}")
        return elapsed


async def measure_ceiling(
    work: Path, db_template: Path | None, count: int, pool: Sequence[Person], rng: random.Random
) -> CeilingResult:
    pki_dir = work / "pki"
    create_ca(pki_dir)
    issue(pki_dir, CENTER)
    issue(pki_dir, PREFECTURE)
    db_path = work / "ceiling.db"
    if db_template is not None:
        shutil.copyfile(db_template, db_path)
    make_engine(f"sqlite:///{db_path}").dispose()  # the real `event` table: same columns and indexes
    batches = relay_batches(count, MUNICIPALITY.code, pool, rng)
    server = start_ceiling_server(pki_dir, db_path)
    try:
        ready = read_json_line(server, 60)
        address = f"127.0.0.1:{ready['port']}"
        server_cpu, client_cpu = cpu_seconds(server.pid), own_cpu_seconds()
        seconds = await asyncio.wait_for(push_ceiling(address, pki_dir, batches), timeout=CEILING_LIMIT_S)
        return CeilingResult(
            events=count,
            seconds=seconds,
            server_cpu_s=cpu_seconds(server.pid) - server_cpu,
            client_cpu_s=own_cpu_seconds() - client_cpu,
        )
    except TimeoutError:
        raise RuntimeError(f"the ceiling run did not finish within {CEILING_LIMIT_S}s") from None
    finally:
        stop_process(server)


# -- preloading the center -----------------------------------------------------------------------


def preload_center(db_path: Path, count: int, seed: int, today: dt.date) -> float:
    """`count` residents of PRELOAD_ORIGIN as the center would hold them: events seq 1..count,
    registrations and issued codes, in PRELOAD_TXN_ROWS-row transactions of raw executemany. Every code is
    issued and none retired, so the events count as already reconciled (the center's code check starts
    after them instead of re-reading a million events during the measurement)."""
    started = time.perf_counter()
    make_engine(f"sqlite:///{db_path}").dispose()
    pool = people(PRELOAD_ORIGIN, POOL_SIZE, seed + 1, today)
    rng = random.Random(seed + 2)
    codes = unique_codes(count, rng)
    db = sqlite3.connect(db_path, isolation_level=None)
    for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA cache_size=-262144"):
        db.execute(pragma)
    base_us = (time.time_ns() // 1000) - count * 1000
    last_report = time.monotonic()
    try:
        for start in range(0, count, PRELOAD_TXN_ROWS):
            events, registrations, issued, blocks = [], [], [], []
            for i in range(start, min(start + PRELOAD_TXN_ROWS, count)):
                person, code, seq = pool[i % len(pool)], codes[i], i + 1
                items, recorded = person.items, base_us + i * 1000
                effective = effective_date(person, rng)
                birth, sex = items.birth_date.isoformat(), int(items.sex)
                reason = int(person.reason)
                identity = (items.name, items.alias, birth, sex, items.address)
                events.append((PRELOAD_ORIGIN, seq, code, "", reason, effective, recorded, *identity, None))
                registrations.append((code, PRELOAD_ORIGIN, 1, reason, effective, recorded, seq, "", *identity))
                block_id = f"preload{i // PRELOAD_BLOCK:06d}"
                issued.append((code, block_id))
                if i % PRELOAD_BLOCK == 0:
                    size = min(PRELOAD_BLOCK, count - i)
                    blocks.append((block_id, f"preload-{block_id}", PRELOAD_ORIGIN, size, base_us))
            db.execute("BEGIN")
            db.executemany(INSERT_EVENT, events)
            db.executemany(INSERT_REGISTRATION, registrations)
            db.executemany(INSERT_ISSUED, issued)
            db.executemany(INSERT_BLOCK, blocks)
            db.execute("COMMIT")
            if time.monotonic() - last_report > PROGRESS_S:
                last_report = time.monotonic()
                done = start + len(events)
                say(f"  preload {done:,}/{count:,} residents ({done / (time.perf_counter() - started):,.0f}/s)")
        db.execute(
            "INSERT INTO code_check_cursor (id, checked_through) VALUES (1, (SELECT max(id) FROM event))"
            " ON CONFLICT (id) DO UPDATE SET checked_through = excluded.checked_through"
        )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.perf_counter() - started


# -- end to end ----------------------------------------------------------------------------------


@dataclass
class Progress:
    target: int
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    started: float = 0.0
    intake_done_at: float | None = None
    caught_up_at: float | None = None
    prefecture_head: int = 0
    center_head: int = 0


async def wait_for_codes(op: Operator, node: NodeProcess, at_least: int) -> int:
    deadline = time.monotonic() + START_LIMIT_S
    while True:
        free = (await op.status(node)).free_codes
        if free >= at_least:
            return int(free)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{node.identity.uri} had {free:,} free codes, not {at_least:,}, after {START_LIMIT_S:.0f}s;"
                f" see {node.log}"
            )
        await asyncio.sleep(0.2)


async def push_changes(
    node: NodeProcess, pki_dir: Path, batches: list[list[register_pb2.RegisterChange]], state: Progress
) -> None:
    """Pushes as the register system; changes refused for an empty code pool are pushed again."""
    register = f"jukinet://register/{MUNICIPALITY.code}"
    deadline = state.started + CATCH_UP_LIMIT_S
    async with client_channel(node.listen, pki_dir, register) as channel:
        stub = register_pb2_grpc.RegisterServiceStub(channel)
        pending = batches
        while pending:
            retry: list[register_pb2.RegisterChange] = []
            index = 0
            async for results in record_batches(stub, pending, window=WINDOW):
                sent = pending[index]
                index += 1
                for change, result in zip(sent, results, strict=True):
                    if is_ok(result):
                        state.accepted += 1
                    elif result.error_reason == POOL_EXHAUSTED and result.request_id == change.request_id:
                        retry.append(change)
                    else:
                        state.refused[result.error_reason or str(result.status_code)] += 1
                        state.target -= 1
            if not retry:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(retry)} changes still refused ({POOL_EXHAUSTED}) at the time limit")
            state.retried += len(retry)
            say(f"  {len(retry)} changes refused for an empty code pool; pushing them again in 1 s")
            await asyncio.sleep(1.0)
            pending = [retry[i : i + BATCH] for i in range(0, len(retry), BATCH)]
    state.intake_done_at = time.monotonic()


async def watch_cursors(net: LocalNetwork, state: Progress) -> None:
    """Polls the prefecture's and the center's cursor for 132080 (indexed lookups) until the center has
    every accepted change; fails when a node dies or the time limit passes."""
    prefecture = net.nodes[slug(PREFECTURE)]
    center = net.nodes[slug(CENTER)]
    deadline = state.started + CATCH_UP_LIMIT_S
    request = relay_pb2.GetCursorsRequest(origins=[MUNICIPALITY.code])
    async with (
        client_channel(prefecture.listen, net.pki_dir, MUNICIPALITY.uri) as to_prefecture,
        client_channel(center.listen, net.pki_dir, PREFECTURE.uri) as to_center,
    ):
        pref_stub = relay_pb2_grpc.RelayServiceStub(to_prefecture)
        center_stub = relay_pb2_grpc.RelayServiceStub(to_center)
        while True:
            reply = await center_stub.GetCursors(request, timeout=10)
            state.center_head = reply.cursors[0].acked_seq
            if state.intake_done_at is not None and state.center_head >= state.target:
                state.caught_up_at = time.monotonic()
                return
            reply = await pref_stub.GetCursors(request, timeout=10)
            state.prefecture_head = reply.cursors[0].acked_seq
            for node in net.nodes.values():
                if not node.alive():
                    raise RuntimeError(f"{node.identity.uri} exited (code {node.process.returncode}); see {node.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the center has {state.center_head:,} of {state.target:,} events of {MUNICIPALITY.code}"
                    f" after {CATCH_UP_LIMIT_S / 60:.0f} minutes; giving up (logs: {net.root / 'logs'})"
                )
            await asyncio.sleep(POLL_S)


async def report_progress(state: Progress, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=PROGRESS_S)
        elapsed = time.monotonic() - state.started
        say(
            f"  {elapsed:6.1f}s  municipality {state.accepted:>9,}/{state.target:,}"
            f" ({state.accepted / elapsed:>7,.0f}/s)   prefecture {state.prefecture_head:>9,}"
            f"   center {state.center_head:>9,} ({state.center_head / elapsed:>7,.0f}/s)"
        )


def summarize_log(path: Path) -> dict[str, Any]:
    """Lines per level, and warnings/errors (and lines that are not JSON, e.g. tracebacks) by event."""
    levels: Counter[str] = Counter()
    issues: Counter[str] = Counter()
    first_issue: dict[str, str] = {}
    if not path.exists():
        return {"missing": True}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict):
            levels["not-json"] += 1
            issues["not-json"] += 1
            first_issue.setdefault("not-json", line[:200])
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level in ("warning", "error", "critical"):
            key = f"{level}:{entry.get('event', '?')}"
            issues[key] += 1
            first_issue.setdefault(key, line[:300])
    return {"levels": dict(levels), "issues": dict(issues), "examples": first_issue}


async def run_network(
    net: LocalNetwork, changes: int, pool: Sequence[Person], rng: random.Random, run_id: str
) -> dict[str, Any]:
    center = net.start(CENTER, timeout=START_LIMIT_S)
    prefecture = net.start(PREFECTURE, upstream=center.listen, timeout=START_LIMIT_S)
    op = Operator(net)
    # Every change of the run creates a resident and takes a code. The code pool is filled before the run
    # (refill until more than `changes` are free), then the municipality is restarted with a low refill
    # mark, so that no block of codes is allocated by the center during the measured run: refills are a
    # rare background task in production (a block lasts months), not part of relaying a change.
    net.extra_config = codepool_config(refill_below=changes + 1)
    municipality = net.start(MUNICIPALITY, upstream=prefecture.listen, timeout=START_LIMIT_S)
    say(f"  filling {MUNICIPALITY.code}'s code pool with more than {changes:,} codes (blocks of {CODE_BLOCK:,})")
    await wait_for_codes(op, municipality, changes + 1)
    net.stop(slug(MUNICIPALITY))
    net.extra_config = codepool_config(refill_below=RUN_REFILL_BELOW)
    municipality = net.start(MUNICIPALITY, upstream=prefecture.listen, timeout=START_LIMIT_S)
    free = await wait_for_codes(op, municipality, changes + 1)
    say(f"  network up (center {center.listen}); {municipality.identity.uri} has {free:,} free codes")
    batches = register_batches(changes, pool, rng, run_id)

    state = Progress(target=changes)
    cpu_before = {name: cpu_seconds(node.process.pid) for name, node in net.nodes.items()}
    threads_before = {name: thread_cpu_seconds(node.process.pid) for name, node in net.nodes.items()}
    bench_before = own_cpu_seconds()
    stop_progress = asyncio.Event()
    state.started = time.monotonic()
    printer = asyncio.create_task(report_progress(state, stop_progress))
    pusher = asyncio.create_task(push_changes(municipality, net.pki_dir, batches, state))
    watcher = asyncio.create_task(watch_cursors(net, state))
    try:
        done, _ = await asyncio.wait({pusher, watcher}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # raises the first failure
        await pusher
        await watcher
    finally:
        stop_progress.set()
        for task in (pusher, watcher):
            task.cancel()
        await asyncio.gather(printer, pusher, watcher, return_exceptions=True)
    cpu_after = {name: cpu_seconds(node.process.pid) for name, node in net.nodes.items()}
    threads = {
        name: thread_split(node.process.pid, threads_before[name], thread_cpu_seconds(node.process.pid))
        for name, node in net.nodes.items()
    }
    bench_cpu = own_cpu_seconds() - bench_before
    assert state.intake_done_at is not None  # noqa: S101
    assert state.caught_up_at is not None  # noqa: S101

    statuses = {name: await op.status(node) for name, node in net.nodes.items()}
    mine = await op.digest(municipality, MUNICIPALITY.code)
    theirs = await op.digest(center, MUNICIPALITY.code)
    return {
        "e2e_seconds": state.caught_up_at - state.started,
        "intake_seconds": state.intake_done_at - state.started,
        "accepted": state.accepted,
        "refused": dict(state.refused),
        "retried_pool_exhausted": state.retried,
        "node_cpu_s": {name: round(cpu_after[name] - cpu_before[name], 2) for name in net.nodes},
        "node_thread_cpu_s": threads,
        "bench_client_cpu_s": round(bench_cpu, 2),
        "center_head_seq": state.center_head,
        "digest_agrees": (mine.digest, mine.registration_count, mine.head_seq)
        == (theirs.digest, theirs.registration_count, theirs.head_seq),
        "node_status": {
            name: {
                "events": s.event_count,
                "active": s.active_count,
                "outbox_depth": s.outbox_depth,
                "access_log": s.access_log_count,
                "free_codes": s.free_codes,
            }
            for name, s in statuses.items()
        },
    }


# -- the whole run -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "sqlite": sqlite3.sqlite_version,
        "event_loop": event_loop.loop_name(),  # nodes and raw servers alike
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    changes: int = args.changes
    machine = machine_info()  # the load average before this run adds its own
    today = today_jst()
    say(f"relay bench: {changes:,} changes, center preloaded with {args.preload_center:,} residents; run {root}")
    say(f"  building a pool of {POOL_SIZE:,} realistic residents of {MUNICIPALITY.code}")
    pool = people(MUNICIPALITY.code, POOL_SIZE, args.seed, today)
    rng = random.Random(args.seed)

    net = LocalNetwork(root)
    net.prepare_pki([CENTER, PREFECTURE, MUNICIPALITY])
    center_db = root / "data" / f"{slug(CENTER)}.db"
    preload_s = 0.0
    if args.preload_center:
        say(f"  preloading the center with {args.preload_center:,} residents of {PRELOAD_ORIGIN}")
        preload_s = preload_center(center_db, args.preload_center, args.seed, today)
        say(f"  preloaded in {preload_s:.1f}s ({center_db.stat().st_size / 2**20:,.0f} MiB)")

    template: Path | None = None
    if args.preload_center:  # the ceiling rounds after the network run start from the preloaded state too
        template = root / "ceiling-template.db"
        shutil.copyfile(center_db, template)

    async def ceiling_round(label: str) -> CeilingResult:
        say(f"ceiling, {label}: one bare hop of {changes:,} events (mTLS bidi stream -> raw sqlite3 executemany)")
        with tempfile.TemporaryDirectory(prefix="ceiling-", dir=root) as work:
            result = await measure_ceiling(Path(work), template, changes, pool, rng)
        say(f"  {result.events_per_s:,.0f} events/s ({result.seconds:.2f}s)")
        return result

    ceilings = [await ceiling_round(f"round 1 of {CEILING_ROUNDS}")]
    say("end to end: register -> municipality 132080 -> prefecture 13 -> center")
    try:
        e2e = await run_network(net, changes, pool, rng, f"bench{os.getpid()}")
    finally:
        net.stop_all()
    for number in range(2, CEILING_ROUNDS + 1):
        ceilings.append(await ceiling_round(f"round {number} of {CEILING_ROUNDS}"))
    ceiling = sorted(ceilings, key=lambda c: c.events_per_s)[len(ceilings) // 2]  # the median round
    logs = {name: summarize_log(node.log) for name, node in net.nodes.items()}
    target = e2e["accepted"]
    events_per_s = target / e2e["e2e_seconds"]
    return {
        "bench": "relay",
        "changes": changes,
        "preload_center": args.preload_center,
        "events_per_s": round(events_per_s, 1),
        "ceiling_events_per_s": round(ceiling.events_per_s, 1),
        "ratio": round(events_per_s / ceiling.events_per_s, 4),
        "intake_per_s": round(target / e2e["intake_seconds"], 1),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in e2e.items()},
        "ceiling_rounds_per_s": [round(c.events_per_s, 1) for c in ceilings],
        "ceiling_seconds": round(ceiling.seconds, 3),
        "ceiling_server_cpu_s": round(ceiling.server_cpu_s, 2),
        "ceiling_client_cpu_s": round(ceiling.client_cpu_s, 2),
        "preload_seconds": round(preload_s, 1),
        "batch": BATCH,
        "window": WINDOW,
        "relay_batch": RELAY_BATCH,
        "relay_window": RELAY_WINDOW,
        "logs": logs,
        "machine": machine,
    }


def print_summary(result: dict[str, Any]) -> None:
    print(f"relay: {result['changes']:,} changes, center preloaded with {result['preload_center']:,} residents")
    print(
        f"  end to end   {result['events_per_s']:>10,.0f} events/s  ({result['e2e_seconds']:.1f}s until the"
        f" center held all {result['accepted']:,})"
    )
    print(f"  intake       {result['intake_per_s']:>10,.0f} changes/s ({result['intake_seconds']:.1f}s)")
    print(
        f"  ceiling      {result['ceiling_events_per_s']:>10,.0f} events/s  (one bare hop, median of"
        f" {', '.join(f'{r:,.0f}' for r in result['ceiling_rounds_per_s'])}; server CPU"
        f" {result['ceiling_server_cpu_s']:.1f}s)"
    )
    print(f"  ratio        {result['ratio']:>10.3f}")
    cpu = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result["node_cpu_s"].items())
    print(f"  CPU during the run: {cpu}, bench client {result['bench_client_cpu_s']:.1f}s")
    for name, split in result["node_thread_cpu_s"].items():
        print(f"    {name} threads: " + ", ".join(f"{k} {v:.1f}s" for k, v in split.items()))
    print(f"  municipality and center digests agree: {result['digest_agrees']}")
    if result["refused"] or result["retried_pool_exhausted"]:
        print(f"  refused: {result['refused']}; pushed again after an empty pool: {result['retried_pool_exhausted']}")
    for name, summary in result["logs"].items():
        issues = summary.get("issues") or {}
        text = ", ".join(f"{k} x{v}" for k, v in sorted(issues.items())) or "no warnings or errors"
        print(f"  log {name}: {text}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=None, help="changes to push (default 200,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 changes")
    parser.add_argument(
        "--preload-center", type=int, default=0, metavar="N", help="residents already in the center's DB"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="run folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (PKI, DBs, logs)")
    parser.add_argument("--ceiling-server", nargs=2, metavar=("PKI_DIR", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.changes is None:
        args.changes = 20_000 if args.quick else 200_000
    if args.changes <= 0 or args.preload_center < 0:
        parser.error("--changes must be positive and --preload-center not negative")
    return args


def run_in_folder(
    args: argparse.Namespace,
    name: str,
    work: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]],
    summary: Callable[[dict[str, Any]], None],
) -> int:
    """Runs one benchmark in its run folder (--dir, or a new temporary one), keeps the folder on failure or
    with --keep, prints the human summary and, as the last line, the JSON result. Shared by every bench."""
    if args.dir is not None:
        root = args.dir.resolve()
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix=f"jukinet-{name}-"))
    keep = args.keep
    try:
        result = asyncio.run(work(root))
    except KeyboardInterrupt:
        say(f"interrupted; run folder {root}")
        keep = True
        return 130
    except (RuntimeError, grpc.aio.AioRpcError) as error:
        say(f"{name} bench failed: {error}\nrun folder kept: {root}")
        keep = True
        return 1
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if keep:
        result["run_dir"] = str(root)
    summary(result)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.ceiling_server:
        event_loop.run(serve_ceiling(Path(args.ceiling_server[0]), Path(args.ceiling_server[1])))  # the nodes' loop
        return 0
    return run_in_folder(args, "relay", lambda root: run(args, root), print_summary)


if __name__ == "__main__":
    sys.exit(main())
