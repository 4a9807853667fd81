"""Composition root of a prefecture node: receives from its municipalities, forwards to the center."""

from functools import partial

import grpc

from jukinet.pki import channel_credentials
from jukinet.rpc import authz
from jukinet.rpc.admin_servicer import AdminServicer
from jukinet.rpc.audit_servicer import AuditServicer
from jukinet.rpc.checkpointer import Checkpointer
from jukinet.rpc.forwarder import Forwarder
from jukinet.rpc.guard import Guard
from jukinet.rpc.relay_servicer import RelayServicer
from jukinet.rpc.runtime import NodeContext, NodeParts
from jukinet.wire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    codepool_pb2,
    codepool_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)
from prefecture_node.codepool import CodePoolRelayServicer


def build(ctx: NodeContext) -> NodeParts:
    config = ctx.config
    node = config.identity
    center = node.upstream
    assert center is not None  # noqa: S101 - a prefecture always relays to the center
    credentials = partial(channel_credentials, ctx.paths)  # re-read per connection: certificate renewals
    guard = Guard(ctx.store, ctx.metrics, authz.PREFECTURE_POLICY, ctx.switch, ctx.revocations)
    forwarder = Forwarder(
        store=ctx.store,
        upstream=config.upstream,
        upstream_identity=center.uri,
        credentials=credentials,
        metrics=ctx.metrics,
        batch_size=config.batch_size,
        window=config.window,
        switch=ctx.switch,
    )
    relay = RelayServicer(node, ctx.store, guard, ctx.metrics, on_applied=forwarder.notify)
    codepool = CodePoolRelayServicer(node, ctx.store, guard, config.upstream, credentials)
    admin = AdminServicer(node, ctx.store, guard, forwarded=forwarder.forwarded, switch=ctx.switch, metrics=ctx.metrics)
    audit = AuditServicer(node, ctx.store, guard, ctx.metrics, ctx.paths)
    checkpointer = Checkpointer(
        node=node,
        store=ctx.store,
        paths=ctx.paths,
        metrics=ctx.metrics,
        upstream=config.upstream,
        credentials=credentials,
        switch=ctx.switch,
    )

    def add(server: grpc.aio.Server) -> None:
        relay_pb2_grpc.add_RelayServiceServicer_to_server(relay, server)
        codepool_pb2_grpc.add_CodePoolServiceServicer_to_server(codepool, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)

    return NodeParts(
        add_servicers=[add],
        service_names=[
            relay_pb2.DESCRIPTOR.services_by_name["RelayService"].full_name,
            codepool_pb2.DESCRIPTOR.services_by_name["CodePoolService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
        ],
        tasks=[forwarder.run, checkpointer.run],
    )
