"""deploy/docker-compose.yml, read without Docker: every mounted host path exists, the Touchline
services are configured with real settings names, published ports do not clash, every service has a
health check, the two workers differ in web port and Prometheus scrapes both, and the Dockerfile
builds what the services run."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipeline.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"


def load() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose


SERVICES: dict[str, Any] = load()["services"]
TOUCHLINE = sorted(name for name, s in SERVICES.items() if s.get("image") == "touchline:local")


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def setting_names() -> set[str]:
    """Every environment name Settings reads: TOUCHLINE_<FIELD> and the validation aliases."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        names.add(f"TOUCHLINE_{field_name.upper()}")
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        names.update(str(c) for c in choices if str(c).isupper())
    return names


def test_the_stack_has_every_service() -> None:
    assert {"kafka", "clickhouse", "grafana", "prometheus", "alertmanager", "simulator"} <= set(SERVICES)
    assert {"worker-1", "worker-2", "simulator", "migrate"} <= set(TOUCHLINE)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "grafana-clickhouse-datasource" in env(SERVICES["grafana"])["GF_INSTALL_PLUGINS"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_mounted_host_paths_exist(name: str) -> None:
    named_volumes = set(load().get("volumes") or {})
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
        if source in named_volumes:
            continue
        assert source.startswith((".", "/")), f"{name}: {source} is neither a path nor a named volume"
        assert (DEPLOY / source).resolve().exists(), f"{name}: mounted path {source} does not exist"


@pytest.mark.parametrize("name", TOUCHLINE)
def test_touchline_services_use_real_settings_names(name: str) -> None:
    known = setting_names()
    names = [n for n in env(SERVICES[name]) if n.startswith(("TOUCHLINE_", "KAFKA_"))]
    assert names, f"{name} has no Touchline settings"
    unknown = sorted(set(names) - known)
    assert not unknown, f"{name}: not Touchline settings: {unknown} (known: {sorted(known)})"
    values = env(SERVICES[name])
    overrides = {n.removeprefix("TOUCHLINE_").lower(): v for n, v in values.items() if n.startswith("TOUCHLINE_")}
    overrides = {k: v.replace("${CLICKHOUSE_PASSWORD:-touchline}", "touchline") for k, v in overrides.items()}
    settings = Settings(**overrides, kafka_bootstrap_servers=values["KAFKA_BOOTSTRAP_SERVERS"])  # type: ignore[arg-type]
    assert not settings.embedded_clickhouse, "the stack's services share the ClickHouse server"
    assert settings.bootstrap_servers == "kafka:9092"


def test_published_ports_do_not_clash() -> None:
    published: dict[int, str] = {}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            host = int(str(port).split(":")[-2])
            assert host not in published, f"host port {host} used by {published[host]} and {name}"
            published[host] = name
    assert {3000, 9090, 9093, 8123} <= set(published)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_long_running_service_has_a_health_check(name: str) -> None:
    service = SERVICES[name]
    if service.get("restart") == "no":  # one-shot jobs
        return
    check = service.get("healthcheck")
    assert check and check.get("test"), f"{name} has no health check"


def test_workers_differ_in_web_port_and_prometheus_scrapes_both() -> None:
    ports = {}
    for name in ("worker-1", "worker-2"):
        service = SERVICES[name]
        port = int(env(service)["TOUCHLINE_WORKER_WEB_PORT"])
        assert service["command"][-2:] == ["--web-port", str(port)]
        assert env(service)["TOUCHLINE_WORKER_WEB_HOST"] == "0.0.0.0"  # reachable by Prometheus
        assert any(str(p).endswith(f":{port}") for p in service["ports"])
        assert str(port) in " ".join(service["healthcheck"]["test"])
        ports[name] = port
    assert ports["worker-1"] != ports["worker-2"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "touchline-worker"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{port}" for name, port in ports.items()}
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_depends_on_names_existing_services_and_volumes_are_declared() -> None:
    declared = set(load()["volumes"])
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
    assert {"kafka-data", "clickhouse-data", "grafana-data", "prometheus-data"} <= declared


def test_grafana_gets_what_its_provisioning_reads() -> None:
    grafana_env = env(SERVICES["grafana"])
    provisioning = REPO / "grafana" / "provisioning"
    wanted = set()
    for path in provisioning.rglob("*.yaml"):
        wanted |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", path.read_text()))
    assert wanted, "provisioning reads no environment variables?"
    assert wanted <= set(grafana_env), f"grafana lacks {sorted(wanted - set(grafana_env))}"


def test_dockerfile_builds_the_touchline_image() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "openjdk" not in dockerfile.lower() and "jdk" not in dockerfile.split("FROM", 1)[1].lower()
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    for name in TOUCHLINE:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
        assert SERVICES[name]["command"][0] in ("touchline", "sh")


def _url_host_port(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    assert parsed.hostname and parsed.port, url
    return parsed.hostname, parsed.port


def test_pages_go_to_a_service_of_the_stack() -> None:
    alertmanager = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    urls = [hook["url"] for receiver in alertmanager["receivers"] for hook in receiver.get("webhook_configs", [])]
    grafana_default = re.search(r":-([^}]+)}", env(SERVICES["grafana"])["PAGER_WEBHOOK_URL"])
    assert urls and grafana_default
    for url in [*urls, grafana_default.group(1)]:
        host, port = _url_host_port(url)
        assert host in SERVICES, f"{url}: no service {host} in the stack"
        service = SERVICES[host]
        assert f"--port\x00{port}" in "\x00".join(service["command"]), f"{host} does not listen on {port}"
        assert service["healthcheck"]["test"]
        mounted = [v.split(":")[0] for v in service["volumes"]]
        assert "./pager-webhook/receiver.py" in mounted


def test_the_pager_webhook_logs_each_page(tmp_path: Path) -> None:
    """Runs the receiver the stack mounts and sends it what Alertmanager sends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-u",
            str(DEPLOY / "pager-webhook" / "receiver.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert "listening" in receiver.stdout.readline()
        payload = {
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "TouchlineSlaBreaches", "channel": "voice", "severity": "critical"},
                    "annotations": {"summary": "voice first-response breaches"},
                }
            ],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/touchline/live-channels",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        line = receiver.stdout.readline()
        assert (
            "PAGE /touchline/live-channels firing TouchlineSlaBreaches channel=voice severity=critical "
            ":: voice first-response breaches" in line
        )
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_kafka_is_reachable_from_the_host() -> None:
    kafka = SERVICES["kafka"]["environment"]
    listeners = dict(item.split("://") for item in kafka["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    host_listeners = [name for name, address in advertised.items() if address.startswith("localhost:")]
    assert host_listeners, "no listener advertised to the host"
    (name,) = host_listeners
    port = advertised[name].split(":")[1]
    assert listeners[name] == f":{port}" and name in protocols
    assert f"{port}:{port}" in SERVICES["kafka"]["ports"]
    assert advertised["PLAINTEXT"] == "kafka:9092"  # the services on the compose network
    assert f"localhost:{port}" in (REPO / "README.md").read_text()  # documented


@pytest.mark.parametrize("password", ["touchline", "p@ss/w#rd?100%", "a:b@c"])
def test_clickhouse_password_with_url_characters_reaches_clickhouse_intact(password: str) -> None:
    from clickhouse_connect.driver import _parse_connection_params

    values = env(SERVICES["worker-1"])
    assert "${CLICKHOUSE_PASSWORD" not in values["TOUCHLINE_CLICKHOUSE_DSN"], "password interpolated into the URL"
    given = {
        k.removeprefix("TOUCHLINE_").lower(): v.replace("${CLICKHOUSE_PASSWORD:-touchline}", password)
        for k, v in values.items()
        if k.startswith("TOUCHLINE_CLICKHOUSE_")
    }
    url = Settings(**given).clickhouse_url  # type: ignore[arg-type]
    host, user, secret, port, *_ = _parse_connection_params(None, None, "", None, None, None, False, url, {})
    assert (host, user, secret, port) == ("clickhouse", "touchline", password, 8123)


def test_each_worker_advertises_its_own_address() -> None:
    for name in ("worker-1", "worker-2"):
        values = env(SERVICES[name])
        overrides = {k.removeprefix("TOUCHLINE_").lower(): v for k, v in values.items() if k.startswith("TOUCHLINE_W")}
        settings = Settings(**overrides)  # type: ignore[arg-type]
        assert settings.worker_web_host == "0.0.0.0"
        assert settings.worker_advertised_url == f"http://{name}:{values['TOUCHLINE_WORKER_WEB_PORT']}"
