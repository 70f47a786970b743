"""The README's "Sending your own events" snippet, run as written (with a stand-in producer): every
message it sends is an event the worker accepts, on its channel's topic, keyed by its contact id,
and together they are one answered call."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pipeline.events.models import EventBase, event_type
from pipeline.ingest.decode import decode

README = Path(__file__).resolve().parents[2] / "README.md"


class CapturingProducer:
    sent: list[tuple[str, bytes, bytes]] = []

    def __init__(self, **options: Any) -> None:
        assert options["bootstrap_servers"] == "127.0.0.1:9092"

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        pass


def test_readme_answered_call_is_accepted_by_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    block = README.read_text().split("<!-- answered-call:start")[1].split("<!-- answered-call:end -->")[0]
    code = re.search(r"```python\n(.*?)```", block, re.DOTALL)
    assert code is not None
    fake_kafka = types.ModuleType("kafka")
    fake_kafka.KafkaProducer = CapturingProducer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kafka", fake_kafka)
    CapturingProducer.sent = []
    exec(compile(code.group(1), "README.md", "exec"), {"__name__": "readme"})
    events = []
    for topic, key, value in CapturingProducer.sent:
        event = decode(value, topic, 65536, key)
        assert isinstance(event, EventBase), f"{value!r} rejected: {event}"
        events.append(event)
    types_sent = [event_type(e) for e in events]
    assert types_sent[0] == "contact_started" and types_sent[-1] == "ended"
    assert {"queued", "agent_assigned"} <= set(types_sent)
    queued = next(e for e in events if event_type(e) == "queued")
    answered = next(e for e in events if event_type(e) == "agent_assigned")
    assert (answered.occurred_at - queued.occurred_at).total_seconds() == 22
    assert len({e.contact_id for e in events}) == 1 and len({e.event_id for e in events}) == len(events)
