"""Simulated event time never runs ahead of the wall clock by default."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline.simulator.produce import Pacer

REPO = Path(__file__).resolve().parents[2]


class RecordingStop(threading.Event):
    """Records how long the pacer asked to wait instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return False


def test_a_message_dated_in_the_future_waits_for_the_wall_clock() -> None:
    now_ms = int(time.time() * 1000)
    stop = RecordingStop()
    pacer = Pacer(100.0, now_ms, stop, not_ahead=True)
    pacer.wait(now_ms)
    pacer.wait(now_ms + 2000)  # 2 s of event time: 20 ms at speed 100, but it is 2 s in the future
    assert stop.waits and 1.9 <= stop.waits[-1] <= 2.01


def test_without_the_cap_speed_alone_decides() -> None:
    now_ms = int(time.time() * 1000)
    stop = RecordingStop()
    pacer = Pacer(100.0, now_ms, stop)
    pacer.wait(now_ms)
    pacer.wait(now_ms + 2000)
    assert stop.waits and stop.waits[-1] <= 0.03


def test_simulate_faster_than_real_time_starts_in_the_past_and_ends_by_now(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    args = ["simulate", "--duration", "2m", "--speed", "120", "--rate", "20000", "--profile", "flat"]
    began = datetime.now(UTC)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--out", str(out), "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    finished = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    times = [
        datetime.fromisoformat(json.loads(line)["at"].replace("Z", "+00:00")) for line in out.read_text().splitlines()
    ]
    assert len(times) > 50
    assert (began - min(times)).total_seconds() > 100  # 2 min of event time, nearly all before the start
    assert max(times) <= finished  # none dated after the moment it was written
