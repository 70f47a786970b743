"""How long the event loop was blocked: a 100 ms sleep that wakes late measures the stall.

SLA deadlines fire from timers on the loop, so a stall is a late breach; the histogram and the
longest stall are exported, and stalls over a second are logged. A watchdog thread logs where the
loop's thread is while it is blocked (once per stall), so a stall in production names its cause."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from pipeline.worker import metrics

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.1
LOG_OVER_SECONDS = 1.0
STACK_AFTER_SECONDS = 0.5


class _Watchdog(threading.Thread):
    def __init__(self, loop_thread: int) -> None:
        super().__init__(name="loop-watchdog", daemon=True)
        self.loop_thread = loop_thread
        self.beat = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        reported = 0.0
        while not self.stopped.wait(INTERVAL_SECONDS):
            beat = self.beat
            if time.monotonic() - beat < STACK_AFTER_SECONDS or beat == reported:
                continue
            reported = beat
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None:
                stack = "".join(traceback.format_stack(frame, limit=25))
                log.warning("the event loop has been blocked for over %.1f s at:\n%s", STACK_AFTER_SECONDS, stack)


async def watch_loop() -> None:
    longest = 0.0
    watchdog = _Watchdog(threading.get_ident())
    watchdog.start()
    try:
        while True:
            started = time.monotonic()
            await asyncio.sleep(INTERVAL_SECONDS)
            watchdog.beat = now = time.monotonic()
            stall = max(0.0, now - started - INTERVAL_SECONDS)
            metrics.LOOP_STALL_SECONDS.observe(stall)
            if stall > longest:
                longest = stall
                metrics.LOOP_STALL_MAX.set(longest)
            if stall > LOG_OVER_SECONDS:
                log.warning("the event loop was blocked for %.1f s", stall)
    finally:
        watchdog.stopped.set()
