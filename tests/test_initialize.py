"""tmws initialize: the initialize_patterns step (deploy/README.md, Step 5), through the
command line."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import run


def test_initialize_cli(tmp_path: Path) -> None:
    done = run("initialize")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["pattern", "type", "priority", "handler", "examples", "routed"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
    assert rows["health_check"][1:4] == ["infrastructure", "8", "health_check"]
    assert rows["recall_memory"][1] == "memory" and rows["semantic_search"][1] == "hybrid"
    assert "15 patterns active" in done.stdout
    bad = tmp_path / "patterns.yaml"
    bad.write_text("x_patterns:\n  - {name: p, pattern_type: memory, trigger_pattern: '(?!no)'}\n")
    refused = run("initialize", "--patterns", str(bad))
    assert refused.returncode == 2 and refused.stdout == ""
    assert str(bad) in refused.stderr and "'p'" in refused.stderr
    misrouting = tmp_path / "misrouting.yaml"
    misrouting.write_text(
        "x_patterns:\n"
        "  - {name: first, pattern_type: infrastructure, trigger_pattern: '\\bping', priority: 9,"
        " metadata: {example_queries: ['ping redis']}}\n"
        "  - {name: second, pattern_type: infrastructure, trigger_pattern: '\\bredis', priority: 1,"
        " metadata: {example_queries: ['ping redis now', 'redis status']}}\n")
    partly = run("initialize", "--patterns", str(misrouting))
    assert partly.returncode == 0, partly.stderr
    assert "second: ping redis now -> first" in partly.stdout
    assert "2/3 example queries" in partly.stdout
