"""Fault injection for worker subprocesses in the integration tests, at the ClickHouse client
boundary, without touching the product's code. With this directory first on PYTHONPATH:

* TOUCHLINE_TEST_CLICKHOUSE_FAULT_FILE set: every ClickHouse insert fails with a connection error
  (clickhouse-connect's OperationalError) while that file exists: ClickHouse "down".
* TOUCHLINE_TEST_KILL_AFTER_INSERT_FILE set: when that file exists and names a table, the next
  insert into that table that succeeds is followed by SIGKILL of the process's group (the file
  removed first): a crash after an output went out, before the state saying so was written."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

_FLAG = os.environ.get("TOUCHLINE_TEST_CLICKHOUSE_FAULT_FILE")

if _FLAG:
    from clickhouse_connect.driver.client import Client
    from clickhouse_connect.driver.exceptions import OperationalError

    _insert = Client.insert
    _flag = Path(_FLAG)

    def insert(self: Client, *args: Any, **kwargs: Any) -> Any:
        if _flag.exists():
            raise OperationalError("injected by the test: ClickHouse is unreachable")
        return _insert(self, *args, **kwargs)

    Client.insert = insert  # type: ignore[method-assign]


_KILL = os.environ.get("TOUCHLINE_TEST_KILL_AFTER_INSERT_FILE")

if _KILL:
    from clickhouse_connect.driver.client import Client as _Client

    _inserted = _Client.insert
    _kill = Path(_KILL)

    def insert_then_die(self: _Client, *args: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        table = str(args[0] if args else kwargs.get("table") or getattr(context, "table", ""))
        done = _inserted(self, *args, **kwargs)
        try:
            doomed = _kill.read_text().strip() == table.rsplit(".", 1)[-1].strip("`")
        except OSError:
            return done
        if doomed:
            _kill.unlink()
            os.killpg(os.getpgrp(), signal.SIGKILL)
        return done

    _Client.insert = insert_then_die  # type: ignore[method-assign]
