"""Composition root of a municipality node."""

from functools import partial

import grpc

from jukinet.pki import channel_credentials
from jukinet.rpc import authz
from jukinet.rpc.admin_servicer import AdminServicer
from jukinet.rpc.checkpointer import Checkpointer
from jukinet.rpc.forwarder import Forwarder
from jukinet.rpc.guard import Guard
from jukinet.rpc.runtime import NodeContext, NodeParts
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc, register_pb2, register_pb2_grpc
from municipality_node.codepool import CodePoolKeeper
from municipality_node.servicer import RegisterServicer


def build(ctx: NodeContext) -> NodeParts:
    config = ctx.config
    node = config.identity
    prefecture = node.upstream
    assert prefecture is not None  # noqa: S101 - a municipality always has its prefecture
    credentials = partial(channel_credentials, ctx.paths)  # re-read per connection: certificate renewals
    guard = Guard(ctx.store, ctx.metrics, authz.MUNICIPALITY_POLICY, ctx.switch, ctx.revocations)
    forwarder = Forwarder(
        store=ctx.store,
        upstream=config.upstream,
        upstream_identity=prefecture.uri,
        credentials=credentials,
        metrics=ctx.metrics,
        batch_size=config.batch_size,
        window=config.window,
        switch=ctx.switch,
    )
    keeper = CodePoolKeeper(
        municipality=node.code,
        store=ctx.store,
        upstream=config.upstream,
        upstream_identity=prefecture.uri,
        credentials=credentials,
        metrics=ctx.metrics,
        refill_below=config.refill_below,
        block_size=config.block_size,
        switch=ctx.switch,
    )
    register = RegisterServicer(
        node.code,
        ctx.store,
        guard,
        ctx.metrics,
        on_recorded=partial(forwarder.notify, node.code),
        on_pool_exhausted=keeper.request_refill,
    )
    admin = AdminServicer(node, ctx.store, guard, forwarded=forwarder.forwarded, switch=ctx.switch, metrics=ctx.metrics)
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
        register_pb2_grpc.add_RegisterServiceServicer_to_server(register, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)

    return NodeParts(
        add_servicers=[add],
        service_names=[
            register_pb2.DESCRIPTOR.services_by_name["RegisterService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        ],
        tasks=[forwarder.run, keeper.run, checkpointer.run],
    )
