"""`touchline replay`: parsing and validation of replay files, message building and pacing (no broker)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from pipeline.events.models import EventBase, to_json
from pipeline.events.topics import interaction_topic
from pipeline.replay import ReplayStats, messages_of, parse_line, read_events, replay_command
from pipeline.simulator import delivered
from pipeline.simulator.faults import FaultConfig, FaultInjector
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.simulator.produce import Pacer, out_line
from pipeline.times import to_ms

START = to_ms(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))


def _recorded(bad_rate: float = 0.0) -> list[bytes]:
    sim = Simulation(SimConfig(seed=4, start_ms=START, duration_ms=10 * 60_000))
    injector = FaultInjector(FaultConfig(duplicate_rate=0.05, late_rate=0.1, bad_rate=bad_rate), 4, sim.tag)
    return [out_line(m) for m in delivered(sim, injector)]


def _canonical_lines() -> list[bytes]:
    sim = Simulation(SimConfig(seed=4, start_ms=START, duration_ms=10 * 60_000))
    return [to_json(event) + b"\n" for _, event in sim.run()]


def test_parse_canonical_event() -> None:
    line = _canonical_lines()[0]
    event = parse_line(line)
    assert isinstance(event, EventBase)
    assert to_json(event) + b"\n" == line


def test_parse_out_format_lines() -> None:
    lines = _recorded(bad_rate=0.1)
    results = [parse_line(line) for line in lines]
    bad_lines = [json.loads(line) for line in lines if b'"value_b64"' in line]
    assert bad_lines
    rejected = [r for r in results if isinstance(r, str)]
    assert len(rejected) == len(bad_lines)  # exactly the recorded malformed messages are rejected
    assert all(r.startswith("recorded ") for r in rejected)
    for line, result in zip(lines, results, strict=True):
        if isinstance(result, EventBase):
            record = json.loads(line)
            assert record["topic"] == interaction_topic(result.channel)


def test_parse_rejections_explain_why() -> None:
    good = json.loads(_canonical_lines()[0])
    assert parse_line(b"{not json").startswith("not JSON")  # type: ignore[union-attr]
    assert parse_line(b"[1, 2]") == "not a JSON object"
    missing = {k: v for k, v in good.items() if k != "event_id"}
    assert "event_id" in str(parse_line(json.dumps(missing).encode()))
    naive = dict(good, occurred_at=good["occurred_at"].rstrip("Z"))
    assert "occurred_at" in str(parse_line(json.dumps(naive).encode()))
    unknown = dict(good, type="coffee_break")
    assert isinstance(parse_line(json.dumps(unknown).encode()), str)
    base = {k: v for k, v in good.items() if k != "direction"}
    survey = dict(base, type="survey_response", survey="nps", score=11)
    assert "between 0 and 10" in str(parse_line(json.dumps(survey).encode()))
    wrong_topic = {"topic": "touchline.interactions.email", "key": "k", "value": dict(good, channel="voice")}
    assert "does not match topic" in str(parse_line(json.dumps(wrong_topic).encode()))
    not_b64 = {"topic": "t", "key": "k", "value_b64": "***"}
    assert parse_line(json.dumps(not_b64).encode()) == "value_b64 is not base64"
    garbage = {"topic": "t", "key": "k", "value_b64": base64.b64encode(b"\x00\x01").decode(), "bad": "not_json"}
    assert "(not_json)" in str(parse_line(json.dumps(garbage).encode()))


def test_read_events_counts_and_numbers_lines() -> None:
    lines = _canonical_lines()[:5]
    content = b"".join([lines[0], b"garbage\n", b"\n", *lines[1:]])
    stats = ReplayStats()
    numbers = [n for n, _ in read_events(io.BytesIO(content), stats)]
    assert numbers == [1, 4, 5, 6, 7]
    assert stats.valid == 5 and stats.blank == 1
    assert [b.line for b in stats.bad] == [2]


def test_messages_preserve_file_order_and_pace_monotonically() -> None:
    lines = _recorded()
    stats = ReplayStats()
    messages = list(messages_of(read_events(io.BytesIO(b"".join(lines)), stats)))
    assert len(messages) == stats.valid == len(lines)
    for line, message in zip(lines, messages, strict=True):
        record = json.loads(line)
        assert message.topic == record["topic"] and message.key == record["key"].encode()
        assert json.loads(message.value) == record["value"]
    pacing = [m.deliver_ms for m in messages]
    assert pacing == sorted(pacing)
    assert [m.event_ms for m in messages] != sorted(m.event_ms for m in messages)  # late events kept in place


def test_messages_stop_when_asked() -> None:
    stop = threading.Event()
    stats = ReplayStats()
    stream = messages_of(read_events(io.BytesIO(b"".join(_canonical_lines())), stats), stop)
    next(stream)
    stop.set()
    assert list(stream) == []


def test_pacer() -> None:
    pacer = Pacer(0, None)
    started = time.monotonic()
    for at in range(0, 10_000_000, 1000):
        pacer.wait(at)
    assert time.monotonic() - started < 1
    fast = Pacer(100, 0)
    started = time.monotonic()
    fast.wait(0)
    fast.wait(5_000)  # 5 s simulated at 100x = 50 ms
    assert 0.04 <= time.monotonic() - started < 1
    stop = threading.Event()
    stop.set()
    stopped = Pacer(1, 0, stop)
    started = time.monotonic()
    stopped.wait(0)
    stopped.wait(3_600_000)
    assert time.monotonic() - started < 0.5


def test_dry_run_cli(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(_recorded(bad_rate=0.05)))
    result = CliRunner().invoke(replay_command, [str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "valid events" in result.output and "line " in result.output
    empty = tmp_path / "bad.jsonl"
    empty.write_bytes(b"nope\n{}\n")
    result = CliRunner().invoke(replay_command, [str(empty), "--dry-run"])
    assert result.exit_code == 1
    assert "line 1: not JSON" in result.output and "line 2:" in result.output
