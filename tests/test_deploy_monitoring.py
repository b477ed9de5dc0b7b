"""deploy/prometheus and deploy/grafana: the rules, their promtool unit tests and the scrape
config are valid, and every metric they (and the dashboard) query is one tmws exports.

promtool comes from the Debian ``prometheus`` package (.ci/run installs it); without it these
tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import tmws.metrics  # noqa: F401  (registers the metrics read below)

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tmws-dashboard.json"

# The original service's alert rules (deploy/README.md, Monitoring and Alerts):
# name -> (for, severity, summary).
GUIDE_ALERTS = {
    "HighExecutionTime": ("5m", "warning", "Pattern execution P95 exceeds 200ms"),
    "CriticalExecutionTime": ("2m", "critical", "Pattern execution P99 exceeds 500ms"),
    "LowCacheHitRate": ("10m", "warning", "Cache hit rate below 70%"),
    "HighErrorRate": ("5m", "warning", "Error rate above 5%"),
    "HighDatabaseConnections": ("5m", "warning", "Database connections approaching limit"),
}
# ... and their thresholds, which must survive the rewrite.
GUIDE_THRESHOLDS = {
    "HighExecutionTime": "> 0.2",
    "CriticalExecutionTime": "> 0.5",
    "LowCacheHitRate": "< 0.7",
    "HighErrorRate": "> 0.05",
    "HighDatabaseConnections": "> 18",
}
GUIDE_PANELS = ["Execution Time (P50, P95, P99)", "Throughput (Requests/sec)",
                "Cache Hit Rate", "Error Rate"]

# Series names per metric type, as the exposition format writes them.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_PROMQL_WORDS = frozenset(
    "and or unless by without on ignoring group_left group_right bool offset inf nan".split())


def _promtool(*args: str) -> str:
    """Run promtool; fail (never skip) if it is missing or says no."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not on PATH: install it with `apt-get install -y "
                    "--no-install-recommends prometheus` (.ci/run does this)", pytrace=False)
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    output = f"$ promtool {' '.join(args)}\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, output
    return output


def _exported_series() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("tmws"):
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (without a full parser: label matchers,
    strings, ranges and grouping label lists are removed; what is left and not a function
    call, keyword or number is a metric name)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        word, rest = match.group(), expr[match.end():].lstrip()
        if not rest.startswith("(") and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_queries() -> dict[str, str]:
    """``"panel title/refId"`` -> PromQL."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{panel['title']}/{target['refId']}": target["expr"]
            for panel in dashboard["panels"] for target in panel["targets"]}


def test_promtool_checks_the_alert_rules() -> None:
    assert "SUCCESS: 5 rules found" in _promtool("check", "rules", str(ALERTS))


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    _promtool("test", "rules", str(ALERT_TESTS))


def test_promtool_checks_the_scrape_config() -> None:
    _promtool("check", "config", str(CONFIG))
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["tmws:8000"]}]


def test_alerts_keep_the_guides_names_thresholds_and_severities() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    assert set(rules) == set(GUIDE_ALERTS)
    for name, (wait, severity, summary) in GUIDE_ALERTS.items():
        rule = rules[name]
        assert (rule["for"], rule["labels"]["severity"], rule["annotations"]["summary"]) == (
            wait, severity, summary), name
        assert GUIDE_THRESHOLDS[name] in " ".join(rule["expr"].split()), name


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == quiet == set(GUIDE_ALERTS)


def test_dashboard_is_the_guides_four_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "TMWS Pattern Execution Service"
    assert [panel["title"] for panel in dashboard["panels"]] == GUIDE_PANELS
    assert all(panel["targets"] for panel in dashboard["panels"])


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool has no bare query check: load the queries as recording rules instead.
    rules = [{"record": f"dashboard:query{index}",
              "expr": expr.replace("$__rate_interval", "1m")}
             for index, expr in enumerate(_dashboard_queries().values())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


def test_metric_name_extraction() -> None:
    assert _metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y}"}[5m]))) > 0.2 '
        'and on (job, instance) sum without(le) (rate(b_total[$__rate_interval])) >= 0.1 '
        "unless c * 1e3") == {"a_bucket", "b_total", "c"}


def test_rules_and_dashboard_use_only_metrics_tmws_exports() -> None:
    exported = _exported_series()
    assert {"tmws_pattern_executions_total", "tmws_pattern_execution_duration_seconds_bucket",
            "tmws_pattern_cache_hit_rate", "tmws_database_connections_active",
            "tmws_info"} <= exported
    queries = {f"alert {rule['alert']}": rule["expr"] for rule in _rules()}
    queries.update((f"dashboard panel {where}", expr)
                   for where, expr in _dashboard_queries().items())
    for where, expr in queries.items():
        names = _metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by tmws"


def test_cache_hit_rate_is_counted_across_workers_and_instances() -> None:
    """The gauge is a since-start ratio; the alert and the panel take rate(hits) /
    rate(lookups), summed over every worker (per scrape) and instance."""
    expected = {"tmws_pattern_cache_hits_total", "tmws_pattern_cache_lookups_total"}
    rule = {rule["alert"]: rule for rule in _rules()}["LowCacheHitRate"]
    assert _metric_names(rule["expr"]) == expected
    assert "instance" not in rule["expr"] and rule["expr"].count("sum by (job)") == 3
    panel = _dashboard_queries()["Cache Hit Rate/A"]
    assert _metric_names(panel) == expected and panel.count("sum by (cache_type)") == 2
