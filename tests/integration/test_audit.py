"""The tamper-evident access log on real nodes: the chain under group commit, checkpoints countersigned up
the tree, `jukinet audit verify` against every kind of tampering, and a flagged child refused until an
operator acknowledges."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Connection

from jukinet.audit import (
    GENESIS,
    Checkpoint,
    EntryValues,
    SignedCheckpoint,
    append,
    entry_digest,
    sign,
    verify_log,
)
from jukinet.cli.audit import verify_databases
from jukinet.domain.identity import NodeId, Role
from jukinet.pki import paths_for
from jukinet.rpc.audit_servicer import checkpoint_to_pb
from jukinet.rpc.checkpointer import Checkpointer
from jukinet.rpc.runtime import RunningNode
from jukinet.services.ports import AccessEntry
from jukinet.storage import SqlTx, Store, audit_repo, queries
from jukinet.storage.schema import audit_alert, audit_witnessed
from jukinet.wire.v1 import audit_pb2, audit_pb2_grpc, register_pb2, register_pb2_grpc, types_pb2
from tests.helpers.nodes import change, channel, eventually, start

MUNICIPALITY = NodeId(Role.MUNICIPALITY, "132080")
PREFECTURE = NodeId(Role.PREFECTURE, "13")
ADMIN = "jukinet://operator/prefecture-13/t"  # security-admin
VIEWER = "jukinet://operator/prefecture-13/viewer"


def checkpointer(node: RunningNode) -> Checkpointer:
    for task in node.parts.tasks:
        owner = getattr(task, "__self__", None)
        if isinstance(owner, Checkpointer):
            return owner
    raise AssertionError("the node runs no checkpointer")


def sample(node: RunningNode, name: str, **labels: str) -> float:
    return node.ctx.metrics.registry.get_sample_value(name, labels) or 0.0


# -- the chain itself ---------------------------------------------------------------------------------


async def test_the_chain_stays_whole_when_savepoints_of_a_group_commit_roll_back(database_url: str) -> None:
    store = Store(database_url)

    def entry(i: int) -> AccessEntry:
        return AccessEntry(at=dt.datetime.now(dt.UTC), request_id=f"r{i}", peer="p", method="m", outcome="OK")

    def good(i: int) -> Callable[..., None]:
        return lambda conn: SqlTx(conn).append_access([entry(i), entry(i + 1000)])

    def bad(conn: object) -> None:
        SqlTx(conn).append_access([entry(-1)])  # type: ignore[arg-type]
        raise RuntimeError("this job's savepoint rolls back")

    try:
        jobs = [store.write(bad) if i % 3 == 0 else store.write(good(i)) for i in range(60)]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        committed = sum(1 for o in outcomes if not isinstance(o, BaseException))
        report = await store.read(lambda conn: verify_log(audit_repo.log_rows(conn), []))
        assert report.ok, report.problem
        assert report.entries == 2 * committed == 80
    finally:
        store.close()


# -- a network ----------------------------------------------------------------------------------------


@dataclass
class Net:
    pki: Path
    center: RunningNode
    prefecture: RunningNode
    municipality: RunningNode
    urls: dict[str, str]


@pytest.fixture
async def net(pki_dir: Path, db_factory: Callable[[str], str], tmp_path: Path) -> AsyncIterator[Net]:
    urls = {"center": db_factory("center"), "prefecture": db_factory("prefecture")}
    urls["municipality"] = f"sqlite:///{tmp_path / 'm.db'}"
    center = await start("center", "", urls["center"], pki_dir)
    prefecture = await start("prefecture", "13", urls["prefecture"], pki_dir, upstream=center.address)
    municipality = await start("municipality", "132080", urls["municipality"], pki_dir, upstream=prefecture.address)
    try:
        await eventually(lambda: municipality.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
        yield Net(pki_dir, center, prefecture, municipality, urls)
    finally:
        for node in (municipality, prefecture, center):
            await node.stop()


async def record(net: Net, prefix: str, count: int) -> None:
    async with channel(net.pki, "jukinet://register/132080", net.municipality.address) as ch:
        stub = register_pb2_grpc.RegisterServiceStub(ch)
        for i in range(count):
            request = register_pb2.RecordChangeRequest(
                change=change(f"{prefix}{i}", types_pb2.CHANGE_REASON_BIRTH, effective="1980-04-01")
            )
            reply = await stub.RecordChange(request, timeout=10)
            assert reply.result.resident_code


async def relayed(net: Net, count: int) -> None:
    await eventually(lambda: net.center.ctx.store.read(lambda c: queries.digest(c, "132080").head_seq >= count))


async def test_checkpoints_are_countersigned_up_the_tree_and_the_logs_verify(net: Net) -> None:
    await record(net, "a", 4)
    await relayed(net, 4)
    first = await checkpointer(net.municipality).cycle(force=True)
    assert first is not None
    assert first.countersigned
    assert first.witness == PREFECTURE.uri
    await record(net, "b", 3)
    await relayed(net, 7)
    second = await checkpointer(net.municipality).cycle(force=True)
    assert second is not None
    assert second.countersigned
    assert second.checkpoint.size > first.checkpoint.size
    prefecture = await checkpointer(net.prefecture).cycle(force=True)
    assert prefecture is not None
    assert prefecture.witness == "jukinet://center"
    center = await checkpointer(net.center).cycle(force=True)
    assert center is not None
    assert not center.countersigned  # the center has no parent: signed and stored only
    assert sample(net.prefecture, "jukinet_audit_checkpoints_total", event="witnessed") == 2
    assert sample(net.municipality, "jukinet_audit_checkpoints_total", event="countersigned") == 2

    ca_reports = [
        verify_databases(net.urls["municipality"], net.urls["prefecture"]),
        verify_databases(net.urls["prefecture"], net.urls["center"]),
        verify_databases(net.urls["center"]),
    ]
    for report in ca_reports:
        assert report.ok, report.problem
    assert ca_reports[0].witnessed == 2
    assert ca_reports[0].countersigned == 2
    assert ca_reports[1].witnessed == 1


async def test_a_checkpoint_with_a_bad_signature_or_from_a_stranger_is_refused_without_a_flag(net: Net) -> None:
    await record(net, "s", 2)
    rows = await net.municipality.ctx.store.read(lambda c: list(audit_repo.log_rows(c)))
    size = len(rows)
    digests = b"".join(entry_digest(r.values) for r in rows)
    wrong_key = paths_for(net.pki, PREFECTURE)
    cp = Checkpoint(MUNICIPALITY.uri, size, rows[-1].entry_hash, time.time_ns() // 1000)
    forged = SignedCheckpoint(
        cp, sign(wrong_key.key.read_bytes(), cp.to_bytes()), paths_for(net.pki, MUNICIPALITY).cert.read_bytes()
    )
    request = audit_pb2.SubmitCheckpointRequest(
        checkpoint=checkpoint_to_pb(forged), base_size=0, base_head=GENESIS, entry_digests=digests
    )
    async with channel(net.pki, MUNICIPALITY.uri, net.prefecture.address) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SubmitCheckpoint(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "does not verify" in (refused.value.details() or "")
        request.entry_digests = digests[:-1]
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await stub.SubmitCheckpoint(request, timeout=10)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with channel(net.pki, MUNICIPALITY.uri, net.center.address) as ch:  # not its parent
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await audit_pb2_grpc.AuditServiceStub(ch).SubmitCheckpoint(request, timeout=10)
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sample(net.prefecture, "jukinet_audit_flagged_children") == 0
    assert (await checkpointer(net.municipality).cycle(force=True) or forged).countersigned


# -- tampering with a stopped node's database ------------------------------------------------------------


def forge(path: Path, pki_dir: Path | None = None) -> None:
    """An insider rewrites the log self-consistently: the first entry that names residents loses them, every
    hash after it is recomputed. With `pki_dir`, the node's own checkpoints are re-signed with its key."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("BEGIN IMMEDIATE")
    rows = db.execute(
        "SELECT id, at_us, request_id, direction, peer, method, purpose, subjects, outcome FROM access_log ORDER BY id"
    ).fetchall()
    victim = next(r[0] for r in rows if r[7])
    head, heads = GENESIS, []
    for r in rows:
        values: EntryValues = (r[1], r[2], r[3], r[4], r[5], r[6], "" if r[0] == victim else r[7], r[8])
        new = append(head, values)
        db.execute(
            "UPDATE access_log SET subjects = ?, prev_hash = ?, entry_hash = ? WHERE id = ?",
            (values[6], head, new, r[0]),
        )
        head = new
        heads.append(new)
    if pki_dir is not None:
        paths = paths_for(pki_dir, MUNICIPALITY)
        sizes = [s for (s,) in db.execute("SELECT size FROM audit_checkpoint ORDER BY id")]
        db.execute("DELETE FROM audit_checkpoint")
        for size in sizes:
            cp = Checkpoint(MUNICIPALITY.uri, size, heads[size - 1], time.time_ns() // 1000)
            db.execute(
                "INSERT INTO audit_checkpoint (node, size, last_id, head, at_us, signature, signer_cert, witness)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, '')",
                (cp.node, size, rows[size - 1][0], cp.head, cp.at_us, sign(paths.key.read_bytes(), cp.to_bytes()),
                 paths.cert.read_bytes()),
            )  # fmt: skip
    db.execute("COMMIT")
    db.close()


@pytest.fixture(scope="module")
def stopped_network(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(municipality.db, prefecture.db) of a network that relayed, checkpointed twice and stopped."""
    root = tmp_path_factory.mktemp("audited")

    async def build() -> None:
        urls = {n: f"sqlite:///{root / (n + '.db')}" for n in ("center", "prefecture", "municipality")}
        center = await start("center", "", urls["center"], pki_dir)
        prefecture = await start("prefecture", "13", urls["prefecture"], pki_dir, upstream=center.address)
        municipality = await start("municipality", "132080", urls["municipality"], pki_dir, upstream=prefecture.address)
        net = Net(pki_dir, center, prefecture, municipality, urls)
        try:
            await eventually(lambda: municipality.ctx.store.read(lambda c: queries.counts(c).free_codes > 0))
            for round_ in range(2):
                await record(net, f"r{round_}-", 4)
                await relayed(net, 4 * (round_ + 1))
                signed = await checkpointer(municipality).cycle(force=True)
                assert signed is not None
                assert signed.countersigned
        finally:
            for node in (municipality, prefecture, center):
                await node.stop()

    asyncio.run(build())
    return root / "municipality.db", root / "prefecture.db"


def tampered(source: Path, tmp_path: Path, *statements: tuple[str, tuple[object, ...]]) -> Path:
    copy = tmp_path / "m.db"
    shutil.copyfile(source, copy)
    db = sqlite3.connect(copy, isolation_level=None)
    for sql, params in statements:
        db.execute(sql, params)
    db.close()
    return copy


def last_checkpoint_id(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        last_id, size = db.execute("SELECT last_id, size FROM audit_checkpoint ORDER BY id DESC LIMIT 1").fetchone()
        return int(last_id), int(size)
    finally:
        db.close()


def test_the_untouched_logs_verify_with_the_cli(stopped_network: tuple[Path, Path], pki_dir: Path) -> None:
    municipality, prefecture = stopped_network
    result = subprocess.run(
        [sys.executable, "-m", "jukinet.cli.main", "audit", "verify", "--database", str(municipality),
         "--parent-database", str(prefecture), "--pki-dir", str(pki_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: jukinet://municipality/132080:")
    assert "2 checkpoints (2 countersigned), 2 checkpoints witnessed by the parent" in result.stdout


@pytest.mark.parametrize("kind", ["byte", "delete", "reorder", "truncate"])
def test_audit_verify_finds_each_tampering(kind: str, stopped_network: tuple[Path, Path], tmp_path: Path) -> None:
    source, parent = stopped_network
    last_id, _ = last_checkpoint_id(source)
    middle = 3
    cases: dict[str, list[tuple[str, tuple[object, ...]]]] = {
        "byte": [("UPDATE access_log SET request_id = 'X' || substr(request_id, 2) WHERE id = ?", (middle,))],
        "delete": [("DELETE FROM access_log WHERE id = ?", (middle,))],
        "reorder": [
            ("UPDATE access_log SET id = -1 WHERE id = ?", (middle,)),
            ("UPDATE access_log SET id = ? WHERE id = ?", (middle, middle + 1)),
            ("UPDATE access_log SET id = ? WHERE id = -1", (middle + 1,)),
        ],
        "truncate": [("DELETE FROM access_log WHERE id > ?", (last_id - 2,))],
    }
    copy = tampered(source, tmp_path, *cases[kind])
    report = verify_databases(str(copy), str(parent))
    assert not report.ok
    problem = report.problem or ""
    if kind == "byte":
        assert report.bad_entry_id == middle
        assert "content does not match its hash" in problem
    elif kind == "delete":
        assert report.bad_entry_id == middle + 1
        assert "deleted, inserted or reordered" in problem
    elif kind == "reorder":
        assert report.bad_entry_id == middle
        assert "reordered" in problem
    else:
        assert "tail was truncated" in problem
        # Even with the node's own checkpoints deleted too, the parent's countersigned ones remain.
        (tmp_path / "again").mkdir()
        copy2 = tampered(copy, tmp_path / "again", ("DELETE FROM audit_checkpoint", ()))
        again = verify_databases(str(copy2), str(parent), node=MUNICIPALITY.uri)
        assert "checkpoint witnessed by jukinet://prefecture/13" in (again.problem or "")
        assert "truncated" in (again.problem or "")


def test_a_self_consistent_forgery_is_caught_by_the_parents_countersigned_checkpoints(
    stopped_network: tuple[Path, Path], tmp_path: Path, pki_dir: Path
) -> None:
    source, parent = stopped_network
    copy = tmp_path / "forged.db"
    shutil.copyfile(source, copy)
    forge(copy, pki_dir)  # rewritten and re-signed with the node's own key
    alone = verify_databases(str(copy))
    assert alone.ok, "a self-consistent forgery cannot be told from the node's database alone"
    report = verify_databases(str(copy), str(parent))
    assert not report.ok
    assert "checkpoint witnessed by jukinet://prefecture/13 at size" in (report.problem or "")
    assert "rewritten" in (report.problem or "")


# -- a flagged child --------------------------------------------------------------------------------------


async def test_a_child_whose_log_no_longer_extends_is_flagged_and_refused_until_acknowledged(net: Net) -> None:
    m = checkpointer(net.municipality)
    await record(net, "a", 3)
    witnessed = await m.cycle(force=True)
    assert witnessed is not None
    assert witnessed.countersigned
    forge(Path(net.urls["municipality"].removeprefix("sqlite:///")))  # the live log, behind the node's back
    await record(net, "b", 2)

    refused = await m.cycle(force=True)
    assert refused is not None
    assert not refused.countersigned
    assert sample(net.prefecture, "jukinet_audit_flagged_children") == 1
    assert sample(net.prefecture, "jukinet_audit_checkpoints_total", event="flagged") == 1
    assert sample(net.municipality, "jukinet_audit_log_diverged") == 1
    alerts = await net.prefecture.ctx.store.read(lambda c: list(c.execute(audit_alert.select())))
    assert [a.child for a in alerts] == [MUNICIPALITY.uri]
    assert "rewritten" in alerts[0].reason

    await m.cycle(force=True)  # refused again: flagged until acknowledged
    assert sample(net.prefecture, "jukinet_refused_calls_total", reason="AUDIT_FLAGGED") == 1
    assert sample(net.prefecture, "jukinet_audit_flagged_children") == 1

    ack = audit_pb2.AcknowledgeAuditAlertRequest(node=MUNICIPALITY.uri, note="restored from backup; investigated")
    async with channel(net.pki, VIEWER, net.prefecture.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as viewer:
            await audit_pb2_grpc.AuditServiceStub(ch).AcknowledgeAuditAlert(ack, timeout=10)
        assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with channel(net.pki, ADMIN, net.prefecture.address) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        reply = await stub.AcknowledgeAuditAlert(ack, timeout=10)
        assert "rewritten" in reply.reason
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await stub.AcknowledgeAuditAlert(ack, timeout=10)
        assert twice.value.code() == grpc.StatusCode.NOT_FOUND
    assert sample(net.prefecture, "jukinet_audit_flagged_children") == 0

    rebased = await m.cycle(force=True)
    assert rebased is not None
    assert rebased.countersigned
    assert sample(net.municipality, "jukinet_audit_log_diverged") == 0
    rows = await net.prefecture.ctx.store.read(lambda c: list(c.execute(audit_witnessed.select())))
    assert [r.rebased for r in rows] == [False, True]
    await record(net, "c", 1)
    after = await m.cycle(force=True)
    assert after is not None
    assert after.countersigned  # business as usual on the new baseline

    # The rewrite stays visible offline: the node's own countersigned checkpoint from before disagrees.
    report = verify_databases(net.urls["municipality"], net.urls["prefecture"])
    assert not report.ok
    assert f"checkpoint at size {witnessed.checkpoint.size}" in (report.problem or "")


async def test_a_parent_that_lost_its_witnessed_checkpoints_asks_for_the_chain_from_genesis(net: Net) -> None:
    m = checkpointer(net.municipality)
    await record(net, "a", 2)
    first = await m.cycle(force=True)
    assert first is not None
    assert first.countersigned
    await net.prefecture.ctx.store.write(lambda c: c.execute(audit_witnessed.delete()))  # a restored backup
    await record(net, "b", 2)
    second = await m.cycle(force=True)  # base past what the parent holds: ABORTED, then from genesis
    assert second is not None
    assert second.countersigned
    assert sample(net.prefecture, "jukinet_refused_calls_total", reason="AUDIT_RESEND_FROM_GENESIS") == 1
    assert sample(net.prefecture, "jukinet_audit_flagged_children") == 0
    report = verify_databases(net.urls["municipality"], net.urls["prefecture"])
    assert report.ok, report.problem
    assert report.witnessed == 1


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])  # SQLite: one writer
async def test_two_writers_on_one_postgresql_database_keep_one_chain(db_factory: Callable[[str], str]) -> None:
    """Center replicas on one PostgreSQL database (ARCHITECTURE §8) append to one access log: each reads the
    chain head under a lock held to its commit, so the chain never forks (it did: a false tamper alarm)."""
    url = db_factory("center")
    first, second = Store(url), Store(url)
    try:

        def append(n: int) -> Callable[[Connection], None]:
            entry = AccessEntry(at=dt.datetime.now(dt.UTC), request_id=f"r{n}", peer="p", method="/m", outcome="OK")
            return lambda conn: SqlTx(conn).append_access([entry])

        await asyncio.gather(*((first if n % 2 else second).write(append(n)) for n in range(100)))
        with first.engine.connect() as conn:
            result = verify_log(list(audit_repo.log_rows(conn)), [])
        assert result.ok, result.summary()
        assert result.entries == 100
    finally:
        first.close()
        second.close()
