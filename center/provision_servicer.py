"""ProvisionService: agencies look up 本人確認情報 for a statutory purpose granted to them."""

import datetime as dt
from typing import Any

import grpc

from jukinet.domain.agency import AgencyRegistry
from jukinet.domain.registry_state import Status
from jukinet.domain.validate import resident_code
from jukinet.rpc import authz
from jukinet.rpc.guard import Guard
from jukinet.services.provision import Provided, lookup
from jukinet.storage import SqlTx, Store
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc, types_pb2


class ProvisionServicer(provision_pb2_grpc.ProvisionServiceServicer):
    def __init__(self, store: Store, guard: Guard, registry: AgencyRegistry) -> None:
        self._store = store
        self._guard = guard
        self._registry = registry

    async def LookupResident(
        self, request: provision_pb2.LookupResidentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> provision_pb2.LookupResidentResponse:
        async with self._guard.call(context, authz.LOOKUP_RESIDENT, purpose=request.purpose[:64]) as call:
            agency, purpose = self._registry.purpose_for(call.caller, request.purpose)
            code = resident_code("resident_code", request.resident_code)
            now = dt.datetime.now(dt.UTC)
            provided = await self._store.write(
                lambda conn: lookup(SqlTx(conn), agency=agency, purpose=purpose, code=code, call=call.info, now=now)
            )
            return provision_pb2.LookupResidentResponse(record=provided_to_pb(provided))
        raise AssertionError("unreachable")


def provided_to_pb(provided: Provided) -> provision_pb2.ProvidedRecord:
    """Only the purpose's fields are filled in; the others stay empty on the wire."""
    reg = provided.record.registration
    fields = provided.fields
    items = reg.items
    return provision_pb2.ProvidedRecord(
        resident_code=provided.record.resident_code,
        status=(
            provision_pb2.RESIDENT_STATUS_ACTIVE
            if provided.record.status is Status.ACTIVE
            else provision_pb2.RESIDENT_STATUS_DELETED
        ),
        municipality_code=provided.record.holder,
        items=types_pb2.IdentityItems(
            name=items.name if "name" in fields else "",
            alias=items.alias if "alias" in fields else "",
            birth_date=items.birth_date.isoformat() if "birth_date" in fields else "",
            sex=int(items.sex) if "sex" in fields else 0,  # type: ignore[arg-type]
            address=items.address if "address" in fields else "",
        ),
        history=[
            provision_pb2.ProvidedChange(
                resident_code=e.resident_code,
                previous_code=e.previous_code,
                reason=int(e.reason),  # type: ignore[arg-type]
                effective_date=e.effective_date.isoformat(),
                municipality_code=e.origin,
            )
            for e in provided.history
        ],
        provided_fields=sorted(fields),
    )
