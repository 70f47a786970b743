"""Analyst SQL: only plain reads reach ClickHouse (judged on its own parse), every query runs with
limits, one slow query does not hold up the others, and the endpoints want a token and no foreign
origin."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from pipeline.config import ConfigError, Settings
from pipeline.privacy import access
from pipeline.store import clickhouse as store
from pipeline.store.readonly import Limits, QueryRefused, open_readonly, run_readonly, statement
from pipeline.worker.sql_view import ClientGone, ReadonlyPool, _json

LIMIT_SECONDS = 2.0


def dsn_of(fixture_client: Client) -> tuple[str, str]:
    # chDB allows one data path per process: the session's store, read-only, on its own handle
    return next(key for key, client in store._clients.items() if client is fixture_client)


@pytest.fixture(scope="module")
def reader(clickhouse: Client) -> Client:
    dsn, database = dsn_of(clickhouse)
    return open_readonly(dsn, database, Limits(max_execution_seconds=LIMIT_SECONDS, max_result_rows=1000))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select count() from interaction_events",
        "WITH 2 AS two SELECT two * 2",
        "SHOW TABLES",
        "DESCRIBE TABLE interaction_events",
        "EXPLAIN SELECT 1",
        "SELECT 'INTO OUTFILE' AS x;",
        "SELECT name FROM system.settings WHERE name = 'readonly'",
        "SELECT * FROM numbers(3)",
        "(SELECT 1) UNION ALL (SELECT 2)",
    ],
)
def test_plain_reads_run(reader: Client, sql: str) -> None:
    columns, _rows = run_readonly(reader, sql)
    assert columns


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELECT 1 INTO OUTFILE '/tmp/touchline-outfile'", "INTO OUTFILE"),
        ("SELECT 1 INTO OUTFILE '/tmp/touchline-outfile' APPEND", "INTO OUTFILE"),
        ("SELECT 1 INTO OUTFILE '/tmp/touchline-outfile' TRUNCATE", "INTO OUTFILE"),
        ("select 1 into /* c */ outfile '/tmp/touchline-outfile'", "INTO OUTFILE"),
        ("KILL QUERY WHERE 1", "KillQuery"),
        ("SYSTEM FLUSH LOGS", ""),
        ("SELECT 1; DROP TABLE interaction_events", "one statement"),
        ("INSERT INTO dead_letters (reason) VALUES ('x')", "Insert"),
        ("DROP TABLE interaction_events", "Drop"),
        ("ALTER TABLE interaction_events DELETE WHERE 1", "Alter"),
        ("SET max_execution_time = 0", "Set"),
        ("SELECT count() FROM system.numbers SETTINGS max_execution_time = 0", "SETTINGS|readonly"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", r"file\(\)|readonly"),
        ("SELECT (SELECT count() FROM url('http://127.0.0.1:1/x', 'CSV', 'a String'))", r"url\(\)|readonly"),
        ("", "no query"),
    ],
)
def test_everything_else_is_refused(reader: Client, sql: str, says: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        run_readonly(reader, sql)
    assert re.search(says, str(refused.value))


def test_statement_is_lexical_about_strings_and_comments() -> None:
    assert statement("SELECT ';' -- trailing ; comment\n;") == "SELECT ';' -- trailing ; comment"
    with pytest.raises(QueryRefused):
        statement("SELECT 1 INTO\n\tOUTFILE 'x'")


def test_an_endless_query_ends_with_a_limit_error_within_the_limit(reader: Client) -> None:
    started = time.monotonic()
    with pytest.raises(Exception, match=r"TIMEOUT_EXCEEDED|Timeout exceeded") as error:
        run_readonly(reader, "SELECT count() FROM system.numbers")
    elapsed = time.monotonic() - started
    print(f"system.numbers stopped after {elapsed:.2f} s: {str(error.value).splitlines()[0][:120]}")
    assert elapsed < LIMIT_SECONDS + 5


def test_a_result_over_the_row_limit_is_refused(reader: Client) -> None:
    with pytest.raises(Exception, match=r"TOO_MANY_ROWS_OR_BYTES|Limit for result exceeded"):
        run_readonly(reader, "SELECT number FROM system.numbers LIMIT 5000")


def test_one_slow_query_does_not_hold_up_another(clickhouse: Client) -> None:
    dsn, database = dsn_of(clickhouse)
    pool = ReadonlyPool(dsn, database, Limits(max_execution_seconds=LIMIT_SECONDS), size=2)
    finished: list[str] = []

    async def slow() -> None:
        try:
            await pool.run("SELECT count() FROM system.numbers", _json)
        except Exception:
            finished.append("slow")

    async def quick() -> None:
        await asyncio.sleep(0.2)
        assert json.loads(await pool.run("SELECT 1", _json))["rows"] == [[1]]
        finished.append("quick")

    async def main() -> None:
        await asyncio.gather(slow(), quick())

    asyncio.run(main())
    pool.close()
    assert finished == ["quick", "slow"]


RUNNING_NUMBERS = (
    "SELECT count() FROM system.processes"
    " WHERE query LIKE '%touchline-sql%system.numbers%' AND query NOT LIKE '%system.processes%'"
)


def test_a_query_whose_caller_goes_away_is_cancelled(clickhouse: Client) -> None:
    dsn, database = dsn_of(clickhouse)
    limit = 120.0
    pool = ReadonlyPool(dsn, database, Limits(max_execution_seconds=limit), size=1)
    dropped: list[float] = []

    async def main() -> tuple[int, float, float]:
        endless = asyncio.ensure_future(
            pool.run("SELECT count() FROM system.numbers", _json, gone=lambda: bool(dropped))
        )
        await asyncio.sleep(1.0)
        running = int(clickhouse.query(RUNNING_NUMBERS).result_rows[0][0])
        dropped.append(time.monotonic())
        with pytest.raises(ClientGone):
            await asyncio.wait_for(endless, 10)
        ended = time.monotonic() - dropped[0]
        # the pool's only connection is back: the next query runs at once
        answer = await asyncio.wait_for(pool.run("SELECT 1", _json), 10)
        assert json.loads(answer)["rows"] == [[1]]
        return running, ended, time.monotonic() - dropped[0]

    running, ended, answered = asyncio.run(main())
    pool.close()
    print(f"caller gone: query ended after {ended:.2f} s, the next query answered after {answered:.2f} s")
    assert running == 1, "the endless query was not running when its caller went away"
    assert int(clickhouse.query(RUNNING_NUMBERS).result_rows[0][0]) == 0
    assert answered < 3.0 < limit


@pytest.fixture
def token() -> Iterator[str]:
    secret = "s3cret-token-for-tests-0123456789"
    access.configure(secret)
    yield secret
    access.configure(None)


def test_requests_need_the_token_when_one_is_set(token: str) -> None:
    assert access.refusal({}) == (401, access.refusal({})[1])  # type: ignore[index]
    assert access.refusal({"Authorization": "Bearer wrong"}) is not None
    assert access.refusal({"Authorization": f"Basic {token}"}) is not None
    assert access.refusal({"Authorization": f"Bearer {token}"}) is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example", "Host": "127.0.0.1:6066"}, 403),
        ({"Origin": "null", "Host": "127.0.0.1:6066"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://127.0.0.1:6066", "Host": "127.0.0.1:6066"}, None),
        ({}, None),
    ],
)
def test_cross_origin_browser_requests_are_refused(headers: dict[str, str], status: int | None) -> None:
    refused = access.refusal(headers)
    assert (refused[0] if refused else None) == status


@pytest.mark.parametrize(
    ("host", "needs_token"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True), ("10.1.2.3", True)],
)
def test_a_worker_beyond_loopback_needs_a_token(host: str, needs_token: bool) -> None:
    if needs_token:
        with pytest.raises(ConfigError, match="TOUCHLINE_WORKER_TOKEN"):
            access.token_of(Settings(worker_web_host=host))
    else:
        assert access.token_of(Settings(worker_web_host=host)) is None
    assert access.token_of(Settings(worker_web_host=host, worker_token="x" * 32)) == "x" * 32
    with pytest.raises(ConfigError, match="16 characters"):
        access.token_of(Settings(worker_web_host=host, worker_token="short"))


def test_the_compose_workers_listening_on_all_interfaces_have_a_token() -> None:
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml").read_text())
    exposed = 0
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if "TOUCHLINE_WORKER_WEB_HOST" in environment and not access.is_loopback(
            environment["TOUCHLINE_WORKER_WEB_HOST"]
        ):
            exposed += 1
            assert environment.get("TOUCHLINE_WORKER_TOKEN"), f"{name} listens beyond loopback without a token"
    assert exposed >= 1


@pytest.mark.parametrize("count", [0, 1, 1999, 2000, 2001, 4500])
def test_json_answer_encoded_in_chunks_is_one_document(count: int) -> None:
    rows = [[i, "a\tb", None, [1, 2], {"k": "v"}] for i in range(count)]
    assert json.loads(_json(["n", "s", "z", "l", "m"], rows)) == {"columns": ["n", "s", "z", "l", "m"], "rows": rows}
