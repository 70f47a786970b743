"""What `/health` reports beyond partitions: the dependencies (ClickHouse, the Kafka producer, each
stage's consumer) that are failing now, and the rule that tells a transient failure (retried with
backoff) from a terminal one (the worker stops with a clear message).

Repeated failures of one dependency are logged once per `LOG_INTERVAL_SECONDS` with a count, so an
outage of the broker writes a few lines, not one per attempt."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from pipeline.worker import metrics
from pipeline.worker.backoff import exponential

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_INTERVAL_SECONDS = 10.0
# ClickHouse error codes that say "try again": timeouts, network, overload, a server restarting,
# a query cancelled by someone else. Anything else from ClickHouse (unknown table or column, type
# mismatch, syntax) is a defect or a schema drift that retrying cannot fix.
TRANSIENT_CLICKHOUSE_CODES = frozenset(
    {159, 160, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 394, 425, 439, 999, 1000}
)
_CODE = re.compile(r"Code:\s*(\d+)")


class TerminalError(Exception):
    """A failure that retrying cannot fix; the worker stops and says why."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, KafkaError):
        return bool(getattr(error, "retriable", False)) or type(error).__name__ in (
            "KafkaConnectionError",
            "KafkaTimeoutError",
            "NodeNotReadyError",
            "RequestTimedOutError",
            "NotLeaderForPartitionError",
            "LeaderNotAvailableError",
        )
    if isinstance(error, OSError | TimeoutError | ConnectionError):
        return True
    name = type(error).__name__
    if name in ("OperationalError", "StreamFailureError"):
        return True  # clickhouse-connect: the server cannot be reached or the stream broke
    match = _CODE.search(str(error))
    if match is not None:
        return int(match.group(1)) in TRANSIENT_CLICKHOUSE_CODES
    return False


@dataclass
class _Status:
    failing_since: float | None = None
    last_error: str = ""
    errors: int = 0
    unlogged: int = 0
    logged_at: float = 0.0


class Health:
    """Per dependency: failing or not, since when, the last error."""

    def __init__(self) -> None:
        self._status: dict[str, _Status] = {}

    def failed(self, dependency: str, error: BaseException) -> None:
        status = self._status.setdefault(dependency, _Status())
        now = time.monotonic()
        if status.failing_since is None:
            status.failing_since = now
        status.errors += 1
        status.last_error = f"{type(error).__name__}: {error}"[:500]
        metrics.DEPENDENCY_ERRORS.labels(dependency).inc()
        metrics.DEPENDENCY_UP.labels(dependency).set(0)
        if now - status.logged_at >= LOG_INTERVAL_SECONDS:
            more = f" ({status.unlogged} more since the last report)" if status.unlogged else ""
            log.warning("%s is failing, retrying: %s%s", dependency, status.last_error, more)
            status.logged_at, status.unlogged = now, 0
        else:
            status.unlogged += 1

    def ok(self, dependency: str) -> None:
        status = self._status.get(dependency)
        metrics.DEPENDENCY_UP.labels(dependency).set(1)
        if status is not None and status.failing_since is not None:
            log.info(
                "%s is back after %.1f s (%d failed attempts)",
                dependency,
                time.monotonic() - status.failing_since,
                status.errors,
            )
            status.failing_since, status.errors, status.unlogged, status.logged_at = None, 0, 0, 0.0

    def forget(self, dependency: str) -> None:
        """`dependency` is no longer watched (its failures, if any, are no longer reported)."""
        self._status.pop(dependency, None)
        metrics.DEPENDENCY_UP.remove(dependency)

    def report(self) -> dict[str, dict[str, object]]:
        """Failing dependencies: {name: {failing_for_seconds, errors, last_error}}."""
        now = time.monotonic()
        return {
            name: {
                "failing_for_seconds": round(now - s.failing_since, 1),
                "errors": s.errors,
                "last_error": s.last_error,
            }
            for name, s in sorted(self._status.items())
            if s.failing_since is not None
        }


async def retrying(
    health: Health, dependency: str, fn: Callable[..., Awaitable[T]], *args: Any, max_backoff: float = 10.0
) -> T:
    """`await fn(*args)`, retrying transient failures with exponential backoff (0.2 s doubling up to
    `max_backoff`) for as long as they last, each reported to `health`; a terminal failure raises
    `TerminalError` naming the dependency."""

    pauses = exponential(0.2, max_backoff)
    while True:
        try:
            result = await fn(*args)
            break
        except Exception as error:  # CancelledError is not an Exception: a stop goes through
            if not is_transient(error):
                raise TerminalError(
                    f"{dependency} failed and retrying cannot help: {type(error).__name__}: {error}"
                ) from error
            health.failed(dependency, error)
        await asyncio.sleep(next(pauses))
    health.ok(dependency)
    return result
