"""Every file derived from code, rendered in one place: `touchline generate` writes them and
`touchline generate --check` names each committed file that differs from its source.

- `schemas/events/*.json` from the pydantic event models;
- `schemas/clickhouse/0003_kpi_windows.sql` from the KPI definitions;
- the README's KPI, ticket-KPI and configuration tables from the KPI definitions and the settings;
- `grafana/dashboards/*.json` and the Grafana alerting provisioning from `pipeline/dashboards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Drift:
    path: Path  # relative to the repository
    source: str  # what it is rendered from
    note: str = ""  # what else to do besides regenerating


def render(root: Path = REPO) -> dict[Path, tuple[str, str]]:
    """Path (relative to the repository) -> (content, what it is rendered from). The README's
    generated tables are rendered into `root`'s README (the repository's when `root` has none)."""
    from pipeline import config_docs
    from pipeline.dashboards import generate as dashboards
    from pipeline.events import jsonschema
    from pipeline.kpi import ddl, docs

    files: dict[Path, tuple[str, str]] = {}
    events_dir = jsonschema.EVENTS_SCHEMA_DIR.relative_to(REPO)
    for name, text in jsonschema.generate().items():
        files[events_dir / name] = (text, "the event models (pipeline/events/models.py)")
    files[ddl.DDL_PATH.relative_to(REPO)] = (ddl.render_kpi_ddl(), "the KPI definitions (pipeline/kpi/)")
    readme_path = root / "README.md" if (root / "README.md").is_file() else REPO / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    files[Path("README.md")] = (
        config_docs.with_table(docs.with_table(readme)),
        "the KPI definitions and the settings model (pipeline/config.py)",
    )
    for path, text in dashboards.render().items():
        files[path] = (text, "pipeline/dashboards/")
    return files


def stale_event_schemas() -> list[Path]:
    """Event schema files no model renders any more (written files are removed by `write`)."""
    from pipeline.events import jsonschema

    wanted = set(jsonschema.generate())
    return sorted(p.relative_to(REPO) for p in jsonschema.EVENTS_SCHEMA_DIR.glob("*.json") if p.name not in wanted)


def _differing(root: Path) -> list[tuple[Path, str, str]]:
    """(path, content, source) of each rendered file whose copy under `root` is missing or differs."""
    return [
        (path, text, source)
        for path, (text, source) in render(root).items()
        if not ((root / path).is_file() and (root / path).read_text(encoding="utf-8") == text)
    ]


def drift(root: Path = REPO) -> list[Drift]:
    """Every generated file whose committed copy is missing or differs, and stale ones."""
    from pipeline.kpi import ddl

    migration = ddl.DDL_PATH.relative_to(REPO)
    note = "it is a migration: a store created before the change also needs a new migration"
    found = [Drift(path, source, note if path == migration else "") for path, _, source in _differing(root)]
    found += [Drift(path, "no event model any more", "it is removed") for path in stale_event_schemas()]
    return found


def write(root: Path = REPO) -> list[Path]:
    """Write what differs; the paths written or removed."""
    changed = []
    for path, text, _ in _differing(root):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
        changed.append(path)
    for path in stale_event_schemas():
        (root / path).unlink()
        changed.append(path)
    return changed
