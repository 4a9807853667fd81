"""The node's dashboard page: what an operator looks at first, on the management port next to /metrics.

One server-rendered HTML page (no script, no outside asset, refreshed by the browser every few seconds) built
from the node's own Prometheus registry: whether the node is cut off, connected upstream and in step with its
witnessed access log; the relay (changes in, applied, forwarded, the outbox and its lag); refusals by reason;
calls by method and status; the code pool; the database's group commit and WAL; and at the center the agency
side. Counters are shown as totals and as rates per second since the page was last rendered (by anyone).
Long-term graphs and alerts belong to Prometheus: deploy/prometheus/ has the alert rules."""

from __future__ import annotations

import datetime as dt
import html
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

REFRESH_S = 5
LAG_WARN_S = 60.0  # as the JukinetRelayLagging alert
JST = dt.timezone(dt.timedelta(hours=9), "JST")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    """Every sample of a registry at one moment: (sample name, sorted labels) -> value."""

    at: float
    values: dict[tuple[str, Labels], float]

    @classmethod
    def of(cls, registry: CollectorRegistry, at: float) -> Snapshot:
        values: dict[tuple[str, Labels], float] = {}
        for family in registry.collect():
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return cls(at, values)

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, tuple(sorted(labels.items()))))

    def labelled(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for (sample, labels), value in sorted(self.values.items()):
            if sample == name:
                yield dict(labels), value


@dataclass
class Dashboard:
    """Renders the page; remembers the previous snapshot for rates."""

    registry: CollectorRegistry
    node: str
    kind: str  # center, prefecture, municipality
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _previous: Snapshot | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def render(self) -> str:
        with self._lock:  # concurrent viewers: each rate is over the interval since the render before it
            current = Snapshot.of(self.registry, self.clock())
            previous, self._previous = self._previous, current
        return _Page(self, current, previous).html()


class _Page:
    def __init__(self, board: Dashboard, current: Snapshot, previous: Snapshot | None) -> None:
        self.board = board
        self.s = current
        self.previous = previous if previous is not None and current.at - previous.at >= 0.5 else None

    def rate(self, name: str, **labels: str) -> str:
        if self.previous is None:
            return "–"
        now, before = self.s.get(name, **labels), self.previous.get(name, **labels)
        if now is None:
            return "–"
        return f"{max(0.0, now - (before or 0.0)) / (self.s.at - self.previous.at):,.1f}/s"

    def html(self) -> str:
        b = self.board
        now = b.now()
        parts = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
            f"<title>{_e(b.node)} — jukinet</title><style>{_STYLE}</style></head><body>",
            f"<h1>{_e(b.node)}</h1>",
            f"<p class='when'>{now:%Y-%m-%d %H:%M:%S} UTC · {now.astimezone(JST):%H:%M:%S} JST · refreshes every "
            f"{REFRESH_S} s · <a href='/metrics'>/metrics</a></p>",
            self.status(),
            self.relay(),
            self.refusals(),
            self.calls(),
            self.codes(),
            self.storage(),
            self.center(),
            "</body></html>",
        ]
        return "\n".join(p for p in parts if p)

    def status(self) -> str:
        badges: list[tuple[str, str]] = []
        if self.s.get("jukinet_cut_off") == 1:
            badges.append(("bad", "CUT OFF: no traffic on this node's links (jukinet node resume ends it)"))
        else:
            badges.append(("good", "links open"))
        if self.board.kind != "center":
            up = self.s.get("jukinet_upstream_connected") == 1
            badges.append(("good", "upstream connected") if up else ("bad", "upstream NOT connected"))
        if self.s.get("jukinet_audit_log_diverged") == 1:
            badges.append(("bad", "access log DIVERGED from its witnessed checkpoint"))
        flagged = self.s.get("jukinet_audit_flagged_children") or 0
        if flagged:
            badges.append(("bad", f"{flagged:.0f} child node(s) with a diverged access log"))
        internal = self.s.get("jukinet_internal_errors_total") or 0
        if internal:
            badges.append(
                ("warn", f"{internal:.0f} call(s) answered INTERNAL since start (rpc_internal_error in the log)")
            )
        lag = self.s.get("jukinet_relay_lag_seconds") or 0.0
        if lag > LAG_WARN_S:
            badges.append(("warn", f"relay lagging {lag:,.0f} s"))
        items = "".join(f"<li class='{cls}'>{_e(text)}</li>" for cls, text in badges)
        return f"<ul class='badges'>{items}</ul>"

    def relay(self) -> str:
        counters = [
            ("received", "jukinet_changes_received_total"),
            ("applied", "jukinet_changes_applied_total"),
            ("duplicates acknowledged", "jukinet_changes_duplicate_total"),
        ]
        if self.board.kind != "center":  # the center forwards nothing
            counters.append(("forwarded (acknowledged upstream)", "jukinet_changes_forwarded_total"))
        rows = [(label, _n(self.s.get(name)), self.rate(name)) for label, name in counters]
        if self.board.kind != "center":
            rows.append(("outbox depth", _n(self.s.get("jukinet_outbox_depth")), ""))
            rows.append(("relay lag", f"{self.s.get('jukinet_relay_lag_seconds') or 0.0:,.1f} s", ""))
        return _table("Relay", ("changes", "total", "rate"), rows)

    def refusals(self) -> str:
        rows = [
            (f"change: {labels.get('reason', '')}", _n(v), self.rate("jukinet_changes_refused_total", **labels))
            for labels, v in self.s.labelled("jukinet_changes_refused_total")
            if v  # reasons are pre-created at 0 for the alert rules: list only those that happened
        ]
        rows += [
            (f"call: {labels.get('reason', '')}", _n(v), self.rate("jukinet_refused_calls_total", **labels))
            for labels, v in self.s.labelled("jukinet_refused_calls_total")
            if v
        ]
        return _table("Refusals", ("reason", "total", "rate"), rows)

    def calls(self) -> str:
        rows = [
            (labels.get("method", ""), labels.get("code", ""), _n(v), self.rate("jukinet_rpc_total", **labels))
            for labels, v in self.s.labelled("jukinet_rpc_total")
        ]
        return _table("Calls served", ("method", "status", "total", "rate"), rows)

    def codes(self) -> str:
        rows = []
        if self.board.kind == "municipality":
            rows.append(("free 住民票コード in the pool", _n(self.s.get("jukinet_free_codes"))))
        rows += [
            (f"anomaly: {labels.get('kind', '')}", _n(v)) for labels, v in self.s.labelled("jukinet_code_anomalies")
        ]
        return _table("Codes", ("", "count"), rows) if rows else ""

    def storage(self) -> str:
        rows = []
        count = self.s.get("jukinet_db_transaction_jobs_count") or 0.0
        if count:
            jobs = (self.s.get("jukinet_db_transaction_jobs_sum") or 0.0) / count
            ms = (self.s.get("jukinet_db_transaction_seconds_sum") or 0.0) / count * 1000
            rows.append(("writer transactions", f"{_n(count)} ({self.rate('jukinet_db_transaction_jobs_count')})"))
            rows.append(("jobs per transaction (mean)", f"{jobs:,.1f}"))
            rows.append(("transaction time with commit (mean)", f"{ms:,.2f} ms"))
        checkpoints = self.s.get("jukinet_wal_checkpoint_seconds_count") or 0.0
        if checkpoints:
            rows.append(("WAL frames not yet checkpointed", _n(self.s.get("jukinet_wal_pending_frames"))))
            rows.append(("WAL checkpoints", _n(checkpoints)))
        return _table("Database", ("", ""), rows) if rows else ""

    def center(self) -> str:
        if self.board.kind != "center":
            return ""
        rows = []
        groups = self.s.get("jukinet_lookup_transaction_calls_count") or 0.0
        if groups:
            calls = self.s.get("jukinet_lookup_transaction_calls_sum") or 0.0
            rows.append(
                ("agency lookups (unary)", f"{_n(calls)} ({self.rate('jukinet_lookup_transaction_calls_sum')})")
            )
            rows.append(("lookups per transaction (mean)", f"{calls / groups:,.1f}"))
            linger = self.s.get("jukinet_lookup_linger_seconds")
            if linger is not None:
                rows.append(("lookup group linger", f"{linger * 1000:,.1f} ms"))
        handed = self.s.get("jukinet_lookups_handed_to_writer_total")
        if handed:
            rows.append(("lookups that waited behind the writer", _n(handed)))
        rows.append(("provision entries not yet indexed", _n(self.s.get("jukinet_provision_log_unindexed"))))
        anomalies: defaultdict[str, float] = defaultdict(float)
        for labels, v in self.s.labelled("jukinet_agency_rate_anomalies_total"):
            anomalies[labels.get("agency", "")] += v
        rows += [(f"rate anomalies: agency {agency}", _n(v)) for agency, v in sorted(anomalies.items())]
        return _table("Agencies", ("", ""), rows)


def _table(title: str, head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = "<tr><td class='none'>none yet</td></tr>"
    heads = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<section><h2>{_e(title)}</h2><table><tr>{heads}</tr>{body}</table></section>"


def _n(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em;margin:0}"
    ".when{color:#666;margin:.2em 0 1em}.badges{list-style:none;padding:0;display:flex;gap:.5em;flex-wrap:wrap}"
    ".badges li{padding:.3em .7em;border-radius:4px}.good{background:#dff3e0}.bad{background:#f8d0d0;font-weight:bold}"
    ".warn{background:#fbeec2}section{display:inline-block;vertical-align:top;margin:0 2em 1.5em 0}"
    "h2{font-size:1.05em}table{border-collapse:collapse}td,th{padding:.15em .8em;text-align:left;"
    "border-bottom:1px solid #eee}td:nth-child(n+2){font-variant-numeric:tabular-nums}.none{color:#999}"
)
