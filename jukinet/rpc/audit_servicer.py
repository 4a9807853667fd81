"""AuditService, served by prefectures (to their municipalities) and the center (to prefectures): verifies
a child's signed checkpoint, checks that it extends the one witnessed last, countersigns and stores it.
A child whose log stopped extending is flagged (metric + log event) and refused until acknowledged."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import structlog
from cryptography import x509
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection

from jukinet.audit import (
    DIGEST_SIZE,
    GENESIS,
    Checkpoint,
    Position,
    SignatureProblem,
    SignedCheckpoint,
    check_extension,
    countersign_bytes,
    sign,
    split_digests,
)
from jukinet.audit.errors import AuditBadSignature, AuditDiverged, AuditFlagged, AuditResendFromGenesis
from jukinet.domain.errors import InvalidField, NotFoundError, WrongOrigin
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.validate import text
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import CertPaths
from jukinet.rpc import authz
from jukinet.rpc.guard import Guard
from jukinet.services.ports import AccessEntry
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, Store, audit_repo
from jukinet.storage.rows import from_us, to_us
from jukinet.wire.v1 import audit_pb2, audit_pb2_grpc

log = structlog.get_logger(__name__)
MAX_SIGNATURE_BYTES = 256
MAX_CERT_BYTES = 16 * 1024
MAX_SIZE = 2**62


def timestamp_us(at_us: int) -> Timestamp:
    return Timestamp(seconds=at_us // 1_000_000, nanos=at_us % 1_000_000 * 1000)


def us_of(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def checkpoint_from_pb(pb: audit_pb2.Checkpoint) -> SignedCheckpoint:
    """Raises InvalidField on a malformed checkpoint (not on a bad signature: that is checked later)."""
    if not 0 <= pb.size <= MAX_SIZE:
        raise InvalidField("checkpoint.size", "must be between 0 and 2^62")
    if len(pb.head) != DIGEST_SIZE:
        raise InvalidField("checkpoint.head", f"must be {DIGEST_SIZE} bytes")
    if not 0 < len(pb.signature) <= MAX_SIGNATURE_BYTES:
        raise InvalidField("checkpoint.signature", f"must be 1 to {MAX_SIGNATURE_BYTES} bytes")
    if not 0 < len(pb.signer_certificate) <= MAX_CERT_BYTES:
        raise InvalidField("checkpoint.signer_certificate", f"must be a PEM certificate up to {MAX_CERT_BYTES} bytes")
    if not pb.HasField("signed_time") or pb.signed_time.nanos % 1000:
        raise InvalidField("checkpoint.signed_time", "is required, with microsecond precision")
    return SignedCheckpoint(
        Checkpoint(pb.node, pb.size, pb.head, us_of(pb.signed_time)), pb.signature, pb.signer_certificate
    )


def checkpoint_to_pb(signed: SignedCheckpoint) -> audit_pb2.Checkpoint:
    cp = signed.checkpoint
    return audit_pb2.Checkpoint(
        node=cp.node,
        size=cp.size,
        head=cp.head,
        signed_time=timestamp_us(cp.at_us),
        signature=signed.signature,
        signer_certificate=signed.signer_cert,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, node: NodeId, store: Store, guard: Guard, metrics: NodeMetrics, paths: CertPaths) -> None:
        self._node = node
        self._store = store
        self._guard = guard
        self._metrics = metrics
        self._paths = paths
        self._locks: dict[str, asyncio.Lock] = {}
        metrics.audit_flagged_children.set(store.read_sync(audit_repo.active_alerts))

    def _check_child(self, caller: NodeId) -> None:
        if self._node.role is Role.PREFECTURE:
            if caller.role is not Role.MUNICIPALITY or caller.prefecture != self._node.code:
                raise WrongOrigin(f"{caller.uri} is not a municipality of prefecture {self._node.code}")
        elif caller.role is not Role.PREFECTURE:
            raise WrongOrigin(f"{caller.uri} is not a prefecture")

    async def SubmitCheckpoint(
        self, request: audit_pb2.SubmitCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.SubmitCheckpointResponse:
        async with self._guard.call(context, authz.SUBMIT_CHECKPOINT) as call:
            self._check_child(call.caller)
            child = call.caller.uri
            signed = checkpoint_from_pb(request.checkpoint)
            cp = signed.checkpoint
            if cp.node != child:
                raise InvalidField("checkpoint.node", f"must be the caller's identity {child}")
            if not 0 <= request.base_size <= cp.size:
                raise InvalidField("base_size", "must be between 0 and checkpoint.size")
            if len(request.base_head) != DIGEST_SIZE or (request.base_size == 0 and request.base_head != GENESIS):
                raise InvalidField("base_head", f"must be {DIGEST_SIZE} bytes (zeros for base_size 0)")
            if len(request.entry_digests) != (cp.size - request.base_size) * DIGEST_SIZE:
                raise InvalidField("entry_digests", f"must hold {cp.size - request.base_size} digests of 32 bytes")
            try:
                signed.check_signature(x509.load_pem_x509_certificate(self._paths.ca.read_bytes()))
            except SignatureProblem as problem:
                raise AuditBadSignature(str(problem)) from None
            async with self._locks.setdefault(child, asyncio.Lock()):
                reply = await self._witness(call.info, signed, request)
            return reply
        raise AssertionError("unreachable: the guard aborts on every error")

    async def _witness(
        self, info: CallInfo, signed: SignedCheckpoint, request: audit_pb2.SubmitCheckpointRequest
    ) -> audit_pb2.SubmitCheckpointResponse:
        cp = signed.checkpoint
        state = await self._store.read(lambda conn: audit_repo.child_state(conn, cp.node, cp, signed.signature))
        if state.replay is not None:  # already witnessed: a retry after a lost answer
            return _response(state.replay)
        alert = state.alert
        if alert is not None and alert.active:
            raise AuditFlagged(
                f"{cp.node} is flagged since {from_us(alert.flagged_us).isoformat()} ({alert.reason}); an operator of"
                f" {self._node.uri} must acknowledge before checkpoints are accepted again"
            )
        base = Position(request.base_size, request.base_head)
        digests = split_digests(request.entry_digests)
        # After an acknowledged alert the next checkpoint becomes the new baseline: only its own consistency
        # (its digests lead from its base to its head) is checked.
        rebase = alert is not None and alert.rebase_pending
        witnessed = base if rebase else state.witnessed
        verdict = await asyncio.to_thread(check_extension, witnessed, base, digests, Position(cp.size, cp.head))
        if verdict.resend_from_genesis:
            raise AuditResendFromGenesis(verdict.problem or "")
        now_us = to_us(dt.datetime.now(dt.UTC))
        if verdict.problem is not None:
            await self._store.write(lambda conn: audit_repo.insert_alert(conn, cp.node, verdict.problem or "", now_us))
            self._metrics.audit_flagged_children.inc()
            self._metrics.audit_checkpoints.labels("flagged").inc()
            log.error("audit_child_flagged", child=cp.node, size=cp.size, reason=verdict.problem)
            raise AuditDiverged(
                f"{cp.node} is flagged: {verdict.problem}. No checkpoint is accepted until an operator of"
                f" {self._node.uri} acknowledges"
            )
        witness = self._node.uri
        countersignature = sign(self._paths.key.read_bytes(), countersign_bytes(cp, signed.signature, witness, now_us))
        stored = SignedCheckpoint(
            cp, signed.signature, signed.signer_cert, witness, now_us, countersignature, self._paths.cert.read_bytes()
        )
        entry = AccessEntry(
            at=from_us(now_us), request_id=info.request_id, peer=info.peer, method=info.method, outcome="OK"
        )

        def persist(conn: Connection) -> None:
            audit_repo.insert_witnessed(conn, stored, rebased=rebase)
            if rebase and alert is not None:
                audit_repo.mark_rebased(conn, alert.id, now_us)
            SqlTx(conn).append_access([entry])

        await self._store.write(persist)
        self._metrics.audit_checkpoints.labels("witnessed").inc()
        if rebase:
            log.warning("audit_child_rebased", child=cp.node, size=cp.size)
        return _response(stored)

    async def AcknowledgeAuditAlert(
        self, request: audit_pb2.AcknowledgeAuditAlertRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.AcknowledgeAuditAlertResponse:
        async with self._guard.call(context, authz.ACKNOWLEDGE_AUDIT_ALERT) as call:
            authz.check_operator_of(call.caller, self._node)
            child = text("node", request.node, max_chars=200)
            note = text("note", request.note, max_chars=200, required=False)
            now = dt.datetime.now(dt.UTC)
            entry = AccessEntry(
                at=now, request_id=call.info.request_id, peer=call.info.peer, method=call.info.method, outcome="OK"
            )

            def persist(conn: Connection) -> audit_repo.Alert | None:
                alert = audit_repo.acknowledge(conn, child, call.caller.uri, note, to_us(now))
                if alert is not None:
                    SqlTx(conn).append_access([entry])
                return alert

            async with self._locks.setdefault(child, asyncio.Lock()):
                alert = await self._store.write(persist)
            if alert is None:
                raise NotFoundError(f"{child} has no unacknowledged audit alert at {self._node.uri}")
            self._metrics.audit_flagged_children.dec()
            log.warning("audit_alert_acknowledged", child=child, by=call.caller.uri, reason=alert.reason, note=note)
            return audit_pb2.AcknowledgeAuditAlertResponse(
                reason=alert.reason, flagged_time=timestamp_us(alert.flagged_us)
            )
        raise AssertionError("unreachable: the guard aborts on every error")


def _response(signed: SignedCheckpoint) -> audit_pb2.SubmitCheckpointResponse:
    return audit_pb2.SubmitCheckpointResponse(
        witness=signed.witness,
        witnessed_time=timestamp_us(signed.witnessed_us),
        countersignature=signed.countersignature,
        witness_certificate=signed.witness_cert,
    )
