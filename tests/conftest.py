"""Shared fixtures. In-process ClickHouse (chDB allows one data path per process) is opened once
per test session at a temporary path; integration tests talk to the worker over HTTP or run the
CLI in subprocesses, which have their own engines."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import strategies
from hypothesis.errors import HypothesisSideeffectWarning

from pipeline.store.clickhouse import connect
from pipeline.store.migrations import migrate
from tools import broker

# The test brokers (one per xdist process, and the ones some tests start and stop) live for minutes:
# the JIT's optimizing compiler (C2) was 45 % of a test broker's CPU during `make test` (its
# "C2 CompilerThread" 25.0 of 55.3 s, per-thread /proc figures). C1 alone halves a broker's CPU over
# a test (journeys e2e "a day": 20.95 and 20.71 s -> 10.25 and 9.32 s; session 35).
os.environ.setdefault(broker.EXTRA_JVM_OPTS_ENV, "-XX:TieredStopAtLevel=1")

# `st.randoms()` imports its module on first use, and pytest rewrites (parses) it then. CPython
# 3.11.7 keeps the AST constructor's recursion depth per interpreter, not per thread (cpython
# gh-106905): a parse while another thread parses fails with "SystemError: AST constructor recursion
# depth mismatch". It failed test_journey_records.py so in a clean-clone `make test` (session 41):
# the import is done here, at collection, before any test starts a thread (hypothesis warns that
# this is slow at conftest import: it is meant).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", HypothesisSideeffectWarning)
    strategies.randoms().validate()


@pytest.fixture(scope="session")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path: Path = tmp_path_factory.mktemp("chdb")
    client = connect(f"chdb://{path}", "touchline_test")
    migrate(client)
    yield client


# `make test` runs the unit and integration files in one session on three processes (pytest-xdist,
# --dist loadfile: a file at a time; --no-loadscope-reorder: in this order, not the files with the
# most tests first; why three on two cores, with the figures: README, "Development"). Longest first,
# so no long file starts last and runs alone: the longest integration files (test time in a
# three-process run: 358, 205, 147, 141, 117, 106 and 89 s of 2,164 s), the other integration
# files, the longest unit files, the other unit files.
LONGEST_FIRST = (
    "test_journeys_e2e.py",
    "test_journey_split_e2e.py",
    "test_analytics_recovery.py",
    "test_ticket_backfill.py",
    "test_live_run.py",
    "test_anonbank_replay.py",
    "test_forget_e2e.py",
)
UNIT_LONGEST_FIRST = (
    "test_journey_records.py",
    "test_journey_split.py",
    "test_journey_builder_state.py",
    "test_truth_oracles.py",
    "test_anonbank.py",
    "test_journey_resolver_state.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if item.path.parent.name == "integration":
            return (0, LONGEST_FIRST.index(name)) if name in LONGEST_FIRST else (1, 0)
        return (2, UNIT_LONGEST_FIRST.index(name)) if name in UNIT_LONGEST_FIRST else (3, 0)

    items.sort(key=rank)  # stable: the order within a file and among the others is kept
