"""A stand-in pager for the compose stack: receives Alertmanager and Grafana webhook notifications
and logs one line per alert (`docker compose logs -f pager-webhook`). Standard library only.

    python receiver.py [--port 9095]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def page_lines(path: str, payload: Any) -> list[str]:
    """One line per alert of an Alertmanager / Grafana webhook body."""
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    if not isinstance(alerts, list) or not alerts:
        return [f"PAGE {path} (no alerts in the body) {json.dumps(payload)[:500]}"]
    lines = []
    for alert in alerts:
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        details = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        summary = annotations.get("summary") or annotations.get("description") or ""
        status = alert.get("status") or payload.get("status", "?")
        lines.append(f"PAGE {path} {status} {labels.get('alertname', '?')} {details} :: {summary}".rstrip(" :"))
    return lines


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {"raw": body.decode("utf-8", "replace")}
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for line in page_lines(self.path, payload):
            print(f"{stamp} {line}", flush=True)
        self._answer(200, b"paged\n")

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/health" else 404, b"ok\n" if self.path == "/health" else b"not found\n")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per page is the log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9095)
    options = parser.parse_args()
    server = ThreadingHTTPServer((options.host, options.port), Receiver)
    print(f"pager-webhook listening on {options.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
