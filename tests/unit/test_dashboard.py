"""The dashboard page renders a node's own registry: status badges, totals, rates since the last render,
escaped labels, and only the sections that belong to the node's kind."""

from __future__ import annotations

import datetime as dt

from jukinet.observability.dashboard import Dashboard
from jukinet.observability.metrics import NodeMetrics

NOON = dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.UTC)


def board(metrics: NodeMetrics, node: str, kind: str, times: list[float]) -> Dashboard:
    return Dashboard(metrics.registry, node, kind, clock=lambda: times[0], now=lambda: NOON)


def test_a_cut_off_prefecture_without_upstream_shows_both_and_the_lag() -> None:
    metrics = NodeMetrics()
    metrics.cut_off.set(1)
    metrics.upstream_up.set(0)
    metrics.relay_lag.set(125)
    metrics.outbox_depth.set(4321)
    page = board(metrics, "jukinet://prefecture/13", "prefecture", [0.0]).render()
    assert "<h1>jukinet://prefecture/13</h1>" in page
    assert "CUT OFF" in page
    assert "upstream NOT connected" in page
    assert "relay lagging 125 s" in page
    assert "<td>outbox depth</td><td>4,321</td>" in page
    assert "12:00:00 JST" in page
    assert "Agencies" not in page  # the center's section
    assert "住民票コード" not in page  # the municipality's code pool
    assert "WRONG_ROLE" not in page  # refusal reasons exist at 0 (for the alerts) but are listed once they happen
    metrics.refused_calls.labels("WRONG_ROLE").inc()
    assert (
        "<td>call: WRONG_ROLE</td><td>1</td>" in board(metrics, "jukinet://prefecture/13", "prefecture", [0.0]).render()
    )


def test_a_healthy_center_has_no_upstream_badge_and_shows_its_agency_side() -> None:
    metrics = NodeMetrics()
    metrics.observe_lookup_group(6, 0, 0.003)
    metrics.observe_lookup_group(2, 0, 0.0042)
    metrics.agency_rate_anomalies.labels("pension").inc()
    page = board(metrics, "jukinet://center", "center", [0.0]).render()
    assert "links open" in page
    assert "upstream" not in page
    assert "<td>agency lookups (unary)</td><td>8 (–)</td>" in page
    assert "<td>lookups per transaction (mean)</td><td>4.0</td>" in page
    assert "<td>lookup group linger</td><td>4.2 ms</td>" in page  # the latest
    assert "<td>rate anomalies: agency pension</td><td>1</td>" in page


def test_rates_are_per_second_since_the_previous_render() -> None:
    metrics = NodeMetrics()
    times = [100.0]
    dashboard = board(metrics, "jukinet://municipality/132080", "municipality", times)
    metrics.changes_applied.inc(50)
    first = dashboard.render()
    assert "<td>applied</td><td>50</td><td>–</td>" in first  # no earlier render: no rate yet
    metrics.changes_applied.inc(30)
    metrics.count_rpc("RecordChanges", "OK", 0.01)
    times[0] = 104.0
    second = dashboard.render()
    assert "<td>applied</td><td>80</td><td>7.5/s</td>" in second
    assert "<td>RecordChanges</td><td>OK</td><td>1</td><td>0.2/s</td>" in second  # new since the first render
    assert "<td>free 住民票コード in the pool</td><td>0</td>" in second


def test_labels_are_escaped() -> None:
    metrics = NodeMetrics()
    metrics.changes_refused.labels("<script>alert(1)</script>").inc()
    page = board(metrics, "jukinet://municipality/132080", "municipality", [0.0]).render()
    assert "<script>" not in page
    assert "change: &lt;script&gt;alert(1)&lt;/script&gt;" in page
