"""The local Kafka broker (tools.broker) against real clients.

Self-contained: starts its own single-node KRaft broker on a free port in a temporary
directory (jars resolved by Maven, run on the local JDK), exercises it with kafka-python
and aiokafka, and stops it again.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource

from pipeline.topics import ensure_topics, probe_broker, wait_for_broker
from tools import broker
from tools.broker import BrokerError, BrokerPaths

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for its parent to reap it is gone too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class LocalBroker:
    data_dir: Path
    port: int
    bootstrap: str


@pytest.fixture(scope="module")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    data_dir = tmp_path_factory.mktemp("broker") / "kafka"
    port = free_port()
    bootstrap = broker.start(data_dir, port=port, timeout=120)
    try:
        yield LocalBroker(data_dir, port, bootstrap)
    finally:
        broker.stop(data_dir)


def admin_client(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-broker")


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = admin_client(bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    finally:
        admin.close()


def test_start_returns_bootstrap_and_status_reports_it(local_broker: LocalBroker) -> None:
    assert local_broker.bootstrap == f"127.0.0.1:{local_broker.port}"
    info = broker.status(local_broker.data_dir)
    assert info.running
    assert info.pid is not None and not process_gone(info.pid)
    assert info.bootstrap == local_broker.bootstrap
    assert info.data_dir == BrokerPaths(local_broker.data_dir).base

    paths = BrokerPaths(local_broker.data_dir)
    assert paths.pid_file.read_text().strip() == str(info.pid)
    assert (paths.data_dir / "meta.properties").is_file()  # formatted on first start
    assert paths.classpath_file.is_file()
    assert f"PLAINTEXT://127.0.0.1:{local_broker.port}" in paths.config_file.read_text()
    assert probe_broker(local_broker.bootstrap)


def test_extra_jvm_options_reach_the_broker(local_broker: LocalBroker) -> None:
    """TOUCHLINE_BROKER_JVM_OPTS (tests/conftest.py sets it for the test brokers) is on the JVM's
    command line, after Touchline's own options."""
    extra = shlex.split(os.environ.get(broker.EXTRA_JVM_OPTS_ENV, ""))
    assert extra, f"{broker.EXTRA_JVM_OPTS_ENV} is empty: tests/conftest.py gives the test brokers C1 only"
    pid = broker.status(local_broker.data_dir).pid
    assert pid is not None
    words = [w.decode() for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    assert all(option in words for option in extra), words
    assert words.index(extra[0]) > words.index(broker.JVM_OPTS[-1])


def test_start_again_returns_running_broker(local_broker: LocalBroker) -> None:
    pid = broker.status(local_broker.data_dir).pid
    began = time.monotonic()
    assert broker.start(local_broker.data_dir, port=local_broker.port) == local_broker.bootstrap
    assert time.monotonic() - began < 10
    assert broker.status(local_broker.data_dir).pid == pid


def test_wait_for_broker(local_broker: LocalBroker) -> None:
    wait_for_broker(local_broker.bootstrap, timeout=10)
    with pytest.raises(TimeoutError, match="did not answer"):
        wait_for_broker(f"127.0.0.1:{free_port()}", timeout=1)


def test_ensure_topics_creates_missing_topics_with_partition_counts(local_broker: LocalBroker) -> None:
    wide, narrow = unique("wide"), unique("narrow")
    created = ensure_topics(
        local_broker.bootstrap,
        {wide: 3, narrow: 1},
        configs={wide: {"retention.ms": "3600000"}},
    )
    assert created == [wide, narrow]
    assert partition_counts(local_broker.bootstrap, [wide, narrow]) == {wide: 3, narrow: 1}

    admin = admin_client(local_broker.bootstrap)
    try:
        described = admin.describe_configs([ConfigResource("TOPIC", wide)])
    finally:
        admin.close()
    assert described["topic"][wide]["retention.ms"]["value"] == "3600000"

    # Idempotent: existing topics are left alone, even with a different partition count.
    assert ensure_topics(local_broker.bootstrap, {wide: 5, narrow: 1}) == []
    assert partition_counts(local_broker.bootstrap, [wide]) == {wide: 3}

    other = unique("other")
    assert ensure_topics(local_broker.bootstrap, {narrow: 1, other: 2}) == [other]
    assert partition_counts(local_broker.bootstrap, [other]) == {other: 2}


def test_auto_topic_creation_is_disabled(local_broker: LocalBroker) -> None:
    admin = admin_client(local_broker.bootstrap)
    try:
        missing = unique("missing")
        admin.describe_topics([missing])  # a metadata request for an unknown topic
        assert missing not in admin.list_topics()
    finally:
        admin.close()


def test_kafka_python_produce_consume_commit(local_broker: LocalBroker) -> None:
    topic, group = unique("kp"), unique("kp-group")
    ensure_topics(local_broker.bootstrap, {topic: 2})

    producer = KafkaProducer(bootstrap_servers=local_broker.bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    try:
        for i in range(5):
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        # message.max.bytes is ~2 MB: a 1.5 MB record is accepted
        producer.send(topic, key=b"big", value=b"x" * 1_500_000).get(timeout=30)
        producer.flush(30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=local_broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=8 * 1024 * 1024,
    )
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(values) < 6 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                values.extend(record.value for record in records)
        assert sorted(v for v in values if len(v) < 10) == [f"v{i}".encode() for i in range(5)]
        assert any(len(v) == 1_500_000 for v in values)
        consumer.commit()
        committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        consumer.close()
    assert sum(offset or 0 for offset in committed.values()) == 6


def test_aiokafka_produce_consume_with_group_commit(local_broker: LocalBroker) -> None:
    topic, group = unique("aio"), unique("aio-group")
    ensure_topics(local_broker.bootstrap, {topic: 2})

    async def scenario() -> tuple[list[bytes], dict[int, int | None], int]:
        producer = AIOKafkaProducer(bootstrap_servers=local_broker.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=local_broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            values: list[bytes] = []

            async def take() -> None:
                async for message in consumer:
                    assert message.value is not None
                    values.append(message.value)
                    if len(values) == 10:
                        return

            await asyncio.wait_for(take(), timeout=60)
            await consumer.commit()
            committed = {tp.partition: await consumer.committed(tp) for tp in consumer.assignment()}
        finally:
            await consumer.stop()

        # A new member of the same group resumes from the committed offsets: nothing left.
        again = AIOKafkaConsumer(
            topic, bootstrap_servers=local_broker.bootstrap, group_id=group, auto_offset_reset="earliest"
        )
        await again.start()
        try:
            batches = await again.getmany(timeout_ms=3000)
            leftover = sum(len(records) for records in batches.values())
            for partition in (0, 1):
                assert await again.committed(TopicPartition(topic, partition)) == committed[partition]
        finally:
            await again.stop()
        return values, committed, leftover

    values, committed, leftover = asyncio.run(scenario())
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(10))
    assert sum(offset or 0 for offset in committed.values()) == 10
    assert leftover == 0


def test_start_on_a_taken_port_fails_clearly(local_broker: LocalBroker, tmp_path: Path) -> None:
    other = tmp_path / "other"
    with pytest.raises(BrokerError) as taken:
        broker.start(other, port=local_broker.port)
    message = str(taken.value)
    assert f"port {local_broker.port}" in message
    assert "already in use" in message
    assert "python -m tools.broker stop" in message
    assert "--port" in message

    with pytest.raises(BrokerError, match="controller port"):
        broker.start(other, port=free_port(), controller_port=local_broker.port)

    # The same data dir on another port: it is already running elsewhere.
    with pytest.raises(BrokerError, match="already running on port"):
        broker.start(local_broker.data_dir, port=free_port())
    assert not broker.status(other).running


def test_broker_dying_during_startup_reports_its_log(local_broker: LocalBroker, tmp_path: Path) -> None:
    paths = BrokerPaths(tmp_path / "broken")
    paths.data_dir.mkdir(parents=True)
    # Reuse the resolved classpath, and plant storage formatted for another node id.
    paths.classpath_file.write_bytes(BrokerPaths(local_broker.data_dir).classpath_file.read_bytes())
    (paths.data_dir / "meta.properties").write_text(
        "version=1\nnode.id=7\ncluster.id=3UASFRzES0yIUAM5oy_U2w\ndirectory.id=9lGvOAjsQ_k8EpGj9JxphQ\n"
    )
    with pytest.raises(BrokerError) as failed:
        broker.start(paths.base, port=free_port(), timeout=60)
    message = str(failed.value)
    assert "exited during startup" in message
    assert "Stored node id 7" in message  # the tail of broker.log
    assert not paths.pid_file.exists()
    assert not broker.status(paths.base).running


def test_stop_ends_the_process_and_restart_keeps_data(local_broker: LocalBroker) -> None:
    topic = unique("kept")
    ensure_topics(local_broker.bootstrap, {topic: 2})
    pid = broker.status(local_broker.data_dir).pid
    assert pid is not None

    assert broker.stop(local_broker.data_dir) is True
    assert process_gone(pid)
    info = broker.status(local_broker.data_dir)
    assert not info.running and info.pid is None
    assert not BrokerPaths(local_broker.data_dir).pid_file.exists()
    assert not probe_broker(local_broker.bootstrap, timeout=1)
    assert broker.stop(local_broker.data_dir) is False

    # Restart on the same data dir: no re-format, the topic is still there.
    assert broker.start(local_broker.data_dir, port=local_broker.port, timeout=120) == local_broker.bootstrap
    assert partition_counts(local_broker.bootstrap, [topic]) == {topic: 2}
    new_pid = broker.status(local_broker.data_dir).pid
    assert new_pid is not None and new_pid != pid
    assert broker.stop(local_broker.data_dir) is True
    assert process_gone(new_pid)
