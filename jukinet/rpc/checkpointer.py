"""Background task of every node: signs a checkpoint of its access log every N entries or T seconds
(whichever comes first, only when there are new entries), stores it, and submits it to the parent with the
digests since the last witnessed checkpoint; stores the parent's countersignature. The center has no
parent: its checkpoints are signed and stored only."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509

from jukinet.audit import (
    GENESIS,
    Checkpoint,
    Position,
    SignatureProblem,
    SignedCheckpoint,
    parent_of,
    sign,
)
from jukinet.domain.identity import NodeId
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import CertPaths, channel_options
from jukinet.rpc.audit_servicer import checkpoint_to_pb, us_of
from jukinet.rpc.switch import LinkSwitch
from jukinet.storage import Store, audit_repo
from jukinet.storage.rows import to_us
from jukinet.wire.v1 import audit_pb2, audit_pb2_grpc

log = structlog.get_logger(__name__)
EVERY_ENTRIES = 10_000
INTERVAL_S = 60.0
POLL_S = 1.0
RPC_TIMEOUT_S = 60.0
MAX_DIGESTS = 1_000_000  # per checkpoint (32 MB of digests); a longer gap is closed by several checkpoints
RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class _Submission:
    checkpoint: audit_repo.OwnCheckpoint
    base: Position
    digests: bytes


class Checkpointer:
    def __init__(
        self,
        *,
        node: NodeId,
        store: Store,
        paths: CertPaths,
        metrics: NodeMetrics,
        upstream: str = "",
        credentials: Callable[[], grpc.ChannelCredentials] | None = None,
        switch: LinkSwitch | None = None,
        every: int = EVERY_ENTRIES,
        interval_s: float = INTERVAL_S,
        poll_s: float = POLL_S,
    ) -> None:
        self._node = node
        parent = node.upstream
        self._channel_options = channel_options(parent) if parent is not None else ()
        self._store = store
        self._paths = paths
        self._metrics = metrics
        self._upstream = upstream if credentials is not None else ""
        self._credentials = credentials
        self._switch = switch
        self.every = every
        self.interval_s = interval_s
        self.poll_s = poll_s
        self._parent = parent_of(node.uri)
        self._lock = asyncio.Lock()
        self._from_genesis = False
        self._refused_until = 0.0
        self._last_signed = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a database or key problem: report it, keep the node running
                log.error("audit_checkpoint_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_s)

    async def cycle(self, *, force: bool = False) -> SignedCheckpoint | None:
        """One round: sign a new checkpoint when due (or `force`d and there are new entries), then submit
        the pending one. Returns the latest own checkpoint as stored after the round."""
        async with self._lock:
            state = await self._store.read(audit_repo.own_state)
            pending = state.latest if state.latest is not None and not state.latest.signed.countersigned else None
            if pending is None or not self._upstream:
                due = state.new_entries >= self.every or (
                    state.new_entries > 0 and time.monotonic() - self._last_signed >= self.interval_s
                )
                if state.new_entries > 0 and (force or due):
                    await self._sign_next(state.latest, state.new_entries)
                    state = await self._store.read(audit_repo.own_state)
                    pending = state.latest if self._upstream else None
            if pending is not None and self._upstream and (force or time.monotonic() >= self._refused_until):
                await self._submit(pending, state.witnessed)
            latest = (await self._store.read(audit_repo.own_state)).latest
            return latest.signed if latest else None

    async def _sign_next(self, latest: audit_repo.OwnCheckpoint | None, new_entries: int) -> None:
        after_id = latest.last_id if latest else 0
        size = (latest.signed.checkpoint.size if latest else 0) + min(new_entries, MAX_DIGESTS)
        found = await self._store.read(lambda conn: audit_repo.entry_at(conn, after_id, min(new_entries, MAX_DIGESTS)))
        if found is None:
            return  # rows vanished since they were counted (the log was tampered with): the next round sees it
        last_id, head = found
        signed = self._sign(Checkpoint(self._node.uri, size, head, to_us(dt.datetime.now(dt.UTC))))
        await self._store.write(lambda conn: audit_repo.insert_own(conn, signed, last_id))
        self._last_signed = time.monotonic()
        self._metrics.audit_checkpoints.labels("signed").inc()
        log.info("audit_checkpoint_signed", size=size, head=head.hex()[:16])

    def _sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        # Key and certificate re-read per signature: renewals need no restart.
        return SignedCheckpoint(
            checkpoint, sign(self._paths.key.read_bytes(), checkpoint.to_bytes()), self._paths.cert.read_bytes()
        )

    async def _prepare(
        self, pending: audit_repo.OwnCheckpoint, witnessed: audit_repo.OwnCheckpoint | None
    ) -> _Submission:
        """The digests from the last witnessed checkpoint (or from the first entry) up to `pending`."""
        base_id, base = 0, Position(0, GENESIS)
        if witnessed is not None and not self._from_genesis:
            base_id, base = (
                witnessed.last_id,
                Position(witnessed.signed.checkpoint.size, witnessed.signed.checkpoint.head),
            )
            stored = await self._store.read(lambda conn: audit_repo.entry_hash_of(conn, base_id))
            if stored != base.head:
                self._diverged(
                    f"the entry at the witnessed size {base.size} is gone or changed; resending from genesis"
                )
                base_id, base = 0, Position(0, GENESIS)
        run = await self._store.read(lambda conn: audit_repo.digests_after(conn, base_id, base.head, pending.last_id))
        if run.first_inconsistent_id is not None:
            self._diverged(f"entry id {run.first_inconsistent_id} does not match its stored hashes")
        cp = pending.signed.checkpoint
        if base.size + run.count != cp.size or run.stored_head != cp.head:
            # Rows were removed or re-hashed under the pending checkpoint: sign what the log holds now.
            signed = self._sign(
                Checkpoint(self._node.uri, base.size + run.count, run.stored_head, to_us(dt.datetime.now(dt.UTC)))
            )
            last_id = run.last_id
            checkpoint_id = await self._store.write(lambda conn: audit_repo.insert_own(conn, signed, last_id))
            self._metrics.audit_checkpoints.labels("signed").inc()
            pending = audit_repo.OwnCheckpoint(checkpoint_id, last_id, signed)
        return _Submission(pending, base, run.digests)

    def _diverged(self, problem: str) -> None:
        self._metrics.audit_log_diverged.set(1)
        log.error("audit_log_diverged", problem=problem)

    async def _submit(self, pending: audit_repo.OwnCheckpoint, witnessed: audit_repo.OwnCheckpoint | None) -> None:
        if self._switch is not None and self._switch.cut_off:
            return
        assert self._credentials is not None  # noqa: S101 - set whenever there is an upstream
        for _attempt in range(2):  # a second time from genesis when the parent asks for it
            submission = await self._prepare(pending, witnessed)
            pending = submission.checkpoint
            request = audit_pb2.SubmitCheckpointRequest(
                checkpoint=checkpoint_to_pb(pending.signed),
                base_size=submission.base.size,
                base_head=submission.base.head,
                entry_digests=submission.digests,
            )
            try:
                async with grpc.aio.secure_channel(
                    self._upstream, self._credentials(), options=self._channel_options
                ) as channel:
                    reply = await audit_pb2_grpc.AuditServiceStub(channel).SubmitCheckpoint(
                        request, timeout=RPC_TIMEOUT_S
                    )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.ABORTED and not self._from_genesis:
                    self._from_genesis = True
                    continue
                self._refused(error)
                return
            await self._store_countersignature(submission, reply)
            return

    def _refused(self, error: grpc.aio.AioRpcError) -> None:
        if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
            self._refused_until = time.monotonic() + self.interval_s
            self._metrics.audit_checkpoints.labels("refused").inc()
            self._metrics.audit_log_diverged.set(1)
            log.error("audit_checkpoint_refused", parent=self._parent, code=error.code().name, detail=error.details())
        else:
            self._refused_until = time.monotonic() + RETRY_S
            log.warning(
                "audit_checkpoint_not_submitted", parent=self._parent, code=error.code().name, detail=error.details()
            )

    async def _store_countersignature(self, submission: _Submission, reply: audit_pb2.SubmitCheckpointResponse) -> None:
        signed = submission.checkpoint.signed
        countersigned = SignedCheckpoint(
            signed.checkpoint,
            signed.signature,
            signed.signer_cert,
            reply.witness,
            us_of(reply.witnessed_time),
            reply.countersignature,
            reply.witness_certificate,
        )
        try:
            countersigned.check_countersignature(x509.load_pem_x509_certificate(self._paths.ca.read_bytes()))
        except SignatureProblem as problem:
            log.error("audit_countersignature_invalid", parent=self._parent, problem=str(problem))
            return
        await self._store.write(
            lambda conn: audit_repo.set_countersigned(conn, submission.checkpoint.id, countersigned)
        )
        self._from_genesis = False
        self._refused_until = 0.0
        self._metrics.audit_log_diverged.set(0)
        self._metrics.audit_checkpoints.labels("countersigned").inc()
        log.info("audit_checkpoint_countersigned", size=signed.checkpoint.size, witness=reply.witness)
