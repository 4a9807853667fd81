"""Composition root of the national center."""

import grpc

from center.code_checker import CodeChecker
from center.codepool import CodePoolServicer
from center.disclosure_servicer import DisclosureServicer
from center.provision_indexer import ProvisionIndexer
from center.provision_servicer import ProvisionServicer
from jukinet.config import load_agencies
from jukinet.rpc import authz
from jukinet.rpc.admin_servicer import AdminServicer
from jukinet.rpc.audit_servicer import AuditServicer
from jukinet.rpc.checkpointer import Checkpointer
from jukinet.rpc.guard import Guard
from jukinet.rpc.relay_servicer import RelayServicer
from jukinet.rpc.runtime import NodeContext, NodeParts
from jukinet.services.quota import Quotas
from jukinet.storage.center_tx import CenterTx
from jukinet.storage.code_checks import PREVIOUS_CODE_INDEX
from jukinet.storage.queries import provided_today
from jukinet.storage.schema import SEARCH_INDEX
from jukinet.wire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    codepool_pb2,
    codepool_pb2_grpc,
    disclosure_pb2,
    disclosure_pb2_grpc,
    provision_pb2,
    provision_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)


def build(ctx: NodeContext) -> NodeParts:
    guard = Guard(ctx.store, ctx.metrics, authz.CENTER_POLICY, ctx.switch, ctx.revocations)
    relay = RelayServicer(ctx.config.identity, ctx.store, guard, ctx.metrics, tx=CenterTx)
    codepool = CodePoolServicer(ctx.store, guard)
    registry = load_agencies(ctx.config.agencies)
    with ctx.store.engine.begin() as conn:  # agency search and code checks: indexes only the center needs
        conn.exec_driver_sql(SEARCH_INDEX)
        conn.exec_driver_sql(PREVIOUS_CODE_INDEX)
    quotas = Quotas()
    for agency, items in ctx.store.read_sync(provided_today).items():
        quotas.preload(agency, items)
    provision = ProvisionServicer(ctx.store, guard, registry, quotas, new_events=relay.new_events, metrics=ctx.metrics)
    disclosure = DisclosureServicer(ctx.config.identity, ctx.store, guard, registry)
    admin = AdminServicer(ctx.config.identity, ctx.store, guard, switch=ctx.switch, metrics=ctx.metrics)
    audit = AuditServicer(ctx.config.identity, ctx.store, guard, ctx.metrics, ctx.paths)
    checkpointer = Checkpointer(node=ctx.config.identity, store=ctx.store, paths=ctx.paths, metrics=ctx.metrics)
    indexer = ProvisionIndexer(ctx.store, ctx.metrics)
    code_checker = CodeChecker(ctx.store, ctx.metrics)

    def add(server: grpc.aio.Server) -> None:
        relay_pb2_grpc.add_RelayServiceServicer_to_server(relay, server)
        codepool_pb2_grpc.add_CodePoolServiceServicer_to_server(codepool, server)
        provision_pb2_grpc.add_ProvisionServiceServicer_to_server(provision, server)
        disclosure_pb2_grpc.add_DisclosureServiceServicer_to_server(disclosure, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)

    return NodeParts(
        add_servicers=[add],
        service_names=[
            relay_pb2.DESCRIPTOR.services_by_name["RelayService"].full_name,
            codepool_pb2.DESCRIPTOR.services_by_name["CodePoolService"].full_name,
            provision_pb2.DESCRIPTOR.services_by_name["ProvisionService"].full_name,
            disclosure_pb2.DESCRIPTOR.services_by_name["DisclosureService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
        ],
        tasks=[checkpointer.run, indexer.run, code_checker.run],
        close=[provision.close],
    )
