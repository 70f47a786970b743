"""How long the event loop was blocked: a 100 ms sleep that wakes late measures the stall.

SLA deadlines fire from timers on the loop, so a stall is a late breach; the histogram and the
longest stall are exported, and stalls over a second are logged. A watchdog thread logs where the
loop's thread is once it has been blocked for over half a second, so a stall in production names its
cause. (Not faulthandler's `dump_traceback_later`, which walks other threads' frames without the
GIL: a dump during a soak crashed the worker mid-write.) A C call that holds the GIL blocks the
watchdog too; its stack is logged as the call ends. Collector pauses are such calls and are timed
on their own. The loop thread's time waiting for a CPU (Linux's schedstat) is counted too: a stall
on a machine with more runnable threads than cores is not the worker's own."""

from __future__ import annotations

import asyncio
import gc
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
GC_LOG_OVER_SECONDS = 0.5


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
                stack = "".join(traceback.format_stack(frame, limit=30))
                log.warning("the event loop has been blocked for over %.1f s at:\n%s", STACK_AFTER_SECONDS, stack)


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


def cpu_wait_seconds(path: str) -> float | None:
    """Seconds the thread of `path` (`/proc/self/task/<id>/schedstat`) has spent runnable but
    waiting for a CPU; None where the kernel does not say."""
    try:
        with open(path, "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


async def watch_loop() -> None:
    longest = 0.0
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    watchdog = _Watchdog(threading.get_ident())
    watchdog.start()
    schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    waited = cpu_wait_seconds(schedstat)
    try:
        while True:
            started = time.monotonic()
            await asyncio.sleep(INTERVAL_SECONDS)
            watchdog.beat = now = time.monotonic()
            stall = max(0.0, now - started - INTERVAL_SECONDS)
            metrics.LOOP_STALL_SECONDS.observe(stall)
            cpu_wait = 0.0
            if waited is not None:
                total = cpu_wait_seconds(schedstat)
                if total is not None:
                    cpu_wait, waited = max(0.0, total - waited), total
                    metrics.LOOP_CPU_WAIT.inc(cpu_wait)
            if stall > longest:
                longest = stall
                metrics.LOOP_STALL_MAX.set(longest)
            if stall > LOG_OVER_SECONDS:
                log.warning(
                    "the event loop was blocked for %.1f s (its thread waited %.1f s of it for a CPU)",
                    stall,
                    min(cpu_wait, stall),
                )
    finally:
        watchdog.stopped.set()
        gc.callbacks.remove(pauses)
