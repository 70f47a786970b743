"""Producing the worker's outputs straight through the Faust app's producer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import faust

from pipeline.worker.sink import Outgoing


async def produce(app: faust.App, topic: str, messages: Iterable[Outgoing]) -> None:
    """Send `messages` and wait until every one is delivered. Straight to the producer: Faust's
    `Topic.send` adds per-message machinery (futures, channel, callbacks) that costs more than the
    send itself, and these outputs come by the thousand."""
    deliveries = [await app.producer.send(topic, key, value, None, None, headers) for key, value, headers in messages]
    await asyncio.gather(*deliveries)
