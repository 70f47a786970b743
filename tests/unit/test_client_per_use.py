"""A ClickHouse client per use: the process's shared client for a DSN and database, and a client of
its own for a use that runs on a thread of its own (the ingest stage); both work at the same time
on one embedded engine."""

from __future__ import annotations

import threading

from clickhouse_connect.driver.client import Client

from pipeline.store import clickhouse as store


def dsn_of(client: Client) -> str:
    return next(key[0] for key, shared in store._clients.items() if shared is client)


def test_shared_is_cached_and_own_is_new(clickhouse: Client) -> None:
    dsn = dsn_of(clickhouse)
    assert store.connect(dsn, "touchline_test") is clickhouse
    own = store.connect(dsn, "touchline_test", own=True)
    assert own is not clickhouse
    assert store.connect(dsn, "touchline_test", own=True) is not own
    assert store.connect(dsn, "touchline_test") is clickhouse  # own clients never replace the shared one


def test_own_client_writes_while_the_shared_one_reads(clickhouse: Client) -> None:
    dsn = dsn_of(clickhouse)
    own = store.connect(dsn, "touchline_test", own=True)
    own.command("CREATE TABLE IF NOT EXISTS client_per_use (n UInt64) ENGINE = MergeTree ORDER BY n")
    own.command("TRUNCATE TABLE client_per_use")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for start in range(0, 20_000, 1_000):
                own.insert("client_per_use", [[n] for n in range(start, start + 1_000)], column_names=["n"])
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while writer.is_alive():
        clickhouse.query("SELECT count() FROM client_per_use")
        reads += 1
    writer.join()
    assert not errors, errors
    assert reads > 0
    assert clickhouse.query("SELECT count(), sum(n) FROM client_per_use").result_rows == [(20_000, sum(range(20_000)))]
