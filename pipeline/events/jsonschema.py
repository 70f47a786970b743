"""Generates `schemas/events/*.json` (JSON Schema 2020-12) from the pydantic event models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.events.models import EVENT_ADAPTER, MODEL_BY_TYPE
from pipeline.resources import data_path

EVENTS_SCHEMA_DIR = data_path("schemas", "events")
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def _render(schema: dict[str, Any], title: str) -> str:
    document = {"$schema": SCHEMA_URI, "$id": f"touchline/events/{title}.json", **schema}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> content for every event type, plus `interaction_event.json` (any event)."""
    files = {}
    for name, model in sorted(MODEL_BY_TYPE.items()):
        schema = model.model_json_schema(mode="validation")
        files[f"{name}.json"] = _render(schema, name)
    union = EVENT_ADAPTER.json_schema(mode="validation")
    union["title"] = "InteractionEvent"
    union["description"] = (
        "Any Touchline interaction event, selected by its `type`. Published as UTF-8 JSON on "
        "`touchline.interactions.<channel>`, keyed by `contact_id`."
    )
    files["interaction_event.json"] = _render(union, "interaction_event")
    return files


def write(directory: Path = EVENTS_SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = generate()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, content in files.items():
        (directory / name).write_text(content)
    return sorted(files)


def drift(directory: Path = EVENTS_SCHEMA_DIR) -> list[str]:
    """Names of files that are missing, stale or different from what the models generate."""
    files = generate()
    present = {p.name for p in directory.glob("*.json")}
    changed = [n for n, c in files.items() if not (directory / n).is_file() or (directory / n).read_text() != c]
    return sorted(changed + [n for n in present if n not in files])
