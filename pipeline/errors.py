"""Plain causes for failures a user meets at start: the ClickHouse server that does not answer, the
port that is taken. The first line of what the user reads names the cause, not the driver's text."""

from __future__ import annotations

import re
from typing import NoReturn

import click


def fail(message: str, code: int = 1, prog: str = "touchline") -> NoReturn:
    """End a command on a user's mistake or an unusable dependency: one line on stderr prefixed with
    the program, exit `code`, no traceback. SystemExit (not click.ClickException, an Exception):
    it passes through the commands' `except Exception` handlers as it always did."""
    click.echo(f"{prog}: {message}", err=True)
    raise SystemExit(code)


_STORE_CAUSES: tuple[tuple[str, str], ...] = (
    (r"Connection refused", "connection refused: nothing listens on that host and port (is ClickHouse running?)"),
    (r"Failed to resolve|Name or service not known|nodename nor servname", "host name not found"),
    (r"No route to host|Network is unreachable", "host unreachable"),
    (r"timed out|Timeout", "connection timed out"),
    (
        r"CERTIFICATE_VERIFY_FAILED|SSLError|SSL:",
        "TLS handshake failed (certificate not trusted, or not an https port)",
    ),
    (r"Code: 516|Authentication failed|AUTHENTICATION_FAILED", "authentication failed: check the user and password"),
    (r"Code: 497|ACCESS_DENIED|Not enough privileges", "access denied: the user lacks a grant (see the README)"),
    (r"Code: 81\b|UNKNOWN_DATABASE", "the database does not exist and the user may not create it"),
)


def store_cause(text: str) -> str | None:
    """A plain cause for a ClickHouse connection error's text, or None when it is not a known one."""
    for pattern, cause in _STORE_CAUSES:
        if re.search(pattern, text):
            return cause
    return None


def store_error_message(error: Exception) -> str:
    """`cannot open ClickHouse at URL: <plain cause>`; the driver's text only when the cause is unknown."""
    text = str(error)
    cause = store_cause(text)
    if cause is None:
        return text
    head = re.match(r"(cannot open ClickHouse at (\S+)): ", text)
    if head and head.group(2).startswith("chdb:") and "does not exist" in cause:
        return (
            f"{head.group(1)}: no Touchline store there yet (nothing ran with this data directory; "
            "`make run` or `touchline migrate` creates it)"
        )
    return f"{head.group(1) if head else 'ClickHouse'}: {cause}"


def first_cause(log_text: str) -> str | None:
    """The line of a worker log that names why it stopped: its own `touchline:` message, or a bind failure."""
    for line in log_text.splitlines():
        if line.startswith("touchline: "):
            return line.removeprefix("touchline: ")
    for line in log_text.splitlines():
        if re.search(r"address already in use|Errno 98", line, re.IGNORECASE):
            return line.strip()
    return None


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (e.g. `address already in use`), or None when it can."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return "address already in use" if error.errno == errno.EADDRINUSE else (error.strerror or str(error))
    return None
