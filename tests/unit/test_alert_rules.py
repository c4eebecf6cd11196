"""The Prometheus alert rules: promtool (Debian's prometheus package, installed by
scripts/install-deps.sh) finds them valid and their unit tests pass, and every
metric a rule reads is one this project exports, so no rule waits on a series
that never comes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "packaging" / "prometheus" / "alerts_test.yml"
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (scripts/install-deps.sh installs it)"
    return path


def test_rules_are_valid():
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", proc.stdout), proc.stdout


def test_rule_unit_tests_pass():
    proc = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], check=False, capture_output=True, text=True,
                          timeout=120, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_is_tested_firing():
    rules = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tested = RULE_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tested))
    assert rules and rules - firing == set(), f"rules with no test where they fire: {sorted(rules - firing)}"


def test_rules_read_only_metrics_the_project_exports():
    source = "\n".join(p.read_text() for p in (REPO / "netplugin").rglob("*.py"))
    names = set(re.findall(r"\b(netplugin_[a-z_]+)", RULES.read_text()))
    assert len(names) >= 8
    missing = []
    for name in sorted(names):
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
        if f'"{base}"' not in source:
            missing.append(name)
    assert missing == [], f"alert rules read metrics nothing exports: {missing}"
