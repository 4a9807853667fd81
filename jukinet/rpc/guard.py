"""Every served call passes one guard: identity from the client certificate, the role table, error
mapping to status codes, metrics and the access-log entry of a refused or failed call."""

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import structlog

from jukinet.domain.errors import (
    CertificateExpired,
    CertificateRevoked,
    InvalidField,
    JukinetError,
    UnauthenticatedError,
    WrongRole,
)
from jukinet.domain.identity import NodeId, Role
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import PeerCertificate, RevocationList, peer_identity
from jukinet.rpc.authz import check_operator_role, crosses_links
from jukinet.rpc.error_details import refusal_trailer
from jukinet.rpc.switch import LinkSwitch
from jukinet.services.ports import AccessEntry
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, Store

log = structlog.get_logger(__name__)
REQUEST_ID_KEY = "x-request-id"


class AlreadyLogged(Exception):
    """Raised by a servicer for an error whose access-log entry the use case already wrote."""

    def __init__(self, error: JukinetError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class Call:
    """The guarded call: who (parsed identity) and the CallInfo handed to use cases."""

    caller: NodeId
    info: CallInfo
    switch: LinkSwitch | None = None
    recheck: Callable[[], None] | None = None

    def check_open(self) -> None:
        """For streams, on every message: raises CutOff (UNAVAILABLE) once the node is cut off mid-stream, and
        UNAUTHENTICATED once the caller's certificate is revoked or expires (a stream may stay open for days)."""
        if self.switch is not None:
            self.switch.check()
        if self.recheck is not None:
            self.recheck()


class Guard:
    def __init__(
        self,
        store: Store,
        metrics: NodeMetrics,
        policy: dict[str, frozenset[Role]],
        switch: LinkSwitch | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._switch = switch
        self._revocations = revocations

    @asynccontextmanager
    async def call(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, *, purpose: str = ""
    ) -> AsyncIterator[Call]:
        started = time.perf_counter()
        short = method.rsplit("/", 1)[-1]
        peer = ""
        request_id = _request_id(context)
        code = grpc.StatusCode.OK
        try:
            caller, cert = peer_identity(context)
            peer = caller.uri
            self._check_certificate(cert, caller, method)
            allowed = self._policy.get(method, frozenset())
            if caller.role not in allowed:
                roles = ", ".join(sorted(r.value for r in allowed)) or "nobody"
                raise WrongRole(f"role {caller.role.value} may not call {short} on this node (allowed: {roles})")
            link_switch = self._switch if crosses_links(method, self._policy) else None
            if link_switch is not None:
                link_switch.check()
            yield Call(
                caller,
                CallInfo(peer=peer, request_id=request_id, method=method),
                link_switch,
                partial(self._check_certificate, cert, caller, method),
            )
        except AlreadyLogged as logged:
            code = grpc.StatusCode[logged.error.code]
            message = str(logged.error)
            trailer = refusal_trailer(code, message, request_id=request_id, error=logged.error)
            await context.abort(code, message, trailing_metadata=trailer)
        except JukinetError as error:
            code = grpc.StatusCode[error.code]
            self._metrics.refused_calls.labels(error.reason).inc()
            await self._refuse(context, method, peer, request_id, code, str(error), purpose, refusal=error)
        except grpc.aio.AbortError:  # the handler answered with a status of its own: count that one
            code = status_of(context.code()) or grpc.StatusCode.UNKNOWN
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away (cancelled, deadline): a stream
            # handler is closed at its `yield` (GeneratorExit), a unary one cancelled: count both as such
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            if isinstance(error, NotImplementedError) and status_of(context.code()) is grpc.StatusCode.UNIMPLEMENTED:
                # a method the generated base servicer declares and nobody implements (it sets UNIMPLEMENTED
                # before raising); any other NotImplementedError is a fault like the rest
                code = grpc.StatusCode.UNIMPLEMENTED
                message = f"{short} is not implemented on this node"
            else:
                error_id = uuid.uuid4().hex[:12]
                log.error("rpc_internal_error", method=short, error_id=error_id, error=repr(error))
                code = grpc.StatusCode.INTERNAL
                message = f"internal error {error_id}; the operator can look it up"
            await self._refuse(context, method, peer, request_id, code, message, purpose)
        finally:
            self._metrics.count_rpc(short, code.name, time.perf_counter() - started)
            if code is grpc.StatusCode.INTERNAL:  # a fault, not a refusal (INCONSISTENT_RECORDS is one too)
                self._metrics.internal_errors.inc()

    async def log_served(
        self, call: Call, *, subjects: Sequence[str] = (), purpose: str = "", outcome: str = "OK"
    ) -> None:
        """The entry of a call whose handler writes nothing else (a read; OK unless `outcome` says otherwise):
        durable before the answer leaves. If it cannot be written the call fails (INTERNAL): nothing is read
        unlogged."""
        info = call.info
        entry = AccessEntry(
            at=dt.datetime.now(dt.UTC),
            request_id=info.request_id,
            peer=info.peer,
            method=info.method,
            outcome=outcome,
            purpose=purpose,
            subjects=tuple(subjects),
        )
        await self._store.write(lambda conn: SqlTx(conn).append_access([entry]))

    async def refuse_undecodable(self, context: grpc.aio.ServicerContext[Any, Any], method: str, problem: str) -> None:
        """A unary request grpcio could not decode (jukinet.rpc.decode_guard): answered INVALID_ARGUMENT and
        access-logged under the caller's identity, like a refusal inside `call`."""
        started = time.perf_counter()
        request_id = _request_id(context)
        try:
            peer = peer_identity(context)[0].uri
        except JukinetError:
            peer = ""
        error = InvalidField("request", problem)
        self._metrics.refused_calls.labels(error.reason).inc()
        code = grpc.StatusCode.INVALID_ARGUMENT
        try:
            await self._refuse(context, method, peer, request_id, code, str(error), refusal=error)
        finally:
            self._metrics.count_rpc(method.rsplit("/", 1)[-1], code.name, time.perf_counter() - started)

    def _check_certificate(self, cert: PeerCertificate, caller: NodeId, method: str) -> None:
        """Revocation and expiry on every call (grpcio has no CRL option), and the operator's role."""
        if self._revocations is not None and self._revocations.is_revoked(cert.serial):
            raise CertificateRevoked(
                f"the certificate of {caller.uri} (serial {cert.serial:x}) is revoked; ask the network CA for a new one"
            )
        if cert.not_after < dt.datetime.now(dt.UTC):
            raise CertificateExpired(f"the certificate of {caller.uri} expired at {cert.not_after.isoformat()}")
        if caller.role is Role.OPERATOR:
            check_operator_role(caller, cert.role, method)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        peer: str,
        request_id: str,
        code: grpc.StatusCode,
        message: str,
        purpose: str = "",
        *,
        refusal: JukinetError | None = None,
    ) -> None:
        entry = AccessEntry(
            at=dt.datetime.now(dt.UTC),
            request_id=request_id,
            peer=peer or _transport_peer(context),
            method=method,
            outcome=code.name,
            purpose=purpose,
        )
        try:
            await self._store.write(lambda conn: SqlTx(conn).append_access([entry]))
        except Exception as error:  # never hide the caller's answer behind a logging failure
            log.error("access_log_write_failed", error=repr(error))
        log.warning("rpc_refused", method=method, peer=entry.peer, code=code.name, detail=message)
        trailer = refusal_trailer(code, message, request_id=request_id, error=refusal)
        await context.abort(code, message, trailing_metadata=trailer)


def status_of(code: object) -> grpc.StatusCode | None:
    """The status a handler set on its context (grpcio hands back a StatusCode or its number), if any."""
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    return None


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return _new_request_id()


def _new_request_id() -> str:
    """A fresh id for a call that brought none: for correlation, not secrecy (no syscall per call)."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # noqa: S311 - seeded from os.urandom; request ids need uniqueness, not secrecy


def _transport_peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    try:
        return f"unidentified({context.peer()})"
    except Exception:
        return "unidentified"


__all__ = ["REQUEST_ID_KEY", "AlreadyLogged", "Call", "Guard", "UnauthenticatedError", "status_of"]
