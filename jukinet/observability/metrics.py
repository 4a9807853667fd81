"""Every Prometheus metric of a node, on a registry passed in (tests read values from it).

Labels are bounded: method (the fixed set of RPC names), status code, refusal reason, agency id, the node's
own identity and kind (jukinet_node_info). Never a request id or a resident code.

Counters that alert rules watch for their first increase (deploy/prometheus/alerts.yml: `increase(...) > 0`)
exist from the start at 0, labelled ones for every label value known up front (refusal reasons): a series
that first appears at 1 would never show an increase."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from jukinet.domain.errors import JukinetError
from jukinet.observability.dashboard import Dashboard

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64)  # buckets of the group-commit histograms
DB_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)  # a transaction, a checkpoint


@dataclass
class NodeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.changes_received = Counter(
            "jukinet_changes_received_total",
            "Change events received by this node (before dedup).",
            registry=r,
        )
        self.changes_applied = Counter(
            "jukinet_changes_applied_total", "Change events durably applied by this node.", registry=r
        )
        self.changes_duplicate = Counter(
            "jukinet_changes_duplicate_total",
            "Replayed change events acknowledged without effect.",
            registry=r,
        )
        self.changes_refused = Counter(
            "jukinet_changes_refused_total", "Changes refused at the edge, by reason.", ["reason"], registry=r
        )
        self.changes_forwarded = Counter(
            "jukinet_changes_forwarded_total", "Change events acknowledged by the next tier.", registry=r
        )
        self.outbox_depth = Gauge(
            "jukinet_outbox_depth",
            "Events stored here and not yet acknowledged by the next tier.",
            registry=r,
        )
        self.relay_lag = Gauge(
            "jukinet_relay_lag_seconds",
            "Age of the oldest event not yet acknowledged by the next tier (0 when drained).",
            registry=r,
        )
        self.upstream_up = Gauge(
            "jukinet_upstream_connected", "1 while the relay stream to the next tier is open.", registry=r
        )
        self.rpcs = Counter(
            "jukinet_rpc_total", "RPCs served, by method and status code.", ["method", "code"], registry=r
        )
        self.rpc_duration = Histogram(
            "jukinet_rpc_duration_seconds",
            "Duration of served unary RPCs and stream messages.",
            ["method"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.free_codes = Gauge("jukinet_free_codes", "Free 住民票コード in this node's pool.", registry=r)
        self.cut_off = Gauge("jukinet_cut_off", "1 while an operator has cut this node off its links.", registry=r)
        self.code_anomalies = Gauge(
            "jukinet_code_anomalies",
            "Center: 住民票コード held but never issued, or retired and still in use (jukinet codes anomalies).",
            ["kind"],
            registry=r,
        )
        self.provisions_unindexed = Gauge(
            "jukinet_provision_log_unindexed",
            "Center: provision entries not yet in the by-resident index (disclosure scans them; should stay small).",
            registry=r,
        )
        self.refused_calls = Counter(
            "jukinet_refused_calls_total",
            "Calls refused by the node, by reason (wrong role, wrong origin, wrong purpose, cut off, …).",
            ["reason"],
            registry=r,
        )
        for reason in refusal_reasons():
            self.refused_calls.labels(reason)
            self.changes_refused.labels(reason)
        self.internal_errors = Counter(
            "jukinet_internal_errors_total",
            "Calls answered INTERNAL: a fault of this node, each with an error id in its log (rpc_internal_error).",
            registry=r,
        )
        self.node_info = Gauge(
            "jukinet_node_info", "1, labelled with this node's identity and kind.", ["node", "kind"], registry=r
        )
        self.agency_rate_anomalies = Counter(
            "jukinet_agency_rate_anomalies_total",
            "Times an agency's request rate jumped far above its own baseline.",
            ["agency"],
            registry=r,
        )
        self.audit_flagged_children = Gauge(
            "jukinet_audit_flagged_children",
            "Children whose access log stopped extending its witnessed checkpoint, not yet acknowledged.",
            registry=r,
        )
        self.audit_checkpoints = Counter(
            "jukinet_audit_checkpoints_total",
            "Access-log checkpoints: signed (own), countersigned (own, by the parent), witnessed (a child's),"
            " refused (own, by the parent), flagged (a child's).",
            ["event"],
            registry=r,
        )
        self.audit_log_diverged = Gauge(
            "jukinet_audit_log_diverged",
            "1 while this node's own log does not extend its last witnessed checkpoint (or the parent says so).",
            registry=r,
        )
        self.db_group_jobs = Histogram(
            "jukinet_db_transaction_jobs",
            "Jobs (a relay or register message, a group of agency lookups, ...) committed together in one"
            " transaction by the node's writer: group commit at work. _count is the number of transactions.",
            registry=r,
            buckets=GROUP_SIZES,
        )
        self.db_group_seconds = Histogram(
            "jukinet_db_transaction_seconds",
            "Time the node's writer spent on one transaction, commit (and its fsync) included.",
            registry=r,
            buckets=DB_SECONDS,
        )
        self.lookup_group_calls = Histogram(
            "jukinet_lookup_transaction_calls",
            "Agency lookups answered by one transaction on the center's event loop (SQLite): group commit of"
            " unary lookups at work. _count is the number of such transactions.",
            registry=r,
            buckets=GROUP_SIZES,
        )
        self.lookup_linger = Gauge(
            "jukinet_lookup_linger_seconds",
            "How long a group of unary agency lookups waits for company before its transaction (SQLite, the"
            " center's event loop): adapted to the measured transaction time (jukinet/storage/group_timing.py).",
            registry=r,
        )
        self.lookups_handed_over = Counter(
            "jukinet_lookups_handed_to_writer",
            "Agency lookups queued behind the writer thread because it held the write lock when their group"
            " was due (a relay group, the provision indexer): each waited for that writer job.",
            registry=r,
        )
        self.wal_pending_frames = Gauge(
            "jukinet_wal_pending_frames",
            "SQLite: WAL frames not yet copied into the database file after the last checkpoint (what commits added"
            " meanwhile; growing without end means a long-lived reader keeps checkpoints from finishing).",
            registry=r,
        )
        self.wal_checkpoint_seconds = Histogram(
            "jukinet_wal_checkpoint_seconds",
            "SQLite: time one WAL checkpoint took on the node's checkpoint thread (off every commit's path).",
            registry=r,
            buckets=DB_SECONDS,
        )
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_transaction(self, jobs: int, seconds: float) -> None:
        """One writer transaction (Store's on_group hook; runs on the writer thread)."""
        self.db_group_jobs.observe(jobs)
        self.db_group_seconds.observe(seconds)

    def observe_checkpoint(self, pending_frames: int, seconds: float) -> None:
        """One WAL checkpoint (from Store's on_checkpoint hook; runs on the checkpoint thread)."""
        self.wal_pending_frames.set(pending_frames)
        self.wal_checkpoint_seconds.observe(seconds)

    def observe_lookup_group(self, committed: int, handed_over: int, linger_s: float) -> None:
        """One group of unary lookups (LoopBatcher's on_flush hook; runs on the event loop)."""
        self.lookup_linger.set(linger_s)
        if committed:
            self.lookup_group_calls.observe(committed)
        if handed_over:
            self.lookups_handed_over.inc(handed_over)

    def count_rpc(self, method: str, code: str, seconds: float) -> None:
        """One served call: its count by (method, code) and its duration. The labelled children are looked
        up once per pair (methods and codes are bounded sets), not on every call."""
        children = self._rpc_children.get((method, code))
        if children is None:
            children = (self.rpcs.labels(method, code), self.rpc_duration.labels(method))
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)


def refusal_reasons() -> list[str]:
    """Every `reason` a JukinetError subclass declares (the label values of jukinet_refused_calls_total)."""
    reasons: set[str] = set()
    pending: list[type[JukinetError]] = [JukinetError]
    while pending:
        cls = pending.pop()
        reasons.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return sorted(reasons)


def start_metrics_server(metrics: NodeMetrics, listen: str, *, node: str = "", kind: str = "") -> WSGIServer:
    """Serves /metrics and the dashboard page (/, jukinet.observability.dashboard) on host:port (127.0.0.1 by
    default), each request on a thread of its own; `.server_port` is the bound port, `.shutdown()` stops it."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if node:
        metrics.node_info.labels(node, kind).set(1)
    app = management_app(metrics, Dashboard(metrics.registry, node, kind))
    family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class: type[_ThreadingServer] = type("ManagementServer", (_ThreadingServer,), {"address_family": family})
    server: WSGIServer = make_server(host, int(port), app, server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def management_app(metrics: NodeMetrics, dashboard: Dashboard) -> WSGIApplication:
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            served: Iterable[bytes] = metrics_app(environ, start_response)
            return served
        if path in ("/", "/dashboard"):
            body = dashboard.render().encode("utf-8")
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Cache-Control", "no-store"),
                    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        body = b"not found: the dashboard is at /, Prometheus metrics at /metrics\n"
        start_response(
            "404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr; the node's own logs are structured."""
