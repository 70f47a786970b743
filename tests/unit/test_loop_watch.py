"""The loop watch names what blocks the event loop (a watchdog thread logs the loop's stack) and
exports the stall."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    logging.basicConfig(stream=sys.stdout)
    from pipeline.worker import metrics
    from pipeline.worker.loop_watch import watch_loop

    def blocking_step_of_the_test():
        time.sleep(1.4)  # a C call that holds the loop

    async def main():
        watch = asyncio.ensure_future(watch_loop())
        await asyncio.sleep(0.3)
        blocking_step_of_the_test()
        await asyncio.sleep(0.3)
        watch.cancel()
        print("longest", metrics.LOOP_STALL_MAX._value.get())

    asyncio.run(main())
    """
)


def test_a_blocked_loop_is_measured_and_its_stack_written() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "blocking_step_of_the_test" in done.stdout, done.stdout
    longest = float(done.stdout.split("longest ")[-1])
    assert 1.2 < longest < 5.0
    # asleep, not waiting for a CPU: the stall is the loop's own
    assert "was blocked for 1." in done.stdout and "waited 0.0 s of it for a CPU" in done.stdout, done.stdout


def test_a_loop_that_is_never_blocked_writes_no_stack() -> None:
    quiet = SCRIPT.replace("time.sleep(1.4)", "time.sleep(0.05)")
    done = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "has been blocked" not in done.stdout
    assert float(done.stdout.split("longest ")[-1]) < 1.0


STARVED = textwrap.dedent(
    """
    import asyncio, os, subprocess, sys, time
    from pipeline.worker import metrics
    from pipeline.worker.loop_watch import watch_loop

    os.sched_setaffinity(0, {0})  # this process and a busy one share one CPU
    rival = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\\nwhile True: pass"])

    async def main():
        watch = asyncio.ensure_future(watch_loop())
        await asyncio.sleep(0.3)
        until = time.monotonic() + 2.0
        while time.monotonic() < until:  # CPU work in 20 ms slices: runnable all along
            spin = time.monotonic() + 0.02
            while time.monotonic() < spin:
                pass
            await asyncio.sleep(0)
        watch.cancel()
        print("waited", metrics.LOOP_CPU_WAIT._value.get())

    try:
        asyncio.run(main())
    finally:
        rival.kill()
    """
)


def test_time_the_loop_thread_waits_for_a_cpu_is_counted() -> None:
    """A busy process pinned to the worker's only CPU: the loop's thread waits about half the time."""
    done = subprocess.run([sys.executable, "-c", STARVED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split("waited ")[-1]) > 0.5
