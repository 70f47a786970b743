"""Kafka topic helpers: wait for a broker to answer and create topics idempotently.

Plain kafka-python (``KafkaAdminClient``); no CLI concerns here. Works against
any Kafka cluster: the local Touchline broker (see :mod:`tools.broker`, a source checkout) or
an external one named by ``KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaAdminClient

__all__ = ["KafkaAuthenticationError", "ensure_topics", "probe_broker", "wait_for_broker"]

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code TOPIC_ALREADY_EXISTS


class KafkaAuthenticationError(Exception):
    """The broker refused the client's SASL credentials: retrying cannot help."""


def _refused_login(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, kafka_errors.SaslAuthenticationFailedError):
            return True
        error = error.__cause__ or error.__context__
    return False


def authentication_failure(
    error: BaseException | None, bootstrap: str, options: Mapping[str, Any] | None
) -> KafkaAuthenticationError | None:
    """A readable KafkaAuthenticationError when `error` (or its cause) is a refused SASL login, naming
    the mechanism and the user (never the password); None for any other error."""
    if not _refused_login(error):
        return None
    options = options or {}
    mechanism = options.get("sasl_mechanism", "PLAIN")
    user = options.get("sasl_plain_username")
    return KafkaAuthenticationError(
        f"Kafka authentication failed: {bootstrap} refused the SASL {mechanism} login of user {user!r} "
        "(check kafka_sasl_username, kafka_sasl_password and kafka_sasl_mechanism)"
    )


class _LoginWatch(logging.Handler):
    """kafka-python retries a refused SASL login until its bootstrap times out, then raises only
    `KafkaTimeoutError('Unable to bootstrap ...')` (measured against the SASL_SSL test listener: 5 s
    for the admin client, 30 s for a producer); the refusal itself (SaslAuthenticationFailedError)
    only reaches its log. This keeps it, and holds the other records back until the outcome is known."""

    def __init__(self, sasl: bool = False) -> None:
        super().__init__(logging.DEBUG)
        self.sasl = sasl
        self.refusal: BaseException | None = None
        self.held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        causes = [*args, record.exc_info[1] if record.exc_info else None]
        refusal = next((c for c in causes if isinstance(c, BaseException) and _refused_login(c)), None)
        message = record.getMessage()
        if refusal is None and "SaslAuthenticationFailed" in message:
            refusal = kafka_errors.SaslAuthenticationFailedError(message)  # seen only as text
        if refusal is None and self.sasl and _dropped_after_versions(message):
            # at times the broker closes a refused SASL login without an answer (seen in one of two
            # clean-clone runs): the connection had passed the version handshake, then dropped
            refusal = kafka_errors.SaslAuthenticationFailedError(f"connection closed during the SASL login: {message}")
        if refusal is not None:
            self.refusal = refusal
        else:
            self.held.append(record)


def _dropped_after_versions(message: str) -> bool:
    """kafka-python's "<KafkaConnection ... broker_version=(4, 3) ...>: Connection lost": a connection
    that had identified the broker (so reached it, over TLS when used) and was then closed."""
    return "Connection lost" in message and "broker_version=(" in message


@contextmanager
def _watch_login(sasl: bool = False) -> Iterator[_LoginWatch]:
    logger = logging.getLogger("kafka")
    watch = _LoginWatch(sasl)
    propagate, level, effective = logger.propagate, logger.level, logger.getEffectiveLevel()
    logger.addHandler(watch)
    logger.propagate = False
    logger.setLevel(min(effective, logging.WARNING))  # the refusal is logged as a warning
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.propagate = propagate
        logger.setLevel(level)
        if watch.refusal is None:  # nothing to explain: the records go where they would have gone
            root = logging.getLogger()
            for record in watch.held:
                for handler in root.handlers:
                    if record.levelno >= max(effective, handler.level):
                        handler.handle(record)


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port...]`` (an optional ``kafka://`` prefix is ignored)."""
    addresses: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if "://" in item:
            item = item.split("://", 1)[1]
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "9092"
        host = host.strip("[]") or "localhost"
        try:
            addresses.append((host, int(port)))
        except ValueError as exc:
            raise ValueError(f"Invalid Kafka bootstrap address {item!r} in {bootstrap!r}") from exc
    if not addresses:
        raise ValueError(f"Empty Kafka bootstrap string: {bootstrap!r}")
    return addresses


def _tcp_reachable(bootstrap: str, timeout: float) -> bool:
    for host, port in _split_bootstrap(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def admin_client(bootstrap: str, timeout: float, options: Mapping[str, Any] | None = None) -> Any:
    """A KafkaAdminClient; a refused login raised as a readable `authentication_failure`."""
    timeout_ms = max(1000, int(timeout * 1000))
    with _watch_login(sasl=bool((options or {}).get("sasl_mechanism"))) as watch:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="touchline-admin",
                request_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
                **(options or {}),
            )
        except kafka_errors.KafkaError as error:
            failure = authentication_failure(watch.refusal or error, bootstrap, options)
            if failure is not None:
                raise failure from None
            raise


def probe_broker(bootstrap: str, timeout: float = 5.0, *, options: Mapping[str, Any] | None = None) -> bool:
    """Return True if a broker at *bootstrap* answers a metadata request with live brokers.

    A cheap TCP connect is tried first so that a closed port is reported quickly
    without kafka-python logging connection errors. *options*: the client's security settings
    (`pipeline.kafka_security.client_options`). Raises KafkaAuthenticationError when the broker
    answers but refuses the SASL credentials.
    """
    if not _tcp_reachable(bootstrap, timeout=min(timeout, 2.0)):
        return False
    try:
        admin = admin_client(bootstrap, timeout, options)
    except (kafka_errors.KafkaError, OSError):
        return False
    try:
        cluster = admin.describe_cluster()
        brokers = cluster.get("brokers") or []
        return len(brokers) > 0
    except (kafka_errors.KafkaError, OSError) as error:
        failure = authentication_failure(error, bootstrap, options)
        if failure is not None:
            raise failure from None
        return False
    finally:
        admin.close()


def wait_for_broker(bootstrap: str, timeout: float, *, options: Mapping[str, Any] | None = None) -> None:
    """Block until the Kafka cluster at *bootstrap* answers, or raise ``TimeoutError`` (or at once
    ``KafkaAuthenticationError``)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if probe_broker(bootstrap, timeout=max(1.0, min(5.0, remaining)), options=options):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Kafka at {bootstrap} did not answer within {timeout:.0f}s. "
                "Start the local broker with `python -m tools.broker start` (a source checkout), or check "
                "KAFKA_BOOTSTRAP_SERVERS."
            )
        time.sleep(0.25)


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not names:
        return counts
    for topic in admin.describe_topics(names):
        if topic.get("error_code", 0) == 0:
            counts[str(topic["name"])] = len(topic.get("partitions") or [])
    return counts


def ensure_topics(
    bootstrap: str,
    specs: Mapping[str, int],
    *,
    replication: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics in *specs* (name -> partition count) that do not exist yet.

    Existing topics are left alone, whatever their partition count (a mismatch
    is logged as a warning). *configs* optionally maps a topic name to topic
    configs (e.g. ``{"retention.ms": "86400000"}``) applied when it is created.
    Waits until every created topic has a leader for each partition.

    Returns the names of the topics this call created, in *specs* order.
    """
    configs = configs or {}
    unknown = sorted(set(configs) - set(specs))
    if unknown:
        raise ValueError(f"Topic configs given for topics not in specs: {', '.join(unknown)}")
    for name, partitions in specs.items():
        if not name:
            raise ValueError("Topic names must not be empty")
        if partitions < 1:
            raise ValueError(f"Topic {name!r}: partition count must be >= 1, got {partitions}")
    if replication < 1:
        raise ValueError(f"Replication factor must be >= 1, got {replication}")
    if not specs:
        return []

    admin = admin_client(bootstrap, timeout, options)
    try:
        existing = {str(name) for name in admin.list_topics()}
        present = [name for name in specs if name in existing]
        for name, count in _partition_counts(admin, present).items():
            if count != specs[name]:
                log.warning(
                    "Topic %s already exists with %d partitions (wanted %d); leaving it alone",
                    name,
                    count,
                    specs[name],
                )
        missing = [name for name in specs if name not in existing]
        if not missing:
            return []
        request = {
            name: {
                "num_partitions": specs[name],
                "replication_factor": replication,
                "configs": dict(configs.get(name, {})),
            }
            for name in missing
        }
        response = admin.create_topics(request, timeout_ms=int(timeout * 1000), raise_errors=False)
        created: set[str] = set()
        failures: list[str] = []
        for result in response["topics"]:
            name = str(result["name"])
            code = int(result["error_code"])
            if code == 0:
                created.add(name)
            elif code == _TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by someone else: fine
            else:
                error = kafka_errors.for_code(code).__name__
                detail = result.get("error_message") or ""
                failures.append(f"{name}: {error} {detail}".rstrip())
        if failures:
            raise kafka_errors.KafkaError("Could not create topics: " + "; ".join(failures))
        ordered = [name for name in specs if name in created]
        if ordered:
            admin.wait_for_topics(ordered, timeout_ms=int(timeout * 1000))
        return ordered
    finally:
        admin.close()
