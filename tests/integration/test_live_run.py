"""`python -m tools.run` (what `make run` calls) in a real 100-column terminal (tmux): the live view shows
what on-call needs, simulated time never runs ahead of the wall clock, and a rerun continues the
store without losing its KPIs to lateness, saying so. The captured screen is kept in
/work/notes/live-view-screen.txt (or $TOUCHLINE_LIVE_SCREEN)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="the live view test drives a real terminal (tmux)"),
]

COLUMNS, ROWS = 100, 60
SCREEN_FILE = Path(os.environ.get("TOUCHLINE_LIVE_SCREEN", "/work/notes/live-view-screen.txt"))


class Terminal:
    """A tmux session of its own (private server socket) running one command."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.session = f"run-{uuid.uuid4().hex[:6]}"

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True)
        return result.stdout

    def start(self, command: str) -> None:
        # keep the pane after the command ends, so its last screen can still be read
        self.tmux(
            "new-session", "-d", "-s", self.session, "-x", str(COLUMNS), "-y", str(ROWS), command + "; sleep 3600"
        )

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def history(self) -> str:
        """Everything printed so far, lines the terminal wrapped at 100 columns joined again."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", self.session)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.history()
            if re.search(pattern, screen):
                return screen
            time.sleep(1)
        raise AssertionError(f"no {pattern!r} on screen after {timeout:.0f} s:\n{self.history()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOUCHLINE_", "KAFKA_"))}
    env.update(
        {
            "TOUCHLINE_DATA_DIR": str(tmp_path / "data"),
            "TOUCHLINE_LOCAL_KAFKA_PORT": str(free_port()),
            "TOUCHLINE_WORKER_WEB_PORT": str(free_port()),
            "PYTHONPATH": str(REPO),
            "TERM": "xterm-256color",
        }
    )
    yield env
    from tools import broker

    broker.stop(tmp_path / "data" / "kafka")  # only if a failed run left it


def run_in_terminal(env: dict[str, str], socket: str, args: str) -> Terminal:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith(("TOUCHLINE_", "PYTHON")))
    terminal = Terminal(socket)
    # the terminal's own size, not COLUMNS/LINES the test runner may have exported (pytest sets 80x24)
    command = f"env -u COLUMNS -u LINES {exports} {shlex.quote(sys.executable)} -m tools.run {args}"
    terminal.start(f"cd {shlex.quote(str(REPO))} && {command}")
    return terminal


def sql(env: dict[str, str], query: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sql", query], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[1]


def test_live_view_in_a_terminal_and_a_rerun_that_loses_nothing(run_env: dict[str, str]) -> None:
    socket = f"touchline-test-{uuid.uuid4().hex[:6]}"
    args = "--duration 30 --speed 30 --seed 7 --rate 4000"
    first = run_in_terminal(run_env, socket, args)
    try:
        first.wait_for(r"fresh store \(chdb://", 240)
        # the view once the queue table has rows with answered calls and the event-time clock runs
        screen = first.wait_for(r"(?m)^voice +\S+ +\d+\.\d%", 180)
        screen = first.screen()
        SCREEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        SCREEN_FILE.write_text(screen)
        for expected in (
            "SLA by channel and queue, last 15 min of event time",
            "channel  queue",
            "breach FR/NR/RES",
            "risk",
            "oldest",
            "late events 0 (arrived behind the watermark",
            "Events by channel",
        ):
            assert expected in screen, f"{expected!r} not on screen:\n{screen}"
        assert re.search(r"event time 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC +watermark lag \S+ +consumer lag", screen)
        queue_rows = re.findall(r"(?m)^(voice|chat|web|email|sms|social) +(\S+) +(\S+) +(\d+) +(\d+) +(\d+) ", screen)
        assert len(queue_rows) >= 3, screen
        assert "…" not in screen  # nothing cut at 100 columns
        assert all(len(line) <= COLUMNS for line in screen.splitlines())
        end = first.wait_for(r"(?m)^done\. Data is in", 240)
        assert "late events this run: 0" in end
    finally:
        first.close()
    offered_first = int(sql(run_env, "SELECT sum(offered) FROM kpi_minute"))
    ahead = sql(run_env, "SELECT max(occurred_at) > now64(3) + INTERVAL 2 SECOND FROM interaction_events")
    assert offered_first > 0
    assert ahead == "false" or ahead == "0", "simulated events were dated in the future"

    # the rerun only has to continue the store and count nothing late: a shorter run
    second = run_in_terminal(run_env, f"{socket}-2", args.replace("--duration 30", "--duration 12"))
    try:
        second.wait_for(r"continuing the store at chdb://\S+: [\d,]+ events, the newest at", 240)
        end = second.wait_for(r"(?m)^done\. Data is in", 300)
        assert "so no event of this run is late" in end
        assert "late events this run: 0" in end
    finally:
        second.close()
    offered_second = int(sql(run_env, "SELECT sum(offered) FROM kpi_minute"))
    assert offered_second > offered_first, (offered_first, offered_second)
