"""Code pools at the center: random 住民票コード never issued before, idempotent per request."""

import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import Connection, insert, select

from jukinet.codes import resident_code_from_body
from jukinet.domain.errors import InvalidField
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.validate import local_gov_code, request_id
from jukinet.rpc import authz
from jukinet.rpc.guard import Guard
from jukinet.services.ports import AccessEntry
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, Store
from jukinet.storage.rows import to_us
from jukinet.storage.schema import code_block, issued_code
from jukinet.wire.v1 import codepool_pb2, codepool_pb2_grpc

MAX_BLOCK = 100_000
CENTER = NodeId(Role.CENTER)


_BODY_SPACE = 10**10  # 10 random digits
_DRAW_BYTES = 5  # 40 bits per draw
_UNBIASED_BELOW = (256**_DRAW_BYTES // _BODY_SPACE) * _BODY_SPACE  # rejection bound: every body equally likely


def random_codes(count: int) -> list[str]:
    """Up to `count` independent, uniformly random codes from the OS CSPRNG (one read for all of them;
    a draw at or above _UNBIASED_BELOW, under 1 % of them, is dropped rather than folded in with a bias)."""
    raw = secrets.token_bytes(_DRAW_BYTES * (count + count // 50 + 8))
    codes: list[str] = []
    for start in range(0, len(raw), _DRAW_BYTES):
        value = int.from_bytes(raw[start : start + _DRAW_BYTES], "big")
        if value < _UNBIASED_BELOW:
            codes.append(resident_code_from_body(f"{value % _BODY_SPACE:010d}"))
            if len(codes) == count:
                break
    return codes


def _already_issued(conn: Connection, candidates: Sequence[str]) -> set[str]:
    """Candidates the network already knows: issued in a pool, or registered anywhere (a municipality can
    record a code it did not draw from its pool, e.g. one a resident brings along; it must never be drawn)."""
    return SqlTx(conn).known_among(candidates)


def allocate(
    conn: Connection, *, request: str, municipality: str, count: int, call: CallInfo, now: dt.datetime
) -> tuple[str, list[str]]:
    """Allocates `count` fresh codes to `municipality`, or returns the block of an earlier identical request
    (same request_id)."""
    earlier = conn.execute(select(code_block).where(code_block.c.request_id == request)).first()
    if earlier is not None:
        if earlier.municipality != municipality:
            raise InvalidField("request_id", "was already used for another municipality; use a fresh id")
        query = select(issued_code.c.resident_code).where(issued_code.c.block_id == earlier.block_id)
        codes = list(conn.execute(query).scalars())
        # The same block, in a fresh unguessable order: the table keeps no order, and handing codes out
        # sorted would reveal the order residents were registered in (a rare path: a lost answer).
        secrets.SystemRandom().shuffle(codes)
        return earlier.block_id, codes
    block_id = uuid.uuid4().hex
    # The municipality hands codes out in this order. Independent random draws, kept in the order drawn,
    # are already in an unguessable order: no shuffle (which would cost one OS read per code).
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        candidates = [c for c in dict.fromkeys(random_codes(count - len(chosen))) if c not in chosen]
        taken = _already_issued(conn, sorted(candidates))  # probes in key order walk the indexes once
        for code in candidates:
            if code not in taken:
                chosen[code] = None
    codes = list(chosen)
    conn.execute(
        insert(code_block),
        [
            {
                "block_id": block_id,
                "request_id": request,
                "municipality": municipality,
                "count": count,
                "at_us": to_us(now),
            }
        ],
    )
    # Stored in key order (the table keeps none, see above): about half the cost of random-order inserts into
    # its index; the municipality still receives the codes in the order drawn.
    SqlTx(conn).insert_code_rows("issued_code", sorted(codes), block_id)
    SqlTx(conn).append_access(
        [
            AccessEntry(
                at=now,
                request_id=request,
                peer=call.peer,
                method=call.method,
                outcome="OK",
                purpose=f"code pool for {municipality}",
            )
        ]
    )
    return block_id, codes


class CodePoolServicer(codepool_pb2_grpc.CodePoolServiceServicer):
    def __init__(self, store: Store, guard: Guard) -> None:
        self._store = store
        self._guard = guard

    async def AllocateCodes(
        self, request: codepool_pb2.AllocateCodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> codepool_pb2.AllocateCodesResponse:
        async with self._guard.call(context, authz.ALLOCATE_CODES) as call:
            rid = request_id("request_id", request.request_id)
            municipality = local_gov_code("municipality_code", request.municipality_code)
            authz.check_origin(call.caller, municipality, CENTER)
            if not 1 <= request.count <= MAX_BLOCK:
                raise InvalidField("count", f"must be between 1 and {MAX_BLOCK}")
            now = dt.datetime.now(dt.UTC)
            block_id, codes = await self._store.write(
                lambda conn: allocate(
                    conn, request=rid, municipality=municipality, count=request.count, call=call.info, now=now
                )
            )
            return codepool_pb2.AllocateCodesResponse(block_id=block_id, resident_codes=codes)
        raise AssertionError("unreachable")
