"""The worker's analyst endpoints on the real broker: a token is required when set (and to listen
beyond loopback), cross-origin browser requests and non-reads are refused, an endless query ends
with a limit error within the limit while other queries still answer, and the token never appears
in the worker's log."""

from __future__ import annotations

import concurrent.futures
import json
import socket
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
    # the README's curl: TSV with a header row, values escaped as ClickHouse writes them
    status, body = call(worker, "/sql", b"SELECT 1 AS one, 'a\tb' AS s", bearer)
    assert (status, body) == (200, b"one\ts\n1\ta\\tb\n"), body
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


def test_a_query_whose_client_goes_away_is_cancelled(kafka: str, tmp_path: Path) -> None:
    limit = 300
    env = {"TOUCHLINE_SQL_MAX_EXECUTION_SECONDS": str(limit), "TOUCHLINE_SQL_CONNECTIONS": "2"}
    running = (
        "SELECT count() FROM system.processes"
        " WHERE query LIKE '%system.numbers%' AND query NOT LIKE '%system.processes%'"
    )
    with open_workspace(kafka, tmp_path, env) as space:
        worker = space.start_worker()
        endless = b"SELECT count() FROM system.numbers"
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as client:
            client.sendall(
                b"POST /sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(endless)}\r\n\r\n".encode()
                + endless
            )
            time.sleep(1.0)
            before = worker.sql(running)
        dropped = time.monotonic()
        while (left := worker.sql(running)) != [[0]] and time.monotonic() - dropped < 20:
            time.sleep(0.1)
        ended = time.monotonic() - dropped
        # both connections are free again: two queries at once answer at once
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(worker.sql, ["SELECT 1", "SELECT 2"]))
        answered = time.monotonic() - dropped
        worker.stop()
        log = worker.log.read_text(errors="replace")
    print(
        f"client dropped after 1 s: its query ended within {ended:.2f} s; two queries answered after {answered:.2f} s"
    )
    assert before == [[1]], "the endless query was not running before its client went away"
    assert left == [[0]] and ended < 3.0, f"the query of a client gone ran on for {ended:.1f} s (limit {limit} s)"
    assert answers == [[[1]], [[2]]] and answered < 5.0
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
