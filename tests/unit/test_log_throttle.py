from __future__ import annotations

import logging

from pipeline.worker.log_throttle import RepeatThrottle


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeated_client_errors_pass_once_per_interval_with_a_count() -> None:
    now = [0.0]
    throttle = RepeatThrottle(interval=10)
    throttle._now = lambda: now[0]  # type: ignore[method-assign]
    passed = []
    for second in range(30):
        now[0] = float(second)
        for _ in range(100):  # 100 failed connection attempts a second
            r = record("aiokafka.conn", "Unable connect to node with id %s")
            if throttle.filter(r):
                passed.append(r.getMessage() if r.args else str(r.msg))
    assert len(passed) == 3
    assert "999 more like this" in passed[1] and "999 more like this" in passed[2]


def test_other_loggers_and_info_lines_are_untouched() -> None:
    throttle = RepeatThrottle(interval=10)
    assert all(throttle.filter(record("pipeline.worker.analytics", "restored")) for _ in range(5))
    assert all(throttle.filter(record("aiokafka.conn", "connected", logging.INFO)) for _ in range(5))
