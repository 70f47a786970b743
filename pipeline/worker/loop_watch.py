"""How long the event loop was blocked: a 100 ms sleep that wakes late measures the stall.

SLA deadlines fire from timers on the loop, so a stall is a late breach; the histogram and the
longest stall are exported, and stalls over a second are logged. While the loop is blocked for over
a second, faulthandler's watchdog (a C thread that needs no GIL, so it also sees a C call holding
it) writes every thread's stack to stderr, so a stall in production names its cause."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import sys
import time

from pipeline.worker import metrics

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.1
LOG_OVER_SECONDS = 1.0
GC_LOG_OVER_SECONDS = 0.5


class _GcPauses:
    """Times each collection: a full collection walks every tracked object while holding the GIL,
    so no thread (not even the watchdog) runs until it ends."""

    def __init__(self) -> None:
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.monotonic()
            return
        pause = time.monotonic() - self.started
        metrics.GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(pause)
        if pause > GC_LOG_OVER_SECONDS:
            log.warning("a garbage collection (generation %d) held every thread for %.1f s", info["generation"], pause)


async def watch_loop() -> None:
    longest = 0.0
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    # the process's own stderr: Faust's worker replaces sys.stderr with a logger that has no fd
    stack_to = sys.__stderr__
    try:
        while True:
            started = time.monotonic()
            await asyncio.sleep(INTERVAL_SECONDS)
            if stack_to is not None:
                faulthandler.dump_traceback_later(LOG_OVER_SECONDS, file=stack_to)
            now = time.monotonic()
            stall = max(0.0, now - started - INTERVAL_SECONDS)
            metrics.LOOP_STALL_SECONDS.observe(stall)
            if stall > longest:
                longest = stall
                metrics.LOOP_STALL_MAX.set(longest)
            if stall > LOG_OVER_SECONDS:
                log.warning("the event loop was blocked for %.1f s", stall)
    finally:
        faulthandler.cancel_dump_traceback_later()
        gc.callbacks.remove(pauses)
