"""The worker's analyst endpoints on the real broker: a token is required when set (and to listen
beyond loopback), cross-origin browser requests and non-reads are refused, an endless query ends
with a limit error within the limit while other queries still answer, and the token never appears
in the worker's log."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Worker, Workspace, free_port, open_workspace

pytestmark = pytest.mark.integration

TOKEN = "tl-test-token-4f1c2b9e8d7a6c5b"
LIMIT_SECONDS = 3
PHONE_DIGITS = "441632960999"


@pytest.fixture
def guarded(kafka: str, tmp_path: Path) -> Iterator[Workspace]:
    env = {
        "TOUCHLINE_WORKER_TOKEN": TOKEN,
        "TOUCHLINE_SQL_MAX_EXECUTION_SECONDS": str(LIMIT_SECONDS),
        "TOUCHLINE_LOG_LEVEL": "debug",  # the most the worker ever logs
    }
    with open_workspace(kafka, tmp_path, env) as space:
        yield space


def call(
    worker: Worker, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{worker.url}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_analyst_endpoints_are_bounded_and_authenticated(guarded: Workspace) -> None:
    worker = guarded.start_worker()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert call(worker, "/sql", b"SELECT 1")[0] == 401
    assert call(worker, "/sql", b"SELECT 1", {"Authorization": "Bearer not-the-token"})[0] == 401
    assert call(worker, "/journeys/lookup?kind=phone&value=%2B441632960000")[0] == 401
    status, body = call(worker, "/sql?format=json", b"SELECT 1 AS one", bearer)
    assert status == 200 and json.loads(body)["rows"] == [[1]]
    # an agent's lookup by phone number: answered, and the number must not reach the log either
    assert call(worker, f"/journeys/lookup?kind=phone&value=%2B{PHONE_DIGITS}", headers=bearer)[0] in (404, 503)

    # a page on another origin posting text/plain, as a browser would
    evil = {**bearer, "Origin": "http://evil.example", "Content-Type": "text/plain"}
    assert call(worker, "/sql", b"SELECT 1", evil)[0] == 403
    for sql in ("SELECT 1 INTO OUTFILE 'pwned.txt'", "KILL QUERY WHERE 1", "SYSTEM FLUSH LOGS"):
        status, body = call(worker, "/sql", sql.encode(), bearer)
        assert status == 403, (sql, body)
    assert not (guarded.path / "pwned.txt").exists()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        endless = pool.submit(call, worker, "/sql", b"SELECT count() FROM system.numbers", bearer)
        time.sleep(0.5)
        quick_status, quick_body = call(worker, "/sql?format=json", b"SELECT 2 AS two", bearer)
        quick_after = time.monotonic() - started
        status, body = endless.result()
        endless_after = time.monotonic() - started
    print(f"endless query answered {status} after {endless_after:.2f} s; SELECT 2 meanwhile after {quick_after:.2f} s")
    assert quick_status == 200 and json.loads(quick_body)["rows"] == [[2]]
    assert quick_after < endless_after
    assert status == 400 and b"TIMEOUT_EXCEEDED" in body
    assert endless_after < LIMIT_SECONDS + 5

    cli = guarded.cli("sql", "--format", "json", "SELECT 3 AS three")
    assert json.loads(cli.stdout) == [{"three": 3}]

    worker.stop()
    log = worker.log.read_text(errors="replace")
    assert TOKEN not in log, "the token appears in the worker's log"
    assert PHONE_DIGITS not in log, "a looked-up phone number appears in the worker's log"
    assert "Traceback" not in log


def test_a_worker_listening_beyond_loopback_without_a_token_refuses_to_start(workspace: Workspace) -> None:
    env = {**workspace.env, "TOUCHLINE_WORKER_WEB_HOST": "0.0.0.0", "TOUCHLINE_WORKER_WEB_PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker"],
        env=env,
        cwd=workspace.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "TOUCHLINE_WORKER_TOKEN" in result.stderr and "Traceback" not in result.stderr
