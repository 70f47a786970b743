"""The canonical interaction event: one pydantic model per event type.

These models are the single source of truth for the wire format. `touchline generate` generates
`schemas/events/*.json` from them and a test fails when the committed files drift.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from pipeline.times import iso

SCHEMA_VERSION = 2  # the newest value of EventBase.schema_version
# Version history (a consumer accepts every version up to SCHEMA_VERSION):
#   1  the original events.
#   2  `waiting_on_customer` / `waiting_ended` may carry `reason` (who is waited on); an event
#      that carries a version-2 field must say `schema_version: 2`.


class Channel(StrEnum):
    """A contact channel. Each has its own Kafka topic `touchline.interactions.<channel>`."""

    VOICE = "voice"
    CHAT = "chat"
    EMAIL = "email"
    SOCIAL = "social"
    SMS = "sms"
    WEB = "web"


class Author(StrEnum):
    """Who wrote a message or took a turn."""

    CUSTOMER = "customer"
    BOT = "bot"
    AGENT = "agent"
    SYSTEM = "system"


class IdentifierKind(StrEnum):
    """The kinds of customer identifier an event can carry."""

    CUSTOMER_ID = "customer_id"
    PHONE = "phone"
    EMAIL = "email"
    SOCIAL_HANDLE = "social_handle"
    WEB_COOKIE = "web_cookie"


_ZERO = timedelta(0)
# canonical event time, e.g. 2026-03-01T09:15:02.250Z (ASCII digits only)
_CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
Id = Annotated[str, Field(min_length=1, max_length=128)]
OptionalLabel = Annotated[str | None, Field(default=None, max_length=128)]
# an empty identifier would stitch every customer who sent one into one journey
OptionalId = Annotated[str | None, Field(default=None, min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class CustomerIdentifiers(_Strict):
    """Every identifier of the customer known at the touchpoint. Any may be absent; they are
    resolved to one canonical customer by journey stitching."""

    customer_id: OptionalId = Field(
        None,
        description="The company's own customer id, when the customer is known (logged in, verified in IVR).",
    )
    phone: OptionalId = Field(None, description="Phone number in E.164 form (voice, SMS).")
    email: OptionalId = Field(None, description="E-mail address, lower-cased (email channel, web forms).")
    social_handle: OptionalId = Field(
        None, description="Handle on a social network, e.g. `twitter:@ann` (social channel)."
    )
    web_cookie: OptionalId = Field(None, description="First-party web cookie id (web self-service, web chat).")


class Identifier(_Strict):
    """One identifier with its kind, as used by identity links."""

    kind: IdentifierKind = Field(description="Which kind of identifier `value` is.")
    value: Id = Field(description="The identifier's value.")


class EventBase(_Strict):
    """Fields every interaction event carries."""

    schema_version: Literal[1, 2] = Field(
        1,
        description="Version of this event schema: 1, or 2 for events that use a version-2 field "
        "(`reason` on waiting events). Bumped on incompatible change.",
    )
    event_id: Id = Field(
        description="Producer-assigned unique id of this event. Redelivered duplicates carry the same id and are counted once."
    )
    occurred_at: datetime = Field(
        description="Event time: when it happened at the touchpoint, ISO-8601 in UTC with millisecond precision, e.g. `2026-03-01T09:15:02.250Z`."
    )
    channel: Channel = Field(description="Channel of the contact. Must match the topic the event is published on.")
    contact_id: Id = Field(
        description="One conversation or call on one channel. All events of a contact share it; a contact belongs to one customer journey."
    )
    customer: CustomerIdentifiers = Field(
        default_factory=CustomerIdentifiers, description="Customer identifiers known at this touchpoint."
    )
    queue: OptionalLabel = Field(None, description="Queue (skill group) the contact is in, when routed.")
    priority: int = Field(0, ge=0, le=9, description="Routing priority, 0 (normal) to 9 (highest).")
    segment: OptionalLabel = Field(None, description="Customer segment, e.g. `retail`, `premium`, `business`.")
    intent: OptionalLabel = Field(
        None, description="Reason for contact as classified by IVR, bot or agent, e.g. `billing`."
    )
    agent_id: OptionalLabel = Field(None, description="Human agent involved in this event, if any.")
    bot_id: OptionalLabel = Field(None, description="Bot involved in this event, if any.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        type_field = cls.model_fields.get("type")
        if type_field is not None and type_field.description is None:
            type_field.description = f"Event type discriminator, always `{type_field.default}`."
            cls.model_rebuild(force=True)

    @field_validator("occurred_at", mode="wrap")
    @classmethod
    def _utc_millis(cls, value: Any, parse: ValidatorFunctionWrapHandler) -> datetime:
        if type(value) is str and _CANONICAL_TIME.fullmatch(value):
            # the form producers send, parsed by the standard library: already UTC (`datetime.UTC`,
            # one zone object for all times) with milliseconds. Parsing by pydantic, then replacing
            # its zone (`datetime.replace`, 1 µs) made a validated event cost 47.2k instructions,
            # now 39.4k (callgrind, 5,000 simulated events); tests/unit/test_event_times.py
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass  # e.g. 2026-02-30: pydantic says why
        parsed: datetime = parse(value)
        if parsed.microsecond % 1000 == 0 and parsed.utcoffset() == _ZERO:
            return parsed.replace(tzinfo=UTC)  # already UTC with milliseconds, as producers send it
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("occurred_at must carry a time zone (use UTC, e.g. 2026-03-01T09:15:02.250Z)")
        return utc_ms(parsed)

    @field_serializer("occurred_at")
    def _iso_millis(self, value: datetime) -> str:
        return iso(value)


class ContactStarted(EventBase):
    """A customer reached a touchpoint: a call rang in, a chat or SMS conversation opened, an e-mail
    or social post arrived, a web self-service session began."""

    type: Literal["contact_started"] = "contact_started"
    direction: Literal["inbound", "outbound"] = Field("inbound", description="Who initiated the contact.")


class IvrStep(EventBase):
    """The caller passed one node of the IVR menu (voice only)."""

    type: Literal["ivr_step"] = "ivr_step"
    ivr_node: Id = Field(description="Menu node the caller reached, e.g. `main>billing`.")


class IvrZeroOut(EventBase):
    """The caller pressed 0 (or said 'agent') to leave the IVR for a human."""

    type: Literal["ivr_zero_out"] = "ivr_zero_out"
    ivr_node: Id = Field(description="Menu node the caller zeroed out from.")


class BotTurn(EventBase):
    """One turn of a conversation with a bot: a customer utterance or the bot's answer."""

    type: Literal["bot_turn"] = "bot_turn"
    author: Literal[Author.CUSTOMER, Author.BOT] = Field(description="Who took this turn.")


class BotHandoff(EventBase):
    """The bot handed the conversation to a human queue."""

    type: Literal["bot_handoff"] = "bot_handoff"
    reason: OptionalLabel = Field(
        None, description="Why the bot handed off, e.g. `customer_request`, `low_confidence`."
    )


class Queued(EventBase):
    """The contact joined a queue to wait for an agent. `queue` names it."""

    type: Literal["queued"] = "queued"


class AgentAssigned(EventBase):
    """An agent accepted the contact; the wait in queue ends (answer, for voice)."""

    type: Literal["agent_assigned"] = "agent_assigned"


class FirstAgentReply(EventBase):
    """The first human reply to the customer on this contact (for voice: the agent's greeting)."""

    type: Literal["first_agent_reply"] = "first_agent_reply"
    author: Literal[Author.AGENT] = Field(Author.AGENT, description="Always `agent`.")


class AgentReply(EventBase):
    """A later human reply on an asynchronous or chat contact."""

    type: Literal["agent_reply"] = "agent_reply"
    author: Literal[Author.AGENT] = Field(Author.AGENT, description="Always `agent`.")


class CustomerMessage(EventBase):
    """A message from the customer on an ongoing contact (chat line, e-mail in thread, SMS, DM)."""

    type: Literal["customer_message"] = "customer_message"
    author: Literal[Author.CUSTOMER] = Field(Author.CUSTOMER, description="Always `customer`.")


class HoldStarted(EventBase):
    """The agent put the customer on hold."""

    type: Literal["hold_started"] = "hold_started"


class HoldEnded(EventBase):
    """The customer was taken off hold."""

    type: Literal["hold_ended"] = "hold_ended"


class Transferred(EventBase):
    """The contact was transferred to another queue or agent. `queue` is the queue it leaves."""

    type: Literal["transferred"] = "transferred"
    to_queue: OptionalLabel = Field(None, description="Queue the contact is transferred to.")
    to_agent_id: OptionalLabel = Field(None, description="Agent the contact is transferred to, for a direct transfer.")


# Well-known wait reasons; any other lower-case label (e.g. `legal`) is accepted too, so a new
# reason needs no schema change. No reason means `customer` (what version 1 meant).
WAIT_REASONS: tuple[str, ...] = ("customer", "vendor", "internal", "other")
DEFAULT_WAIT_REASON = "customer"
WaitReason = Annotated[str | None, Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class _Waiting(EventBase):
    reason: WaitReason = Field(
        None,
        description="Who is waited on: `customer` (the default when absent), `vendor`, `internal` (another "
        "team) or `other`; any other lower-case label is accepted. Needs `schema_version: 2`.",
    )

    @model_validator(mode="after")
    def _reason_needs_version_2(self) -> _Waiting:
        if self.reason is not None and self.schema_version < 2:
            raise ValueError("`reason` is a schema version 2 field: send `schema_version: 2` with it")
        return self

    @property
    def wait_reason(self) -> str:
        """The reason, `customer` when none was given."""
        return self.reason or DEFAULT_WAIT_REASON


class WaitingOnCustomer(_Waiting):
    """The contact now waits on someone: the customer (information requested), a vendor or another
    team (`reason`). SLA clocks pause for the reasons their policy names (by default: customer). A
    new `waiting_on_customer` with another reason while waiting switches the reason."""

    type: Literal["waiting_on_customer"] = "waiting_on_customer"


class WaitingEnded(_Waiting):
    """The wait started by `waiting_on_customer` is over (the customer answered, the vendor came
    back); paused SLA clocks resume. `reason`, when given, is informational."""

    type: Literal["waiting_ended"] = "waiting_ended"


class Resolved(EventBase):
    """The customer's issue was resolved on this contact (by an agent, or by the bot or self-service)."""

    type: Literal["resolved"] = "resolved"
    resolved_by: Literal[Author.AGENT, Author.BOT, Author.CUSTOMER] = Field(
        Author.AGENT, description="Who resolved it: `agent`, `bot`, or `customer` (web self-service)."
    )


class Reopened(EventBase):
    """A resolved contact was reopened (the customer wrote back on the same thread)."""

    type: Literal["reopened"] = "reopened"


class Abandoned(EventBase):
    """The customer left before reaching a human (hung up, closed the chat)."""

    type: Literal["abandoned"] = "abandoned"
    stage: Literal["ivr", "bot", "queue"] = Field(description="Where the customer was when they left.")


class Ended(EventBase):
    """The contact ended. For contacts an agent handled, `acw_seconds` is the after-contact work that followed."""

    type: Literal["ended"] = "ended"
    acw_seconds: float = Field(
        0.0, ge=0, le=86_400, description="After-contact (wrap-up) work in seconds, 0 when none."
    )


SURVEY_RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "ces": (1, 7), "nps": (0, 10)}


class SurveyResponse(EventBase):
    """A post-contact survey answer: CSAT 1-5, CES 1-7 (customer effort, 1 = very easy) or NPS 0-10."""

    type: Literal["survey_response"] = "survey_response"
    survey: Literal["csat", "ces", "nps"] = Field(description="Which survey question was answered.")
    score: int = Field(description="The score: CSAT 1-5, CES 1-7, NPS 0-10.")

    @model_validator(mode="after")
    def _score_in_range(self) -> SurveyResponse:
        low, high = SURVEY_RANGES[self.survey]
        if not low <= self.score <= high:
            raise ValueError(f"{self.survey} score must be between {low} and {high}, got {self.score}")
        return self


class IdentityLink(EventBase):
    """Two identifiers belong to one customer (a login on the web, a verified caller, a CRM merge)."""

    type: Literal["identity_link"] = "identity_link"
    left: Identifier = Field(description="One identifier.")
    right: Identifier = Field(description="The identifier it belongs together with.")


EVENT_MODELS: tuple[type[EventBase], ...] = (
    ContactStarted,
    IvrStep,
    IvrZeroOut,
    BotTurn,
    BotHandoff,
    Queued,
    AgentAssigned,
    FirstAgentReply,
    AgentReply,
    CustomerMessage,
    HoldStarted,
    HoldEnded,
    Transferred,
    WaitingOnCustomer,
    WaitingEnded,
    Resolved,
    Reopened,
    Abandoned,
    Ended,
    SurveyResponse,
    IdentityLink,
)

InteractionEvent = Annotated[
    ContactStarted
    | IvrStep
    | IvrZeroOut
    | BotTurn
    | BotHandoff
    | Queued
    | AgentAssigned
    | FirstAgentReply
    | AgentReply
    | CustomerMessage
    | HoldStarted
    | HoldEnded
    | Transferred
    | WaitingOnCustomer
    | WaitingEnded
    | Resolved
    | Reopened
    | Abandoned
    | Ended
    | SurveyResponse
    | IdentityLink,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[InteractionEvent] = TypeAdapter(InteractionEvent)
EVENT_TYPES: frozenset[str] = frozenset(m.model_fields["type"].default for m in EVENT_MODELS)
MODEL_BY_TYPE: dict[str, type[EventBase]] = {m.model_fields["type"].default: m for m in EVENT_MODELS}


def event_type(event: EventBase) -> str:
    value: str = getattr(event, "type")  # noqa: B009 - every concrete model has it
    return value


def to_json(event: EventBase) -> bytes:
    """Serialise an event to its canonical wire form (UTF-8 JSON, times as `...Z` with milliseconds)."""
    return event.model_dump_json(exclude_none=True).encode()


def utc_ms(value: datetime) -> datetime:
    """Truncate to milliseconds in UTC, as events carry time."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
