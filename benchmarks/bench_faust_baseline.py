"""A bare Faust agent that only counts messages on the channel topics: the ceiling Faust itself puts
on any agent on this machine. `make bench` runs it beside the real worker so the two compare."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import faust

from pipeline.events.topics import INTERACTION_TOPICS
from pipeline.worker.app import broker_url


def main() -> None:
    bootstrap, expected, result_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = faust.App(
        f"touchline-faust-baseline-{os.getpid()}",
        broker=broker_url(bootstrap),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=5000,
        stream_buffer_maxsize=10_000,
        datadir=os.path.join(os.path.dirname(result_file), "faust-baseline"),
    )
    topics = app.topic(*INTERACTION_TOPICS.values(), value_serializer="raw", key_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(topics)
    async def count(stream: Any) -> None:
        async for event in stream.noack().events():
            if not seen["n"]:
                seen["first"] = time.monotonic()
            seen["n"] += 1
            event.ack()
            if seen["n"] >= expected:
                with open(result_file, "w") as out:
                    out.write(str(time.monotonic() - seen["first"]))
                os._exit(0)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
