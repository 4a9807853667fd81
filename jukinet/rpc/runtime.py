"""Runs one node process: gRPC server (mTLS, health, reflection), metrics port, background tasks,
clean shutdown on SIGTERM/SIGINT."""

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import grpc
import structlog
from grpc_health.v1 import health_pb2

from jukinet.config import NodeConfig
from jukinet.observability import NodeMetrics, configure_logging, start_metrics_server
from jukinet.pki import (
    SECURE_SERVER_OPTIONS,
    CertPaths,
    RevocationList,
    lacks_server_name,
    paths_for,
    server_credentials,
    server_name,
)
from jukinet.rpc import event_loop
from jukinet.rpc.authz import POLICIES
from jukinet.rpc.decode_guard import LenientServer
from jukinet.rpc.guard import Guard
from jukinet.rpc.standard_services import (
    STANDARD_POLICY,
    add_standard_services,
    health_follows_switch,
    link_services,
    set_service_health,
)
from jukinet.rpc.switch import LinkSwitch, load_reason
from jukinet.storage import Store

log = structlog.get_logger(__name__)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class NodeContext:
    config: NodeConfig
    store: Store
    metrics: NodeMetrics
    paths: CertPaths
    switch: LinkSwitch
    revocations: RevocationList


@dataclass
class NodeParts:
    """What a node kind adds to the common runtime."""

    add_servicers: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    service_names: list[str] = field(default_factory=list)
    tasks: list[Callable[[asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


GC_GEN0_THRESHOLD = 5_000  # CPython's default is 700 allocations


def tune_gc() -> None:
    """For a started node process: what exists now (modules, configuration, the servers) lives as long as
    the process, so it leaves the collector's view (gc.freeze), and the youngest generation is collected
    every 5,000 net allocations instead of 700. Reference counting still frees almost everything at once;
    only reference cycles wait for a collection.

    The size is a trade between overhead and pause. grpc.aio leaves five objects in a reference cycle per
    call (a closure in cygrpc's `_find_method_handler`), so under load a gen-0 collection frees about as
    many objects as its threshold, and the event loop stands still meanwhile: at 20,000 the center paused
    7-36 ms every 1.6 s at concurrency 16, and since a lookup group holds every caller in flight, each pause
    made one whole group late (a traced 30 s run: every second with calls above 20 ms had a collection in
    it). At 5,000 the pauses stay under 5 ms. Two centers on copies of one database, load alternating
    between them in 0.5 s slices (c=16, 40 s each, 2026-12-03): p99 22.1 / 17.8 ms against 23.8 / 20.1,
    calls above 20 ms 1.46 / 0.64 % against 2.01 / 1.01 %, lookups/s 1,800 / 1,913 against 1,790 / 1,852;
    3,000 and 1,000 likewise lowered the p99 in each of their pairs (1,000 by 0.8-1.7 ms in four). Bulk
    lookups (`--quick`, 52,627 / 51,344 against 43,852 / 49,171 items/s) and the relay (1,000 against
    20,000: 16,566 / 14,872 / 13,570 against 14,174 / 14,987 / 13,132 events/s) lost nothing measurable.
    An earlier measurement (20,000 against CPython's 700, before lookups were grouped) had found 8 % more
    lookups per second: 700 costs a collection every 140 calls."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def run_node(config: NodeConfig, build: Callable[[NodeContext], NodeParts]) -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    configure_logging(node=config.identity.uri, level=config.log_level)
    event_loop.run(_serve(config, build))


class RunningNode:
    """A started node: its gRPC server, store, background tasks and metrics endpoint."""

    def __init__(
        self,
        ctx: NodeContext,
        parts: NodeParts,
        server: grpc.aio.Server,
        health_servicer: Any,
        port: int,
        metrics_server: Any,
    ) -> None:
        self.ctx = ctx
        self.parts = parts
        self.server = server
        self.port = port
        self.metrics_server = metrics_server
        self.metrics_port = int(metrics_server.server_port)
        host = str(metrics_server.server_address[0])  # as bound (IPv6 too)
        self.metrics_address = f"[{host}]:{self.metrics_port}" if ":" in host else f"{host}:{self.metrics_port}"
        self.stop_event = asyncio.Event()
        self._health = health_servicer
        self.tasks: list[asyncio.Task[None]] = [asyncio.ensure_future(task(self.stop_event)) for task in parts.tasks]

    @property
    def health(self) -> Any:
        """The node's grpc health servicer (its status for Health.Check and Watch)."""
        return self._health

    @property
    def address(self) -> str:
        return f"{self.ctx.config.listen.rpartition(':')[0]}:{self.port}"

    async def stop(self) -> None:
        self.stop_event.set()
        await self._health.enter_graceful_shutdown()  # every service NOT_SERVING, for good
        await self.server.stop(grace=2.0)
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for close in self.parts.close:
            await close()
        self.metrics_server.shutdown()
        self.metrics_server.server_close()
        await asyncio.get_running_loop().run_in_executor(None, self.ctx.store.close)


async def start_node(config: NodeConfig, build: Callable[[NodeContext], NodeParts]) -> RunningNode:
    """Starts a node in the running event loop (the node process, or a test)."""
    paths = paths_for(config.pki_dir, config.identity)
    for required in (paths.cert, paths.key, paths.ca):
        if not required.exists():
            raise SystemExit(f"missing {required}: create the PKI first (jukinet pki init --dir {config.pki_dir})")
    if lacks_server_name(paths.cert, config.identity):  # clients check it: they will refuse this node
        log.warning(
            "certificate_without_server_name",
            cert=str(paths.cert),
            expected=server_name(config.identity),
            fix=f"jukinet pki renew --dir {config.pki_dir} {config.identity.uri}",
        )
    metrics = NodeMetrics()
    store = Store(
        config.database,
        on_group=metrics.observe_transaction,
        on_checkpoint=lambda done: metrics.observe_checkpoint(done.pending, done.seconds),
    )
    switch = LinkSwitch(config.identity.uri, store.read_sync(load_reason))
    metrics.cut_off.set(1 if switch.cut_off else 0)
    ctx = NodeContext(
        config=config,
        store=store,
        metrics=metrics,
        paths=paths,
        switch=switch,
        revocations=RevocationList(config.pki_dir),
    )
    parts = build(ctx)
    server = grpc.aio.server(
        options=[
            *SECURE_SERVER_OPTIONS,
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    # Every servicer registers through LenientServer: undecodable requests become INVALID_ARGUMENT, logged.
    refusals = Guard(store, metrics, {}, switch, ctx.revocations)
    registrar = cast(grpc.aio.Server, LenientServer(server, refuse=refusals.refuse_undecodable))
    for add in parts.add_servicers:
        add(registrar)
    standard = Guard(store, metrics, STANDARD_POLICY, None, ctx.revocations)  # no cut-off: operators need them
    health_servicer = add_standard_services(server, standard, refusals.refuse_undecodable, parts.service_names)
    links = link_services(parts.service_names, POLICIES[config.kind])
    await set_service_health(health_servicer, switch, parts.service_names, links)  # before the first call
    parts.tasks.append(partial(health_follows_switch, health_servicer, switch, parts.service_names, links))
    port = server.add_secure_port(config.listen, server_credentials(paths))
    if port == 0:
        raise SystemExit(f"could not listen on {config.listen}: is the port in use?")
    await server.start()
    metrics_server = start_metrics_server(metrics, config.metrics_listen, node=config.identity.uri, kind=config.kind)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningNode(ctx, parts, server, health_servicer, port, metrics_server)


async def _serve(config: NodeConfig, build: Callable[[NodeContext], NodeParts]) -> None:
    node = await start_node(config, build)
    ready = {
        "event": "node_ready",
        "node": config.identity.uri,
        "listen": node.address,
        "metrics": node.metrics_address,
        "pid": os.getpid(),
    }
    tune_gc()
    print(json.dumps(ready), flush=True)
    log.info("node_started", listen=node.address, metrics=ready["metrics"])
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stop_event.set)
    try:
        waiters = [asyncio.create_task(node.stop_event.wait()), *node.tasks]
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            if finished is not waiters[0] and finished.exception() is not None:
                log.error("node_task_failed", error=repr(finished.exception()))
    finally:
        await node.stop()
        log.info("node_stopped")
        sys.stderr.flush()
