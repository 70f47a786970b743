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


def test_a_loop_that_is_never_blocked_writes_no_stack() -> None:
    quiet = SCRIPT.replace("time.sleep(1.4)", "time.sleep(0.05)")
    done = subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "has been blocked" not in done.stdout
    assert float(done.stdout.split("longest ")[-1]) < 1.0
