"""deploy/prometheus: the alert rules are well-formed and name only metrics a node exports (a renamed metric
would otherwise leave an alert that can never fire), with the labels the example scrape config gives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jukinet.observability.metrics import NodeMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
METRIC = re.compile(r"\bjukinet_[a-z0-9_]+")
SEVERITIES = {"critical", "warning", "info"}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def exported_samples() -> set[str]:
    metrics = NodeMetrics()
    metrics.count_rpc("RecordChange", "OK", 0.01)  # labelled metrics show their samples once used
    metrics.changes_refused.labels("INVALID_FIELD").inc()
    metrics.refused_calls.labels("WRONG_ROLE").inc()
    metrics.code_anomalies.labels("never_issued").set(0)
    metrics.agency_rate_anomalies.labels("pension").inc()
    metrics.audit_checkpoints.labels("signed").inc()
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_every_rule_is_complete_and_uniquely_named() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 15
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_a_rule_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    named = set(METRIC.findall(rule["expr"]))
    assert named or "up{" in rule["expr"], "a rule on nothing a node exports"
    assert named <= exported_samples(), f"not exported by any node: {sorted(named - exported_samples())}"


def test_the_tier_label_the_rules_use_is_set_by_the_scrape_config() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    tiers = {t["labels"]["tier"] for job in config["scrape_configs"] for t in job["static_configs"]}
    assert tiers == {"center", "prefecture", "municipality"}
    used = {m for rule in rules() for m in re.findall(r'tier(?:!?=)"([a-z]+)"', rule["expr"])}
    assert used <= tiers
