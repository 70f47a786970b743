"""A hostile corpus and a seeded random fuzzer of channel-topic messages: (key, value) pairs that a
broken or malicious producer could send. Shared by the unit test (decode and the ingest sink on
embedded ClickHouse) and the integration test (a worker on the real broker)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

Message = tuple[bytes | None, bytes | None]  # key, value


def valid(now: datetime, event_id: str = "h-1", contact: str = "hc-1", **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "queued",
        "event_id": event_id,
        "occurred_at": (now - timedelta(minutes=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "channel": "chat",
        "contact_id": contact,
        "queue": "billing",
        "customer": {"phone": "+441632960000"},
    }
    body.update(fields)
    return body


def encoded(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def corpus(now: datetime) -> list[tuple[str, Message]]:
    """Named hostile messages, each on the chat topic."""
    base = valid(now)
    key = b"hc-1"
    deep = b"[" * 100_000 + b"]" * 100_000
    items: list[tuple[str, Message]] = [
        ("empty", (key, b"")),
        ("none", (key, None)),
        ("10 MB", (key, b'{"type":"queued","pad":"' + b"x" * 10_000_000 + b'"}')),
        ("invalid utf-8", (key, b'{"type":"queued","event_id":"\xff\xfe"}')),
        ("nesting 100k deep", (key, deep)),
        ("nested object 100k deep", (key, b'{"a":' * 50_000 + b"1" + b"}" * 50_000)),
        ("huge number", (key, encoded(valid(now, priority=10**400)))),
        ("huge float", (key, encoded(valid(now, type="ended", acw_seconds=1e308)))),
        ("NaN", (key, encoded(valid(now, type="ended", acw_seconds=float("nan"))))),
        ("Infinity", (key, encoded(valid(now, type="ended", acw_seconds=float("inf"))))),
        ("year 1970", (key, encoded({**base, "occurred_at": "1970-01-01T00:00:00Z"}))),
        ("year 9999", (key, encoded({**base, "occurred_at": "9999-12-31T23:59:59.999Z"}))),
        ("year 9999 -05:00", (key, encoded({**base, "occurred_at": "9999-12-31T23:59:59.999-05:00"}))),
        ("year 1 +05:00", (key, encoded({**base, "occurred_at": "0001-01-01T00:00:00+05:00"}))),
        ("year 2200", (key, encoded({**base, "occurred_at": "2200-01-01T00:00:00Z"}))),
        ("60 days ahead", (key, encoded({**base, "occurred_at": (now + timedelta(days=60)).isoformat()}))),
        (
            "offset +14:00",
            (
                key,
                encoded(
                    {
                        **base,
                        "occurred_at": (now - timedelta(minutes=1))
                        .astimezone(timezone(timedelta(hours=14)))
                        .isoformat(),
                    }
                ),
            ),
        ),
        ("no zone", (key, encoded({**base, "occurred_at": "2026-01-01T00:00:00"}))),
        ("wrong types", (key, encoded({**base, "priority": "high", "queue": 7, "customer": []}))),
        ("unknown field", (key, encoded({**base, "favourite_colour": "blue"}))),
        ("10k-char event id", (key, encoded({**base, "event_id": "e" * 10_000}))),
        ("null bytes", (key, encoded({**base, "queue": "bill\u0000ing"}))),
        ("raw null bytes", (key, b"\x00" * 1000)),
        ("score out of range", (key, encoded(valid(now, type="survey_response", survey="csat", score=99)))),
        ("no key", (None, encoded(base))),
        ("wrong key", (b"someone-else", encoded(base))),
        ("empty phone", (key, encoded({**base, "customer": {"phone": ""}}))),
        ("empty contact id", (b"", encoded({**base, "contact_id": ""}))),
        ("array", (key, b"[1,2,3]")),
        ("string", (key, b'"queued"')),
        ("truncated", (key, encoded(base)[:40])),
        ("bom", (key, b"\xef\xbb\xbf" + encoded(base))),
        ("wrong channel", (key, encoded({**base, "channel": "voice"}))),
        ("duplicate keys", (key, encoded(base)[:-1] + b',"queue":"other"}')),
        (
            "identity link to nothing",
            (
                key,
                encoded(
                    valid(
                        now,
                        type="identity_link",
                        left={"kind": "phone", "value": ""},
                        right={"kind": "email", "value": "a@b"},
                    )
                ),
            ),
        ),
    ]
    return items


_HOSTILE_VALUES: list[object] = [
    None,
    "",
    " ",
    "\u0000",
    "x" * 200,
    10**30,
    -1,
    1.5,
    float("nan"),
    True,
    [],
    {},
    [[[]]],
    {"a": {"b": {}}},
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+14:00",
    "2026-13-45T99:99:99Z",
    "\ud83d\ude00",
    "'; DROP TABLE interaction_events; --",
    "../../etc/passwd",
    "+44 20 7946 0000",
    "A@B.C",
]


def fuzz(seed: int, count: int, now: datetime) -> Iterator[Message]:
    """`count` messages: mutations of a valid event (a field replaced by a hostile value, bytes
    flipped, cut or inserted, a field dropped), deterministic for `seed`. Bounded: at most ~2 KB each."""
    rng = random.Random(seed)
    fields = ["type", "event_id", "occurred_at", "channel", "contact_id", "queue", "priority", "customer",
              "survey", "score", "acw_seconds", "left", "right", "schema_version", "author"]  # fmt: skip
    for n in range(count):
        body = valid(now, event_id=f"fz-{seed}-{n}", contact=f"fzc-{n % 97}")
        if rng.random() < 0.3:
            body["type"] = rng.choice(["survey_response", "identity_link", "ended", "bot_turn", "transferred"])
        choice = rng.random()
        key: bytes | None = str(body["contact_id"]).encode()
        if choice < 0.45:
            body[rng.choice(fields)] = rng.choice(_HOSTILE_VALUES)
            value = encoded(body)
        elif choice < 0.55:
            body.pop(rng.choice(list(body)))
            value = encoded(body)
        elif choice < 0.65:
            shift = timedelta(seconds=rng.choice([-1, 1]) * 10 ** rng.uniform(0, 11))
            try:
                body["occurred_at"] = (now + shift).isoformat()
            except OverflowError:
                body["occurred_at"] = "9999-12-31T23:59:59Z"
            value = encoded(body)
        elif choice < 0.7:
            body["customer"] = {
                rng.choice(["phone", "email", "web_cookie", "social_handle", "customer_id"]): rng.choice(
                    _HOSTILE_VALUES
                )
            }
            value = encoded(body)
        else:
            raw = bytearray(encoded(body))
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                at = rng.randrange(len(raw) + 1)
                if op < 0.4 and raw:
                    raw[min(at, len(raw) - 1)] = rng.randrange(256)
                elif op < 0.7:
                    del raw[at : at + rng.randint(1, 20)]
                else:
                    raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            value = bytes(raw)
        if rng.random() < 0.02:
            key = rng.choice([None, b"", b"other"])
        yield key, value


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
