"""The ticket-like profile (`touchline simulate --profile tickets`): the catalogue of a back-office
ticket desk working e-mail and social threads, plus small pure helpers the model's ticket handlers use.

A ticket is one contact: it is queued to a team, picked up by one of the team's agents during
business hours, and then goes round by round (agent reply, then a wait on the customer, on a vendor
or on another team, a team transfer, or a resolution). A resolved ticket closes (`ended`) a week
later unless the customer reopens it first; reopened tickets are reopened again more often. Some
waits go silent for more than 30 days (customers who answer after a month, vendors who take six
weeks), and some silent customers never answer: the ticket is closed unresolved after 40 days.
Agents work Monday to Friday 08:00-18:00 UTC only; customers write at any time but rarely at the
weekend, so weekends are quiet.

Times are epoch milliseconds (UTC); 1970-01-01 was a Thursday.
"""

from __future__ import annotations

import random

from pipeline.events.models import Channel

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DEFAULT_RATE = 6.0  # new tickets per hour at the weekday peak: ~4,000 tickets in 90 days
DEFAULT_DURATION_MS = 90 * DAY

CHANNEL_MIX: dict[Channel, float] = {Channel.EMAIL: 0.75, Channel.SOCIAL: 0.25}
# Share of the peak arrival rate by UTC hour of a weekday; weekends are nearly silent.
HOURLY: tuple[float, ...] = (
    0.04, 0.03, 0.03, 0.03, 0.04, 0.08, 0.20, 0.50, 0.85, 1.00, 0.98, 0.92,
    0.75, 0.85, 0.92, 0.88, 0.75, 0.50, 0.30, 0.20, 0.14, 0.10, 0.07, 0.05,
)  # fmt: skip
WEEKDAY: tuple[float, ...] = (1.0, 0.95, 0.92, 0.9, 0.85, 0.08, 0.05)  # Monday = 0

OPEN_HOUR, CLOSE_HOUR = 8, 18  # agents work weekdays 08:00-18:00 UTC

SERVICEDESK = "tickets.servicedesk"
TEAMS: tuple[str, ...] = (SERVICEDESK, "tickets.billing", "tickets.technical", "tickets.accounts")
AGENTS_PER_TEAM = 8
# The specialist team of each intent (intents from `profiles.INTENTS`).
TEAM_OF_INTENT: dict[str, str] = {
    "billing": "tickets.billing",
    "payment_arrangement": "tickets.billing",
    "technical_support": "tickets.technical",
    "outage": "tickets.technical",
    "account_access": "tickets.accounts",
    "plan_change": "tickets.accounts",
    "cancellation": "tickets.accounts",
    "order_status": SERVICEDESK,
    "returns": SERVICEDESK,
    "complaint": SERVICEDESK,
}
TRIAGE_SHARE = 0.65  # new tickets that land at the service desk first, whatever their intent
TRIAGE_TRANSFER = 0.55  # the service desk passes a ticket of a specialist intent on without replying
MAX_TRANSFERS = 3

# Working time (business hours only) until an agent picks a queued ticket up, by priority.
PICKUP_MEAN: dict[int, float] = {0: 5 * 3600.0, 1: 2 * 3600.0, 2: 40 * 60.0}
WORK_MEAN = 50 * 60.0  # agent work before a reply
RESOLVE_AFTER_DAYS = 7  # a resolved ticket closes this long after its resolution unless reopened
REOPEN_FIRST = 0.15  # chance a resolution is reopened by the customer...
REOPEN_AGAIN = 0.40  # ...and again, once it has been reopened before
MAX_REOPENS = 6
CUSTOMER_SILENT_CLOSE = 40 * DAY  # a ticket waiting on a silent customer closes unresolved

# What an agent does after a reply (cumulative shares are taken in this order; rest: the customer
# simply writes back).
WAIT_REASONS: tuple[str, ...] = ("customer", "vendor", "internal")
AFTER_REPLY: tuple[tuple[str, float], ...] = (
    ("wait_customer", 0.30),
    ("wait_vendor", 0.10),
    ("wait_internal", 0.05),
    ("transfer", 0.06),
)


def resolve_chance(rounds: int) -> float:
    """Chance the agent resolves the ticket with its `rounds`-th reply."""
    if rounds >= 8:
        return 0.9
    return 0.30 if rounds == 1 else 0.45


def arrival_factor(channel: Channel, hours_since_epoch: float) -> float:
    """Share (0..1] of the peak ticket arrival rate at a moment (same curve for both channels)."""
    hour = int(hours_since_epoch % 24.0)
    weekday = (int(hours_since_epoch // 24) + 3) % 7
    return HOURLY[hour] * WEEKDAY[weekday]


def agent_ids(team: str) -> tuple[str, ...]:
    short = team.split(".", 1)[1]
    return tuple(f"tk-{short}-{n:02d}" for n in range(1, AGENTS_PER_TEAM + 1))


def first_team(intent: str, rng: random.Random) -> str:
    """The team a new ticket is queued to."""
    return SERVICEDESK if rng.random() < TRIAGE_SHARE else TEAM_OF_INTENT[intent]


def transfer_target(team: str, intent: str, rng: random.Random) -> str:
    """Where a ticket in `team` is transferred: the intent's specialists, or elsewhere when it is there."""
    own = TEAM_OF_INTENT[intent]
    if team != own:
        return own
    return rng.choice([t for t in TEAMS if t != team])


def is_business(epoch_ms: int) -> bool:
    """Agents are at work at this moment (weekday, 08:00-18:00 UTC)."""
    day = epoch_ms // DAY
    weekday = (day + 3) % 7
    hour = (epoch_ms % DAY) // HOUR
    return weekday < 5 and OPEN_HOUR <= hour < CLOSE_HOUR


def next_opening(epoch_ms: int) -> int:
    """The next business-hours opening at or after `epoch_ms` (itself when agents are at work)."""
    if is_business(epoch_ms):
        return epoch_ms
    day = epoch_ms // DAY
    if (epoch_ms % DAY) < OPEN_HOUR * HOUR and (day + 3) % 7 < 5:
        return day * DAY + OPEN_HOUR * HOUR
    day += 1
    while (day + 3) % 7 >= 5:
        day += 1
    return day * DAY + OPEN_HOUR * HOUR


def add_business(epoch_ms: int, work_ms: int) -> int:
    """The moment `work_ms` of business time after `epoch_ms`."""
    t = next_opening(epoch_ms)
    while True:
        closing = (t // DAY) * DAY + CLOSE_HOUR * HOUR
        if t + work_ms < closing:
            return t + work_ms
        work_ms -= closing - t
        t = next_opening(closing)
