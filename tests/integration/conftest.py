"""Integration fixtures: one real Kafka broker per test session (started by the project's own
launcher, or the cluster in KAFKA_BOOTSTRAP_SERVERS), fresh topics per test, and workers and CLI
commands run as real subprocesses with their own data directories."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kafka import KafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.events.topics import topic_specs
from pipeline.topics import ensure_topics
from tools import broker

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
PSEUDONYM_KEY = "integration-tests-pseudonym-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    data = tmp_path_factory.mktemp("kafka")
    bootstrap = broker.start(data, port=free_port(), controller_port=free_port())
    try:
        yield bootstrap
    finally:
        broker.stop(data)


def recreate_topics(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="touchline-tests")
    try:
        ours = [t for t in admin.list_topics() if t.startswith("touchline.")]
        if ours:
            admin.delete_topics(ours)
            deadline = time.monotonic() + 60
            while any(t in ours for t in admin.list_topics()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topics not deleted: {ours}")
                time.sleep(0.2)
    finally:
        admin.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            ensure_topics(bootstrap, topic_specs(PARTITIONS))
            return
        except Exception:  # deletion can still be settling on the controller
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def asked_until_not_busy(ask: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """`ask()`'s answer; a 503 ("retry shortly": a rebalance or restore under way) asks again, as the
    worker's API says, for `timeout` s; any other error fails at once."""
    answers: list[T] = []

    def answered() -> bool:
        try:
            answers.append(ask())
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            print(f"{what}: 503 {error.read().decode(errors='replace')}, asked again")
            return False
        return True

    wait_until(answered, timeout, f"{what} answered without a 503", interval)
    return answers[-1]


@dataclass
class Worker:
    workspace: Workspace
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            body: bytes = response.read()
            return body

    def sql(self, query: str) -> list[list[Any]]:
        request = urllib.request.Request(f"{self.url}/sql?format=json", data=query.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            rows: list[list[Any]] = json.loads(response.read())["rows"]
            return rows

    def metric(self, name: str) -> float:
        return self.metrics(name)[name]

    def metrics(self, *names: str) -> dict[str, float]:
        """Each of `names` summed over its labels, all from one scrape of /metrics."""
        totals = dict.fromkeys(names, 0.0)
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
        return totals

    def wait_for_events(self, expected: int, timeout: float = 120) -> None:
        """Until exactly `expected` distinct events are stored."""
        count = "SELECT count() FROM interaction_events FINAL"
        wait_until(lambda: self.sql(count)[0][0] == expected, timeout, f"{expected} events in ClickHouse")

    def stage_partitions(self) -> dict[str, int]:
        """Channel-topic partitions each of the worker's stages holds now."""
        stages: dict[str, int] = json.loads(self.get("/health"))["stages"]
        return stages

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
        try:
            return bool(json.loads(self.get("/health")).get("assigned_partitions", 0) > 0)
        except OSError:
            return False

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass
class Workspace:
    path: Path
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)
    # commands still running: a test that failed while a simulator produced in the background left
    # it producing into the next test's topics (recreated with the same names), which then waited
    # 30 min for an event count it could no longer reach
    commands: list[subprocess.Popen[str]] = field(default_factory=list)

    def cli(
        self, *args: str | Path, check: bool = True, timeout: float = 600, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", *map(str, args)]
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=self.path,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.commands.append(process)  # killed at the end of the test if still running
        try:
            out, err = process.communicate(stdin.decode() if stdin is not None else None, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        finally:
            self.commands.remove(process)
        result = subprocess.CompletedProcess(command, process.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(
                f"touchline {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start_worker(
        self, port: int | None = None, wait: bool = True, own_store: bool = False, role: str = "all"
    ) -> Worker:
        """Start `touchline worker --role ROLE`. `own_store`: its own data directory, hence its own
        embedded ClickHouse (chDB allows one process per store; several workers share a server)."""
        # the first worker takes the configured port, so `touchline sql` finds it
        port = port or (free_port() if self.workers else int(self.env["TOUCHLINE_WORKER_WEB_PORT"]))
        log = self.path / f"worker-{port}.log"
        env = dict(self.env)
        if own_store:
            env["TOUCHLINE_DATA_DIR"] = str(self.path / f"data-{port}")
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker", "--web-port", str(port), "--role", role],
                env=env,
                cwd=self.path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(self, port, process, log)
        self.workers.append(worker)
        if wait:
            wait_until(worker.ready, 120, "the worker to get its partitions")
        return worker


@contextmanager
def open_workspace(kafka: str, path: Path, extra_env: dict[str, str] | None = None) -> Iterator[Workspace]:
    """Fresh topics, a data directory under `path`, a new consumer group; workers stopped at the end."""
    recreate_topics(kafka)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "TOUCHLINE_DATA_DIR": str(path / "data"),
            "TOUCHLINE_APP_ID": f"touchline-test-{uuid.uuid4().hex[:8]}",
            "TOUCHLINE_TOPIC_PARTITIONS": str(PARTITIONS),
            "TOUCHLINE_WORKER_WEB_PORT": str(free_port()),
            # the scenarios replay days of 2026-03 and of the anonymised bank data: history, explicitly
            "TOUCHLINE_HISTORY_SINCE": "2000-01-01T00:00:00Z",
            # workers with their own data directories share one key, as the workers of a deployment must
            "TOUCHLINE_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "PYTHONPATH": str(REPO),
            **(extra_env or {}),
        }
    )
    space = Workspace(path, env)
    try:
        yield space
    finally:
        for process in list(space.commands):
            process.kill()
            process.wait()
        for worker in space.workers:
            worker.stop()


@pytest.fixture
def workspace(kafka: str, tmp_path: Path) -> Iterator[Workspace]:
    with open_workspace(kafka, tmp_path) as space:
        yield space
