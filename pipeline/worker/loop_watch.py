"""How long the event loop was blocked: a 100 ms sleep that wakes late measures the stall.

SLA deadlines fire from timers on the loop, so a stall is a late breach; the histogram and the
longest stall are exported, and stalls over a second are logged."""

from __future__ import annotations

import asyncio
import logging
import time

from pipeline.worker import metrics

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.1
LOG_OVER_SECONDS = 1.0


async def watch_loop() -> None:
    longest = 0.0
    while True:
        started = time.monotonic()
        await asyncio.sleep(INTERVAL_SECONDS)
        stall = max(0.0, time.monotonic() - started - INTERVAL_SECONDS)
        metrics.LOOP_STALL_SECONDS.observe(stall)
        if stall > longest:
            longest = stall
            metrics.LOOP_STALL_MAX.set(longest)
        if stall > LOG_OVER_SECONDS:
            log.warning("the event loop was blocked for %.1f s", stall)
