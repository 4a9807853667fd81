"""deploy/prometheus: the alert rules are well-formed and name only metrics and labels a node exports (a
renamed metric would otherwise leave an alert that can never fire); where promtool is installed, Prometheus's
own checker and the rules' unit tests (alerts_test.yml) run too."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def exported() -> dict[str, set[str]]:
    """Each exported sample name with its label names (labelled metrics show their samples once used)."""
    metrics = NodeMetrics()
    metrics.count_rpc("RecordChange", "OK", 0.01)
    metrics.code_anomalies.labels("never_issued").set(0)
    metrics.agency_rate_anomalies.labels("pension").inc()
    metrics.audit_checkpoints.labels("signed").inc()
    metrics.node_info.labels("jukinet://center", "center").set(1)
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, {"instance", "job"}).update(sample.labels)
    return labels


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
def test_a_rule_names_only_exported_metrics_and_labels(rule: dict[str, Any]) -> None:
    labels = exported()
    expr = rule["expr"]
    named = set(METRIC.findall(expr))
    assert named or "up{" in expr, "a rule on nothing a node exports"
    assert named <= labels.keys(), f"not exported by any node: {sorted(named - labels.keys())}"
    for metric, matchers in re.findall(r"\b(jukinet_[a-z0-9_]+)\{([^}]*)\}", expr):  # each selector's own labels
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= labels[metric], f"{metric} has no label {sorted(used - labels[metric])}"
    grouped = {
        m for g in re.findall(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)", expr) for m in re.findall(r"\w+", g)
    }
    every = set().union(*(labels[m] for m in named)) if named else {"instance", "job"}
    assert grouped <= every, f"grouping by labels none of its metrics has: {sorted(grouped - every)}"


def test_the_scrape_config_loads_the_rules_from_the_metrics_path() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert [job["metrics_path"] for job in config["scrape_configs"]] == ["/metrics"]  # / is the dashboard page


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: apt install prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    commands = (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    )
    for command in commands:
        done = subprocess.run(
            ["promtool", *command], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
