"""The worker's first seconds, until its stages read. Faust starts the worker's tasks and timers
(the consumers' broker probes, lag, checkpoints) only once the journey agent has its first
partitions and their tables are recovered; a broker lost before that went unseen: `/health`
answered `ok` with nothing failing for as long as it lasted, and the Kafka clients' retries (one
line every 100 ms) were not yet throttled (1,328 log lines in 30 s, `touchline worker --role all`
with the broker stopped 3 s after start).

`Runner` is Faust's worker with two hooks: the log throttle goes on as soon as Faust has set up
logging, and `Startup.watch` asks the cluster for its metadata every few seconds from the first
moment until the stages have started, reporting to `/health` as `kafka-broker`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from pipeline.errors import fail
from pipeline.worker import log_throttle
from pipeline.worker.backoff import exponential
from pipeline.worker.consumer import probe_cluster
from pipeline.worker.health import Health

DEPENDENCY = "kafka-broker"
PROBE_SECONDS = 5.0
# how long a stop waits for Faust's consumer thread to say it stopped (mode's default: 60 s). With
# the broker down, aiokafka's fetcher can die of a CancelledError in that thread, which then never
# says so: SIGTERM took 61.4 s, 11.4 s with 10 s here. A thread that is merely slow still finishes
# its stop (commit, leave the group) before the process exits: mode's threads are not daemons
CONSUMER_THREAD_STOP_SECONDS = 3.0


class Startup:
    """`started` turns true once the stages' consumers have started; until then `watch` probes."""

    def __init__(self, health: Health, bootstrap_servers: str, security: Mapping[str, Any] | None = None) -> None:
        self._health = health
        self._options: dict[str, Any] = {"bootstrap_servers": bootstrap_servers, **(security or {})}
        self._client: AIOKafkaClient | None = None
        self.started = False

    def finished(self) -> None:
        """The stages read now; their own probes report the broker from here on."""
        self.started = True
        self._health.forget(DEPENDENCY)

    async def reach_broker(self, interval: float = PROBE_SECONDS) -> None:
        """Until the broker answers: the command checked it, but it may have gone since, and Faust's
        producer gives up at once (a traceback and exit 1) if it cannot connect when it starts."""
        self._client = client = AIOKafkaClient(client_id="touchline-startup-probe", **self._options)  # in the loop
        pauses = exponential(0.2, interval)
        while True:
            try:
                await asyncio.wait_for(client.bootstrap(), interval)
                break
            except (TimeoutError, KafkaError, OSError) as error:
                self._health.failed(DEPENDENCY, error)
            await asyncio.sleep(next(pauses))
        self._health.ok(DEPENDENCY)

    async def watch(self, interval: float = PROBE_SECONDS) -> None:
        """After `reach_broker`: a metadata request every `interval` until the stages have started."""
        client = self._client
        assert client is not None, "reach_broker first"
        try:
            while not self.started:
                await asyncio.sleep(interval)
                if not self.started:
                    await probe_cluster(client, self._health, DEPENDENCY, interval)
        finally:
            if self.started:  # a probe in flight when the stages started may have reported since
                self._health.forget(DEPENDENCY)
            await client.close()


class Runner(faust.Worker):
    """Faust's worker, with the log throttle from the start and the broker watched while starting."""

    def __init__(self, app: faust.App, startup: Startup, **options: Any) -> None:
        super().__init__(app, **options)
        self._startup = startup

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        log_throttle.install()

    async def start(self) -> None:
        try:
            await super().start()
        except (KafkaError, ConnectionError) as error:
            # Faust's start does not retry: its producer, topic creation and consumer give up at once.
            # Not any OSError: a data directory that cannot be written is no broker failure
            fail(
                f"the Kafka broker failed while the worker was starting ({type(error).__name__}: {error}); "
                "nothing was read yet: start the worker again once the broker answers"
            )

    async def on_execute(self) -> None:
        await super().on_execute()
        # before Faust starts its services; a stop signal while waiting ends the wait cleanly
        self.install_signal_handlers()
        if not self.app.producer_only:
            thread = getattr(self.app.consumer, "_thread", None)  # faust's ThreadDelegateConsumer
            if thread is not None:
                thread.shutdown_timeout = CONSUMER_THREAD_STOP_SECONDS
        await self._startup.reach_broker()
        self.add_future(self._startup.watch())
