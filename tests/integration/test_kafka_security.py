"""Kafka security end to end: a real broker with a SASL_SSL listener (TLS with client certificates,
SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512), certificates made here with openssl, and every client
Touchline uses configured only through its settings (`pipeline.kafka_security`): kafka-python admin
and producer, aiokafka consumers, the Faust app, the simulator and the worker."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings, load_settings
from pipeline.kafka_security import client_options
from pipeline.simulator.faults import Message
from pipeline.simulator.produce import KafkaSink
from pipeline.topics import KafkaAuthenticationError, ensure_topics, probe_broker
from tests.integration.conftest import free_port, open_workspace, wait_until
from tools import broker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates"),
]

USER, PASSWORD = "touchline-svc", "pa$$ w0rd@#?%"


@dataclass
class SecureBroker:
    plain: str  # PLAINTEXT bootstrap (broker-internal and setup only)
    secure: str  # SASL_SSL bootstrap
    ca: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=touchline-test-ca", cwd=directory,
    )  # fmt: skip
    for who in ("server", "client"):
        (directory / f"{who}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
            "-subj", f"/CN=touchline-{who}", cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext", cwd=directory,
        )  # fmt: skip
    # Kafka's PEM keystore: the private key (PKCS#8) followed by the certificate chain
    keystore = (directory / "server.key").read_text() + (directory / "server.pem").read_text()
    (directory / "server-keystore.pem").write_text(keystore + (directory / "ca.pem").read_text())


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    base = tmp_path_factory.mktemp("secure-kafka")
    certs = base / "certs"
    make_certificates(certs)
    listener = broker.SecureListener(
        port=free_port(),
        keystore=certs / "server-keystore.pem",
        truststore=certs / "ca.pem",
        users=((USER, PASSWORD),),
    )
    data = base / "kafka"
    plain = broker.start(data, port=free_port(), timeout=120, secure=listener)
    try:
        yield SecureBroker(
            plain, f"127.0.0.1:{listener.port}", certs / "ca.pem", certs / "client.pem", certs / "client.key"
        )
    finally:
        broker.stop(data)


def secure_env(kafka: SecureBroker, mechanism: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.secure,
        "TOUCHLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TOUCHLINE_KAFKA_SASL_MECHANISM": mechanism,
        "TOUCHLINE_KAFKA_SASL_USERNAME": USER,
        "TOUCHLINE_KAFKA_SASL_PASSWORD": password,
        "TOUCHLINE_KAFKA_SSL_CAFILE": str(kafka.ca),
        "TOUCHLINE_KAFKA_SSL_CERTFILE": str(kafka.client_cert),
        "TOUCHLINE_KAFKA_SSL_KEYFILE": str(kafka.client_key),
    }


def settings_for(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


async def consume_all(settings: Settings, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"sec-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        **client_options(settings),
    )
    await consumer.start()
    seen: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(seen) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    seen += [(record.key or b"", record.value or b"") for record in records]
    finally:
        await consumer.stop()
    return seen


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_admin_producer_and_consumer_over_sasl_ssl(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    settings = settings_for(monkeypatch, secure_env(secure_broker, mechanism))
    topic = f"secure-{mechanism.lower()}-{uuid.uuid4().hex[:6]}"
    security = client_options(settings)
    assert security["security_protocol"] == "SASL_SSL" and security["sasl_mechanism"] == mechanism
    assert probe_broker(settings.bootstrap_servers, options=security)
    assert ensure_topics(settings.bootstrap_servers, {topic: 2}, options=security) == [topic]
    sink = KafkaSink(settings.bootstrap_servers, client_id="security-test", security=security)
    sent = [(f"contact-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(50)]
    try:
        for key, value in sent:
            sink.send(Message(deliver_ms=0, topic=topic, key=key, value=value, event_ms=0))
        sink.flush()
    finally:
        sink.close()
    assert sorted(asyncio.run(consume_all(settings, topic, len(sent)))) == sorted(sent)


def test_the_listener_refuses_wrong_credentials(secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    # the positive tests mean something only if the listener really checks what clients present
    wrong = settings_for(monkeypatch, secure_env(secure_broker, "SCRAM-SHA-256", password="not-it"))
    with pytest.raises(KafkaAuthenticationError, match=f"SASL SCRAM-SHA-256 login of user '{USER}'"):
        probe_broker(wrong.bootstrap_servers, timeout=5, options=client_options(wrong))
    assert not probe_broker(secure_broker.secure, timeout=5)  # plaintext client on the SASL_SSL port
    monkeypatch.delenv("TOUCHLINE_KAFKA_SSL_CERTFILE")
    monkeypatch.delenv("TOUCHLINE_KAFKA_SSL_KEYFILE")
    monkeypatch.setenv("TOUCHLINE_KAFKA_SASL_PASSWORD", PASSWORD)
    no_client_cert = load_settings()
    assert not probe_broker(no_client_cert.bootstrap_servers, timeout=5, options=client_options(no_client_cert))


WRONG_PASSWORD = "Wrong-Secret-4711"


def test_wrong_credentials_are_named_at_every_start(secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Worker, simulator, replay and `touchline topics` given a wrong SASL password: the first line says
    authentication failed (mechanism and user, never the password), no traceback, a non-zero exit."""
    env = secure_env(secure_broker, "SCRAM-SHA-512", password=WRONG_PASSWORD)
    empty = tmp_path / "events.jsonl"
    empty.write_text("")
    commands = (
        ["worker", "--web-port", str(free_port())],
        ["simulate", "--contacts", "5", "--speed", "0", "--quiet"],
        ["replay", str(empty)],
        ["topics"],
    )
    with open_workspace(secure_broker.plain, tmp_path, extra_env=env) as space:
        # side by side, as they mostly wait on the broker's refusal: 31.8 s against 48.7 s one after another
        with ThreadPoolExecutor(len(commands)) as pool:
            results = list(pool.map(lambda command: space.cli(*command, check=False, timeout=120), commands))
        for result in results:
            output = result.stderr + result.stdout
            first = output.strip().splitlines()[0]
            assert result.returncode != 0, output
            assert "Kafka authentication failed" in first, output
            assert f"SASL SCRAM-SHA-512 login of user '{USER}'" in first, output
            assert WRONG_PASSWORD not in output and PASSWORD not in output
            assert "Traceback" not in output, output


def test_simulator_and_worker_round_trip_over_sasl_ssl(secure_broker: SecureBroker, tmp_path: Path) -> None:
    """The simulator produces and the worker (aiokafka consumers, Faust producer and agents, admin)
    consumes only over SASL_SSL with SCRAM-SHA-512: every simulated event reaches ClickHouse and the
    journeys (Faust's journey agent) are built."""
    env = secure_env(secure_broker, "SCRAM-SHA-512")
    with open_workspace(secure_broker.plain, tmp_path, extra_env=env) as space:
        result = space.cli(
            "simulate", "--contacts", "40", "--speed", "0", "--seed", "5", "--start", "2026-03-02T09:00Z",
            "--truth", tmp_path / "truth.jsonl", "--quiet",
        )  # fmt: skip
        assert f"Kafka {secure_broker.secure}" in result.stdout
        summary = next(
            row
            for row in map(json.loads, (tmp_path / "truth.jsonl").read_text().splitlines())
            if row["kind"] == "summary"
        )
        expected = summary["distinct_valid_events"]
        assert expected > 100
        worker = space.start_worker()
        worker.wait_for_events(expected)
        wait_until(
            lambda: worker.sql("SELECT count() FROM journeys FINAL WHERE is_deleted = 0")[0][0] > 0,
            120,
            "journeys from the Faust journey agent",
        )
