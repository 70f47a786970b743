"""Independent test oracles: what the KPI windows and SLA breaches of a simulated run must be,
computed from the simulator's ground-truth contact records (`pipeline.simulator.truth`) by code
that shares nothing with `pipeline.kpi` or `pipeline.sla` - only the documented rules.

- `kpi_truth`: per 1-minute window x channel x queue x priority, the columns `kpi_minute` exposes.
- `sla_truth`: the set of SLA breaches under a policy file (`deploy/sla-policies.yaml`).

Both accept contact records as dicts (lines of the truth JSONL with `kind == "contact"`, other kinds
are skipped) or `ContactTruth` objects (anything with `as_dict()`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_of(text: str | None) -> int | None:
    """Epoch milliseconds of a truth timestamp (`2026-03-01T09:15:02.250Z`); None stays None."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def iso(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (for messages)."""
    if epoch_ms is None:
        return None
    return (EPOCH + timedelta(milliseconds=epoch_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def contact_records(records: Iterable[Any]) -> list[dict[str, Any]]:
    """The contact records among `records` (truth dicts or `ContactTruth` objects), as dicts."""
    out: list[dict[str, Any]] = []
    for record in records:
        data = record.as_dict() if hasattr(record, "as_dict") else record
        if data.get("kind", "contact") == "contact":
            out.append(data)
    return out
