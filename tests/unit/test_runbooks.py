"""Every alert that can page someone links to a runbook that exists: the `runbook_url` of each
Prometheus rule and Grafana alert rule ends in an anchor with a section under "Runbooks" in
grafana/README.md, and each of those sections is linked from some alert (none left stale)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.dashboards import queries as q

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "grafana" / "README.md"
SOURCES = (
    REPO / "deploy" / "prometheus" / "rules" / "touchline.yml",
    REPO / "grafana" / "provisioning" / "alerting" / "touchline.yaml",
)


def runbook_sections() -> dict[str, str]:
    """Anchor -> text of each `### anchor` section under `## Runbooks`."""
    text = GUIDE.read_text()
    part = text.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    sections = re.split(r"^### (\S+)\n", part, flags=re.M)[1:]
    return dict(zip(sections[::2], sections[1::2], strict=True))


def runbook_urls(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == "runbook_url" and isinstance(v, str)]
        return found + [url for v in value.values() for url in runbook_urls(v)]
    if isinstance(value, list):
        return [url for v in value for url in runbook_urls(v)]
    return []


def test_every_alert_links_to_a_runbook_section_and_every_section_is_linked() -> None:
    sections = runbook_sections()
    assert all(body.strip() for body in sections.values()), "an empty runbook section"
    linked: set[str] = set()
    for source in SOURCES:
        urls = runbook_urls(yaml.safe_load(source.read_text()))
        assert urls, f"{source.relative_to(REPO)} has no runbook_url"
        for url in urls:
            base, _, anchor = url.partition("#")
            assert base == q.RUNBOOK_BASE, f"{source.relative_to(REPO)}: {url} is not under RUNBOOK_BASE"
            assert anchor in sections, f"{source.relative_to(REPO)}: no runbook section `### {anchor}` for {url}"
            linked.add(anchor)
    assert set(sections) == linked, f"runbook sections no alert links to: {sorted(set(sections) - linked)}"
