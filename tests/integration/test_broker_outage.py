"""The broker going away under a running worker, on a broker of this test's own (the session's is
shared): `/health` says so within seconds, the worker waits it out, reads on when the broker is
back, and loses nothing. A broker lost while the worker is still starting is reported too (before
the fix `/health` said `ok` with nothing failing, and the Kafka clients logged ten lines a second),
and a stop in that state is prompt (it took 61.4 s)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.simulator.truth import read_truth
from tools import broker

from .conftest import Worker, free_port, open_workspace, wait_until

pytestmark = pytest.mark.integration


def health(worker: Worker) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(worker.get("/health"))
    return body


def first_health(worker: Worker, timeout: float = 60) -> dict[str, Any]:
    """The first answer of `/health`, asked every 50 ms from the worker's start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.tail()}")
        try:
            return health(worker)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the worker's /health never answered")


def test_a_broker_outage_is_reported_waited_out_and_loses_nothing(tmp_path: Path) -> None:
    kafka_dir = tmp_path / "kafka"
    port, controller = free_port(), free_port()
    bootstrap = broker.start(kafka_dir, port=port, controller_port=controller)
    (tmp_path / "space").mkdir()
    try:
        with open_workspace(bootstrap, tmp_path / "space") as space:
            worker = space.start_worker(wait=False)
            assert first_health(worker)["status"] == "starting"
            wait_until(worker.ready, 120, "the worker to get its partitions")
            assert health(worker)["status"] == "ok"

            broker.stop(kafka_dir)
            down_at = time.monotonic()
            wait_until(lambda: health(worker)["status"] == "degraded", 20, "/health to report the broker")
            failing = health(worker)["failing"]
            assert any(name.startswith("kafka-consumer-") for name in failing), failing
            time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))  # an outage of 15 s
            assert worker.process.poll() is None, worker.tail()

            broker.start(kafka_dir, port=port, controller_port=controller)
            wait_until(lambda: health(worker)["status"] == "ok", 60, "/health to be ok again")
            truth = space.path / "truth.jsonl"
            space.cli(
                "simulate", "--seed", "11", "--start", "2026-03-02T08:00:00Z", "--duration", "5m", "--speed", "0",
                "--truth", truth,
            )  # fmt: skip
            expected = sum(r["events"] for r in read_truth(truth) if r["kind"] == "contact")
            assert expected > 50
            worker.wait_for_events(expected)

            worker.stop(signal.SIGTERM)
            assert worker.process.returncode == 0, worker.tail()
            log = worker.log.read_text(errors="replace")
            # the Kafka clients' repeated errors are throttled: one line per kind per 10 s with a count
            assert "more like this in the last" in log
            assert log.count("Unable connect to node") < 20, log.count("Unable connect to node")

            # lost while starting: after its web server answers, before its stages read
            restarted = space.start_worker(wait=False)
            assert first_health(restarted)["status"] == "starting"
            broker.stop(kafka_dir)
            down_at = time.monotonic()

            def reported() -> bool:
                return restarted.process.poll() is not None or health(restarted)["status"] == "degraded"

            wait_until(reported, 20, "the restarted worker to report the broker or stop")
            if restarted.process.poll() is None:
                assert any(name.startswith("kafka-") for name in health(restarted)["failing"])
                time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
                # a stop with the broker still down: Faust's consumer thread dies in it (aiokafka's
                # fetcher), and mode waited 60 s for it (61.4 s before the fix)
                began = time.monotonic()
                restarted.stop(signal.SIGTERM, timeout=30)
                assert restarted.process.returncode == 0, restarted.tail()
                assert time.monotonic() - began < 15, time.monotonic() - began
            else:
                # Faust's start gave up on the broker: one clear line, no traceback
                tail = restarted.tail(200)
                assert restarted.process.returncode == 1, tail
                assert "the Kafka broker failed while the worker was starting" in tail, tail
                assert "Traceback" not in tail, tail
            log = restarted.log.read_text(errors="replace")
            assert log.count("Unable connect to node") < 20, log.count("Unable connect to node")
    finally:
        broker.stop(kafka_dir)
