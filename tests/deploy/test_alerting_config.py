"""The shipped alerting configuration, checked with the real tools and without any server.

- ``promtool check rules`` accepts the rule file and ``promtool test rules`` passes its unit
  tests (deploy/prometheus/tests/anomaly-pipeline.test.yml).
- ``amtool check-config`` accepts the Alertmanager configuration, and every routing case in
  deploy/alertmanager/tests/routes.txt resolves to exactly its receivers (``amtool config
  routes test --verify.receivers``, which exits non-zero on a mismatch).
- Coverage: every alert of the rule file is tested both firing and not firing; the routing cases
  cover every finding kind at every severity and every self-monitoring alert.
- Every alert has a ``runbook_url`` pointing at a file under docs/runbooks/ that exists, and at
  a heading of it when the URL has an ``#anchor`` (GitHub's heading slugs); the finding alerts'
  links are the ones the workers put on findings (RUNBOOK_BASE_URL + kind + ``.md``).

A missing promtool or amtool fails its tests with how to install them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.settings import RUNBOOK_BASE_URL
from tests.support import tools
from tests.support.tools import load_yaml, run

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "anomaly-pipeline.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "anomaly-pipeline.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ROUTES = ROOT / "deploy" / "alertmanager" / "tests" / "routes.txt"
RUNBOOKS = ROOT / "docs" / "runbooks"

INSTALL = "`apt-get install prometheus prometheus-alertmanager` (Debian)"
KINDS = ("bottleneck_span", "latency_regression", "memory_leak", "gc_pressure",
         "time_wait_buildup", "error_origin")
SEVERITIES = ("info", "warning", "critical")
# Where the rules' runbook links point in this repository (GitHub "blob" URLs of main).
BLOB = "/blob/main/"


# ------------------------------------------------------------------------------------------
# helpers


def tool(name: str) -> str:
    return tools.tool(name, install=f"install it with {INSTALL} "
                      "(deploy/local/test-tools.sh does this when it can)")


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def route_cases() -> list[tuple[str, list[str]]]:
    """(expected receivers, labels) per non-comment line of routes.txt."""
    cases = []
    for line in ROUTES.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            want, *labels = shlex.split(line)
            cases.append((want, labels))
    return cases


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (github-slugger): the rendered text in lower
    case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of a Markdown file's ATX headings (outside code fences), with GitHub's -1, -2
    suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r" {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


# ------------------------------------------------------------------------------------------
# the tools


def test_promtool_check_rules() -> None:
    proc = run([tool("promtool"), "check", "rules", str(RULES)])
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in proc.stdout, output(proc)


def test_promtool_unit_tests_pass() -> None:
    proc = run([tool("promtool"), "test", "rules", str(RULE_TESTS)])
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in proc.stdout, output(proc)


def test_example_scrape_config_loads_the_rules() -> None:
    """deploy/prometheus/prometheus.yml: valid, loads the rule file, and scrapes the job the
    self-monitoring alerts select on."""
    example = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    proc = run([tool("promtool"), "check", "config", str(example)])
    assert proc.returncode == 0, output(proc)
    assert re.search(r"SUCCESS: \d+ rules found", proc.stdout + proc.stderr), output(proc)
    config = load_yaml(example)
    assert [j["job_name"] for j in config["scrape_configs"]] == ["anomaly-pipeline"]
    assert not config["scrape_configs"][0].get("honor_labels")
    assert 'job="anomaly-pipeline"' in RULES.read_text()


def test_amtool_check_config() -> None:
    proc = run([tool("amtool"), "check-config", str(ALERTMANAGER)])
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in proc.stdout, output(proc)


@pytest.mark.parametrize(("receivers", "labels"), route_cases(),
                         ids=[f"{w}<-{' '.join(labels[:3])}" for w, labels in route_cases()])
def test_route(receivers: str, labels: list[str]) -> None:
    proc = run([tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                f"--verify.receivers={receivers}", *labels])
    assert proc.returncode == 0, f"expected {receivers}, got {proc.stdout.strip()!r}\n" + (
        output(proc))


# ------------------------------------------------------------------------------------------
# coverage of the tests themselves


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    doc = load_yaml(RULE_TESTS)
    assert [(RULE_TESTS.parent / f).resolve() for f in doc["rule_files"]] == [RULES.resolve()]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test") or []:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    # promtool passes a check of an alert that does not exist when it expects no alerts.
    unknown = (firing | quiet) - set(names)
    assert not unknown, f"tests of alerts the rule file does not have: {sorted(unknown)}"
    assert not set(names) - firing, f"never tested firing: {sorted(set(names) - firing)}"
    assert not set(names) - quiet, f"never tested not firing: {sorted(set(names) - quiet)}"


def test_routing_cases_cover_every_kind_severity_and_health_alert() -> None:
    covered: set[tuple[str, ...]] = set()
    for _, labels in route_cases():
        lab = dict(label.split("=", 1) for label in labels)
        covered.add((lab.get("kind", ""), lab.get("severity", "")))
        covered.add((lab["alertname"], lab.get("severity", "")))
    missing = [(k, s) for k in KINDS for s in SEVERITIES if (k, s) not in covered]
    for rule in alert_rules():
        if rule["alert"].startswith("AnomalyPipeline"):
            severity = rule.get("labels", {}).get("severity", "")
            if (rule["alert"], severity) not in covered:
                missing.append((rule["alert"], severity))
    assert not missing, f"no routing case in {ROUTES.name} for {missing}"


# ------------------------------------------------------------------------------------------
# runbook links


def test_runbook_urls_point_at_existing_runbooks_and_headings() -> None:
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url")
        if not url:
            problems.append(f"{name}: no runbook_url annotation")
            continue
        parts = urlsplit(url)
        if BLOB not in parts.path:
            problems.append(f"{name}: {url} is not a {BLOB} link into the repository")
            continue
        path = ROOT / parts.path.split(BLOB, 1)[1]
        if not path.is_file() or RUNBOOKS.resolve() not in path.resolve().parents:
            problems.append(f"{name}: {url} -> {path.relative_to(ROOT)} is not a runbook file")
            continue
        if parts.fragment and parts.fragment not in anchors(path.read_text()):
            problems.append(f"{name}: {url}: no heading with anchor #{parts.fragment} in "
                            f"{path.relative_to(ROOT)} (has {sorted(anchors(path.read_text()))})")
    assert not problems, "\n".join(problems)


def test_finding_alerts_link_the_runbook_their_findings_carry() -> None:
    """A finding's runbook_url is RUNBOOK_BASE_URL + kind + .md; its alert links the same."""
    seen = set()
    for rule in alert_rules():
        kinds = re.findall(r'anomaly_pipeline_finding_active\{kind="(\w+)"\}', rule["expr"])
        if kinds:
            assert len(kinds) == 1, rule["alert"]
            seen.add(kinds[0])
            assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}{kinds[0]}.md"
    assert seen == set(KINDS)


@pytest.mark.parametrize(("heading", "slug"), [
    ("Worker down", "worker-down"),
    ("Event-time lag", "event-time-lag"),
    ("`memory_leak` — the post-GC memory floor", "memory_leak--the-post-gc-memory-floor"),
    ("Read the [finding](x.md) (JSON)", "read-the-finding-json"),
])
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug
