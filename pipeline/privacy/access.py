"""Who may use the worker's analyst endpoints (/sql, /journeys/lookup, /forget): a bearer token when
one is configured (required when the worker listens beyond loopback), and never a browser page of
another origin. Process-wide, set by the worker at start (`configure`)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from pipeline.config import ConfigError, Settings

_token: bytes | None = None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_of(settings: Settings) -> str | None:
    """The worker's token; ConfigError when it listens beyond loopback without one."""
    token = settings.worker_token.get_secret_value() if settings.worker_token is not None else None
    if token is not None and len(token) < 16:
        raise ConfigError(
            "invalid Touchline configuration:\n  worker_token / TOUCHLINE_WORKER_TOKEN: use at least 16 characters"
        )
    if token is None and not is_loopback(settings.worker_web_host):
        raise ConfigError(
            f"the worker would listen on {settings.worker_web_host}, beyond this machine, and /sql and "
            "/journeys/lookup answer with customer data: set TOUCHLINE_WORKER_TOKEN (a long random "
            "string; clients send `Authorization: Bearer <token>`), or listen on 127.0.0.1"
        )
    return token


def configure(token: str | None) -> None:
    global _token
    _token = token.encode() if token is not None else None


def refusal(headers: Mapping[str, str]) -> tuple[int, str] | None:
    """(status, reason) when a request with these headers must be refused, else None."""
    site = headers.get("Sec-Fetch-Site", "")
    origin = headers.get("Origin")
    if site in ("cross-site", "same-site") or (
        origin is not None and not _same_origin(origin, headers.get("Host", ""))
    ):
        return 403, "cross-origin requests are refused"
    if _token is not None:
        given = headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), _token):
            return 401, "a bearer token is required: Authorization: Bearer <TOUCHLINE_WORKER_TOKEN>"
    return None


def _same_origin(origin: str, host: str) -> bool:
    parsed = urlsplit(origin)
    return bool(parsed.netloc) and parsed.netloc.lower() == host.lower()


def client_headers(settings: Settings) -> dict[str, str]:
    """What a Touchline command sends to the worker."""
    if settings.worker_token is None:
        return {}
    return {"Authorization": f"Bearer {settings.worker_token.get_secret_value()}"}
