"""Static catalogues of the simulated contact centre: arrival profiles, channels, intents, queues,
behaviour parameters and the staffing plan derived from them.

Everything here is plain data plus small pure functions; the discrete-event model in `model.py`
reads it. Hours are UTC hours of the simulated clock (the centre works on UTC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.events.models import Channel

ProfileName = Literal["daily", "flat", "tickets"]  # tickets: see `tickets.py`

# Share of the peak arrival rate by hour of day: quiet at night, a mid-morning peak, a lunch dip and
# a second peak after lunch, tailing off in the evening. Linearly interpolated between hour centres.
DAILY_CURVE: tuple[float, ...] = (
    0.06, 0.04, 0.03, 0.03, 0.04, 0.08, 0.20, 0.45, 0.80, 1.00, 0.97, 0.85,
    0.70, 0.82, 0.93, 0.88, 0.76, 0.60, 0.45, 0.36, 0.28, 0.20, 0.13, 0.09,
)  # fmt: skip
# Social media peaks in the evening; e-mail is written round the clock, flatter.
SOCIAL_CURVE: tuple[float, ...] = (
    0.20, 0.14, 0.10, 0.08, 0.08, 0.10, 0.18, 0.32, 0.50, 0.62, 0.66, 0.68,
    0.72, 0.70, 0.68, 0.68, 0.70, 0.78, 0.88, 0.97, 1.00, 0.92, 0.70, 0.40,
)  # fmt: skip
EMAIL_CURVE: tuple[float, ...] = (
    0.18, 0.14, 0.12, 0.12, 0.14, 0.20, 0.35, 0.60, 0.85, 1.00, 0.98, 0.92,
    0.80, 0.88, 0.92, 0.88, 0.80, 0.68, 0.55, 0.48, 0.42, 0.36, 0.30, 0.24,
)  # fmt: skip
# Weekends are quieter (Monday = 0).
WEEKDAY_FACTOR: tuple[float, ...] = (1.0, 0.97, 0.95, 0.95, 0.9, 0.6, 0.45)

CURVES: dict[Channel, tuple[float, ...]] = {
    Channel.VOICE: DAILY_CURVE,
    Channel.CHAT: DAILY_CURVE,
    Channel.WEB: DAILY_CURVE,
    Channel.SMS: DAILY_CURVE,
    Channel.EMAIL: EMAIL_CURVE,
    Channel.SOCIAL: SOCIAL_CURVE,
}

# Share of new issues that start on each channel.
CHANNEL_MIX: dict[Channel, float] = {
    Channel.VOICE: 0.44,
    Channel.CHAT: 0.18,
    Channel.WEB: 0.12,
    Channel.EMAIL: 0.11,
    Channel.SMS: 0.07,
    Channel.SOCIAL: 0.08,
}

SYNC_CHANNELS = frozenset({Channel.VOICE, Channel.CHAT, Channel.WEB})
BOT_CHANNELS = frozenset({Channel.CHAT, Channel.WEB})
ASYNC_CHANNELS = frozenset({Channel.EMAIL, Channel.SMS, Channel.SOCIAL})

SEGMENTS: tuple[tuple[str, float, tuple[float, float, float]], ...] = (
    # segment, share of customers, probability of priority 0/1/2
    ("retail", 0.78, (0.92, 0.07, 0.01)),
    ("premium", 0.15, (0.15, 0.75, 0.10)),
    ("business", 0.07, (0.10, 0.30, 0.60)),
)

ANONYMOUS_PHONE = "0000000000"
ANONYMOUS_SHARE_VOICE = 0.05  # callers with a withheld number who never identify and never return


def arrival_factor(channel: Channel, hours_since_epoch: float, profile: ProfileName) -> float:
    """Share (0..1] of the peak arrival rate at a moment, for one channel."""
    if profile == "flat":
        return 1.0
    curve = CURVES[channel]
    hour_of_day = hours_since_epoch % 24.0
    # Centre of hour h is h + 0.5: interpolate between neighbouring centres.
    position = hour_of_day - 0.5
    low = math.floor(position)
    frac = position - low
    value = curve[low % 24] * (1.0 - frac) + curve[(low + 1) % 24] * frac
    # 1970-01-01 was a Thursday (weekday 3).
    weekday = (int(hours_since_epoch // 24) + 3) % 7
    return value * WEEKDAY_FACTOR[weekday]


def hourly_mean_factor(channel: Channel, hour: int, profile: ProfileName) -> float:
    """Mean arrival factor over one hour of day on a weekday (staffing is planned on it)."""
    if profile == "flat":
        return 1.0
    return sum(arrival_factor(channel, 24 * 7 * 52 * 30 + hour + k / 8, profile) for k in range(8)) / 8


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    weight: dict[Channel, float]
    ivr_menu: str
    self_service: float  # chance a voice caller resolves it in the IVR
    bot_containment: float  # chance the bot/assistant resolves it (chat, web)
    resolve: float  # chance an agent resolves it on a contact
    talk_mean: float  # seconds of talk (voice) for this intent
    menu_options: tuple[str, ...] = ()


def _w(voice: float, chat: float, web: float, email: float, sms: float, social: float) -> dict[Channel, float]:
    return {
        Channel.VOICE: voice,
        Channel.CHAT: chat,
        Channel.WEB: web,
        Channel.EMAIL: email,
        Channel.SMS: sms,
        Channel.SOCIAL: social,
    }


INTENTS: tuple[Intent, ...] = (
    Intent("billing", _w(22, 18, 14, 22, 15, 10), "billing", 0.10, 0.30, 0.82, 320, ("balance", "dispute", "invoice")),
    Intent("payment_arrangement", _w(9, 6, 6, 8, 12, 3), "billing", 0.05, 0.20, 0.75, 420, ("plan", "extension")),
    Intent("technical_support", _w(20, 20, 14, 14, 10, 18), "support", 0.05, 0.22, 0.68, 540, ("internet", "device")),
    Intent("outage", _w(7, 6, 10, 3, 12, 20), "support", 0.35, 0.45, 0.60, 240, ("status",)),
    Intent("order_status", _w(10, 16, 22, 12, 20, 12), "orders", 0.40, 0.55, 0.90, 200, ("track", "change")),
    Intent("returns", _w(6, 10, 12, 12, 8, 8), "orders", 0.05, 0.35, 0.85, 300, ("label", "refund")),
    Intent("account_access", _w(8, 12, 14, 6, 10, 6), "account", 0.20, 0.50, 0.92, 260, ("password", "details")),
    Intent("plan_change", _w(8, 7, 6, 6, 8, 4), "sales", 0.02, 0.25, 0.88, 380, ("upgrade", "downgrade")),
    Intent("cancellation", _w(6, 3, 2, 10, 3, 3), "sales", 0.0, 0.05, 0.70, 480, ("retention",)),
    Intent("complaint", _w(4, 2, 0, 7, 2, 16), "other", 0.0, 0.05, 0.62, 600, ()),
)
INTENT_BY_NAME: dict[str, Intent] = {i.name: i for i in INTENTS}


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    group: Literal["voice", "chat", "email", "sms", "social"]
    concurrency: int  # contacts one agent works on at once
    patience_mean: float  # mean patience of a waiting customer, seconds (0: never abandons)
    patience_shape: float  # Weibull shape of patience
    work_mean: float  # async: mean agent work per message, seconds; chat: mean gap between lines
    acw_mean: float  # mean after-contact work, seconds
    staffing_slack: tuple[float, ...] = field(default=())  # per-hour staffing accuracy (1 = on plan)
    business_hours: tuple[int, int] = (0, 24)  # staffed hours [from, to)


# Staffing accuracy: under-staffed at the lunch dip and the evening hand-over, so queues build up.
_SLACK_DEFAULT: tuple[float, ...] = (
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.85, 0.9, 0.92, 0.95, 0.95,
    0.72, 0.8, 0.9, 0.95, 0.95, 0.85, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0,
)  # fmt: skip

QUEUES: tuple[Queue, ...] = (
    Queue("voice.billing", "voice", 1, 180, 1.4, 0, 45, _SLACK_DEFAULT),
    Queue("voice.support", "voice", 1, 210, 1.3, 0, 60, _SLACK_DEFAULT),
    Queue("voice.sales", "voice", 1, 150, 1.5, 0, 40, _SLACK_DEFAULT),
    Queue("voice.general", "voice", 1, 160, 1.4, 0, 35, _SLACK_DEFAULT),
    Queue("chat.support", "chat", 3, 300, 1.2, 45, 30, _SLACK_DEFAULT),
    Queue("chat.billing", "chat", 3, 300, 1.2, 45, 30, _SLACK_DEFAULT),
    Queue("email.backoffice", "email", 1, 0, 1.0, 420, 0, _SLACK_DEFAULT, (7, 19)),
    Queue("sms.care", "sms", 1, 0, 1.0, 100, 0, _SLACK_DEFAULT, (7, 22)),
    Queue("social.care", "social", 1, 0, 1.0, 240, 0, _SLACK_DEFAULT, (6, 23)),
)
QUEUE_BY_NAME: dict[str, Queue] = {q.name: q for q in QUEUES}

_MENU_QUEUE = {
    "billing": "billing",
    "support": "support",
    "orders": "general",
    "account": "general",
    "sales": "sales",
    "other": "general",
}


def queue_for(channel: Channel, intent: Intent) -> str:
    """The queue a contact about `intent` on `channel` is routed to."""
    if channel == Channel.VOICE:
        return f"voice.{_MENU_QUEUE[intent.ivr_menu]}"
    if channel in BOT_CHANNELS:
        return "chat.billing" if intent.ivr_menu in ("billing", "sales") else "chat.support"
    if channel == Channel.EMAIL:
        return "email.backoffice"
    if channel == Channel.SMS:
        return "sms.care"
    return "social.care"


def transfer_target(queue: str, intent: Intent) -> str | None:
    """Where an agent in `queue` transfers a contact about `intent` (None: no sensible target)."""
    if queue == "voice.general":
        own = f"voice.{_MENU_QUEUE[intent.ivr_menu]}"
        return own if own != queue else "voice.support"
    if queue.startswith("voice."):
        return "voice.general" if intent.ivr_menu in ("orders", "account", "other") else "voice.sales"
    if queue == "chat.support":
        return "chat.billing"
    if queue == "chat.billing":
        return "chat.support"
    return None


TRANSFER_PROBABILITY: dict[str, float] = {
    "voice.general": 0.22,
    "voice.billing": 0.06,
    "voice.support": 0.07,
    "voice.sales": 0.05,
    "chat.support": 0.04,
    "chat.billing": 0.04,
}

# Mean number of contacts a new issue leads to (returns, transfers), used for staffing only.
_LOAD_MULTIPLIER = 1.25


def mean_handle_seconds(queue: Queue) -> float:
    """Agent-occupied seconds per contact in a queue, as the staffing plan assumes."""
    if queue.group == "voice":
        return 330 + 30 + queue.acw_mean
    if queue.group == "chat":
        return 4 * queue.work_mean * 2 + queue.acw_mean
    return queue.work_mean * 2.2


def expected_queue_share(channel: Channel, queue_name: str) -> float:
    """Share of a channel's contacts that reach `queue_name` (roughly, for staffing)."""
    total = 0.0
    weight_sum = sum(i.weight[channel] for i in INTENTS)
    for intent in INTENTS:
        if queue_for(channel, intent) != queue_name:
            continue
        share = intent.weight[channel] / weight_sum
        if channel == Channel.VOICE:
            share *= 1.0 - intent.self_service
        elif channel in BOT_CHANNELS:
            share *= (1.0 - intent.bot_containment) * 0.85
        total += share
    return total


def staffing_plan(rate: float, profile: ProfileName) -> dict[str, tuple[int, ...]]:
    """Agents per queue for each hour of the day, planned for `rate` new issues per hour at peak with
    a target occupancy, then scaled by each queue's staffing accuracy for that hour."""
    plan: dict[str, tuple[int, ...]] = {}
    for queue in QUEUES:
        per_hour: list[int] = []
        for hour in range(24):
            start, end = queue.business_hours
            if not start <= hour < end:
                per_hour.append(0)
                continue
            erlangs = 0.0
            for channel, mix in CHANNEL_MIX.items():
                share = expected_queue_share(channel, queue.name)
                if share == 0:
                    continue
                arrivals = rate * mix * hourly_mean_factor(channel, hour, profile) * share * _LOAD_MULTIPLIER
                erlangs += arrivals * mean_handle_seconds(queue) / 3600.0
            occupancy = 0.82 if queue.group in ("voice", "chat") else 0.9
            agents = erlangs / occupancy / queue.concurrency
            slack = queue.staffing_slack[hour] if queue.staffing_slack else 1.0
            # A little headroom for randomness on small teams, then the hour's staffing accuracy.
            planned = (agents + 0.6 * math.sqrt(agents)) * slack
            per_hour.append(max(1, round(planned)))
        plan[queue.name] = tuple(per_hour)
    return plan


BOT_IDS: dict[Channel, str] = {Channel.CHAT: "bot-chat-assist", Channel.WEB: "bot-web-selfservice"}
HANDOFF_REASONS: tuple[str, ...] = ("customer_request", "low_confidence", "policy", "authentication_required")

FIRST_NAMES: tuple[str, ...] = (
    "ann", "ben", "carla", "dev", "eva", "finn", "gita", "hugo", "ines", "jon", "kara", "liam", "maya",
    "nils", "olga", "pia", "quinn", "rosa", "sam", "tara", "umar", "vera", "will", "xena", "yusuf", "zoe",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "adams", "brown", "costa", "diaz", "evans", "fischer", "garcia", "hansen", "ito", "jones", "khan",
    "lopez", "moreau", "novak", "okafor", "patel", "quist", "rossi", "smith", "tanaka", "ueda", "virtanen",
    "weber", "xu", "young", "zhang",
)  # fmt: skip
