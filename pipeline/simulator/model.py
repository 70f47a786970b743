"""The discrete-event contact-centre model. Pure Python: no Kafka, no wall clock, no I/O.

`Simulation(config).run()` yields `(epoch_ms, event)` pairs in event-time order (ties in emission
order) and records the ground truth as it goes (`Simulation.contacts`, `Simulation.journeys`).

Everything happens at the simulation clock: a handler popped from the agenda at time `t` only emits
events stamped `t` and schedules later handlers, so the stream is in event-time order by
construction and stopping at any moment (the horizon) leaves a truth that matches what was emitted.

Waits and abandonment emerge from the agents staffed per queue and hour (FIFO within priority) and
each waiting customer's patience (Weibull); they are never drawn directly.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.events import models as ev
from pipeline.events.models import Author, Channel, CustomerIdentifiers, EventBase, Identifier, IdentifierKind
from pipeline.simulator import profiles, tickets
from pipeline.simulator.profiles import (
    ANONYMOUS_PHONE,
    ASYNC_CHANNELS,
    BOT_CHANNELS,
    CHANNEL_MIX,
    INTENTS,
    QUEUES,
    Intent,
    ProfileName,
    Queue,
)
from pipeline.simulator.truth import ContactTruth, JourneyTruth, Leg, Survey
from pipeline.times import from_ms

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# A new issue with the same intent for the same customer starts only after this much time since the
# previous journey's last resolution; recurrences come well within the 7 days a stitcher allows.
SAME_JOURNEY_WINDOW = 7 * DAY
NEW_ISSUE_GAP = SAME_JOURNEY_WINDOW + 12 * HOUR
RECURRENCE_MAX = SAME_JOURNEY_WINDOW - 12 * HOUR
ASYNC_CLOSE_AFTER = 24 * HOUR  # a resolved thread closes (ended) this long after resolution
ASYNC_GIVE_UP_AFTER = 48 * HOUR  # a thread waiting on a silent customer closes unresolved

SimEvent = tuple[int, EventBase]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. `start_ms` is epoch milliseconds (UTC)."""

    seed: int = 1
    start_ms: int = 0
    duration_ms: int | None = None
    max_contacts: int | None = None
    rate: float = 600.0  # new issues per hour at the daily peak, all channels together
    customers: int = 20_000
    profile: ProfileName = "daily"

    def __post_init__(self) -> None:
        if self.duration_ms is None and self.max_contacts is None:
            raise ValueError("bound the run with a duration, a number of contacts, or both")
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.customers < 1:
            raise ValueError("customers must be at least 1")

    @property
    def run_tag(self) -> str:
        """Short id of this run's options; part of every generated id, so runs don't collide."""
        text = repr(
            (self.seed, self.start_ms, self.duration_ms, self.max_contacts, self.rate, self.customers, self.profile)
        )
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def horizon_ms(self) -> int | None:
        return None if self.duration_ms is None else self.start_ms + self.duration_ms


# --------------------------------------------------------------------------------------------------
# People, journeys, agents


@dataclass(slots=True)
class Customer:
    key: str
    customer_id: str | None
    phone: str
    email: str
    social: str
    cookie: str
    segment: str
    priority: int
    anonymous: bool = False
    journeys: dict[str, Journey] = field(default_factory=dict)  # latest journey per intent


@dataclass(slots=True)
class Journey:
    truth: JourneyTruth
    customer: Customer
    intent: Intent
    active: bool = False  # a contact is in progress
    pending_return: bool = False  # a follow-up contact is scheduled
    last_resolved_at: int | None = None


@dataclass(slots=True)
class Agent:
    agent_id: str
    slot: int
    load: int = 0
    leaving: bool = False


@dataclass(slots=True)
class WorkItem:
    """A contact waiting for an agent: a live contact in queue, or an async message in the backlog."""

    contact: Contact
    kind: Literal["live", "first", "reply"]
    enqueued_at: int
    cancelled: bool = False


@dataclass(slots=True)
class Pool:
    queue: Queue
    short: str
    agents: list[Agent] = field(default_factory=list)
    target: int = 0
    waiting: list[tuple[int, int, WorkItem]] = field(default_factory=list)  # (-priority, seq, item)

    def free_agent(self) -> Agent | None:
        best: Agent | None = None
        for agent in self.agents:
            if agent.leaving or agent.load >= self.queue.concurrency:
                continue
            if best is None or agent.load < best.load:
                best = agent
                if agent.load == 0:
                    break
        return best


@dataclass(slots=True)
class Contact:
    truth: ContactTruth
    channel: Channel
    customer: Customer
    journey: Journey
    intent: Intent
    ids: CustomerIdentifiers
    queue: str | None = None
    agent: Agent | None = None
    agent_pool: Pool | None = None
    bot_id: str | None = None
    token: int = 0  # bumps invalidate pending timers (patience, close)
    rounds: int = 0
    replied: bool = False
    resolved: bool = False
    work_from: int = 0  # when the current agent started on it (talk / work accounting)
    leg_hold: int = 0  # hold milliseconds in the current agent leg


# --------------------------------------------------------------------------------------------------


class Simulation:
    """One run of the model. Iterate `run()` once; read the truth afterwards (or at any pause)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.tag = config.run_tag
        self.rng = random.Random(f"touchline-simulator/{config.seed}/{self.tag}")
        self.now = config.start_ms
        self.horizon = config.horizon_ms
        self.contacts: list[ContactTruth] = []
        self.journeys: list[JourneyTruth] = []
        self.events_emitted = 0
        self.stopped = False
        self.as_of_ms = config.start_ms  # the moment the truth describes (set when run() ends)
        self._agenda: list[tuple[int, int, Callable[..., object], tuple[Any, ...]]] = []
        self._seq = 0
        self._out: list[SimEvent] = []
        self._customers: dict[int, Customer] = {}
        self._anonymous = 0
        self._contact_seq = 0
        self._journey_seq = 0
        seed_hex = hashlib.sha256(str(config.seed).encode()).hexdigest()
        self._id_prefix = f"{self.tag}-{seed_hex[:4]}-{seed_hex[4:8]}"
        self._tickets = config.profile == "tickets"
        self._plan = {} if self._tickets else profiles.staffing_plan(config.rate, config.profile)
        self._pools: dict[str, Pool] = {q.name: Pool(q, q.name.replace(".", "-")) for q in QUEUES}
        self._intent_weights = {ch: [i.weight[ch] for i in INTENTS] for ch in Channel}
        mix = tickets.CHANNEL_MIX if self._tickets else CHANNEL_MIX
        self._peak_rate = {ch: config.rate * mix[ch] for ch in Channel if ch in mix}
        self._team_agents = {
            team: [Agent(a, n) for n, a in enumerate(tickets.agent_ids(team), 1)] for team in tickets.TEAMS
        }
        self._by_type: dict[type[EventBase], int] = {}

    # ------------------------------------------------------------------ engine

    def run(self) -> Iterator[SimEvent]:
        """Yield `(epoch_ms, event)` in event-time order until the horizon, the contact budget or
        the end of all activity."""
        for channel in self._peak_rate:
            self._schedule_arrival(channel)
        if not self._tickets:
            self._staffing_tick()
        agenda = self._agenda
        out = self._out
        while agenda and not self.stopped:
            when, _, handler, args = agenda[0]
            if self.horizon is not None and when >= self.horizon:
                self.as_of_ms = self.horizon
                break
            heapq.heappop(agenda)
            self.now = when
            handler(*args)
            if out:
                yield from out
                out.clear()
        else:
            self.as_of_ms = self.now
        self.stopped = True

    def events_by_type(self) -> dict[str, int]:
        """How many events of each type were emitted so far."""
        return {str(model.model_fields["type"].default): n for model, n in self._by_type.items()}

    def stop(self) -> None:
        """Stop after the current handler: the truth then describes the world up to `now`."""
        self.stopped = True

    def _at(self, when: int, handler: Callable[..., object], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._agenda, (when, self._seq, handler, args))

    def _ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))

    def _lognormal(self, mean: float, sigma: float = 0.6) -> float:
        """Lognormal with the given mean (seconds)."""
        mu = math.log(mean) - sigma * sigma / 2
        return self.rng.lognormvariate(mu, sigma)

    def _budget_left(self) -> bool:
        limit = self.config.max_contacts
        return limit is None or self._contact_seq < limit

    # ------------------------------------------------------------------ ids and emission

    def _event_id(self) -> str:
        # UUID-shaped: 8 hex of the run tag, 4 of the seed, then the event counter.
        n = self.events_emitted
        return f"{self._id_prefix}-{n >> 48:04x}-{n & 0xFFFFFFFFFFFF:012x}"

    def _emit(self, contact: Contact, model: type[EventBase], **fields: Any) -> None:
        fields.setdefault("agent_id", contact.agent.agent_id if contact.agent is not None else None)
        fields.setdefault("bot_id", contact.bot_id)
        fields.setdefault("customer", contact.ids)
        event = model(
            event_id=self._event_id(),
            occurred_at=from_ms(self.now),
            channel=contact.channel,
            contact_id=contact.truth.contact_id,
            queue=contact.queue,
            priority=contact.customer.priority,
            segment=contact.customer.segment,
            intent=contact.intent.name,
            **fields,
        )
        self.events_emitted += 1
        contact.truth.events += 1
        self._by_type[model] = self._by_type.get(model, 0) + 1
        self._out.append((self.now, event))

    # ------------------------------------------------------------------ staffing

    def _staffing_tick(self) -> None:
        hour = (self.now // HOUR) % 24
        for name, pool in self._pools.items():
            self._set_staff(pool, self._plan[name][hour])
        next_hour = (self.now // HOUR + 1) * HOUR
        busy = any(p.waiting for p in self._pools.values()) or any(
            a.load for p in self._pools.values() for a in p.agents
        )
        if self._agenda or busy:
            self._at(next_hour, self._staffing_tick)

    def _set_staff(self, pool: Pool, target: int) -> None:
        pool.target = target
        active = [a for a in pool.agents if not a.leaving]
        if len(active) < target:
            for agent in pool.agents:  # recall agents who were about to leave
                if agent.leaving and len(active) < target:
                    agent.leaving = False
                    active.append(agent)
            used = {a.slot for a in pool.agents}
            slot = 1
            while len(active) < target:
                while slot in used:
                    slot += 1
                agent = Agent(f"{pool.short}-{slot:03d}", slot)
                used.add(slot)
                pool.agents.append(agent)
                active.append(agent)
            pool.agents.sort(key=lambda a: a.slot)
            self._dispatch(pool)
        elif len(active) > target:
            surplus = len(active) - target
            for agent in sorted(active, key=lambda a: (a.load, -a.slot)):
                if surplus == 0:
                    break
                agent.leaving = True
                surplus -= 1
            pool.agents = [a for a in pool.agents if not (a.leaving and a.load == 0)]

    def _release(self, pool: Pool, agent: Agent) -> None:
        agent.load -= 1
        if agent.leaving and agent.load == 0:
            pool.agents.remove(agent)
        self._dispatch(pool)

    # ------------------------------------------------------------------ arrivals

    def _schedule_arrival(self, channel: Channel) -> None:
        if not self._budget_left():
            return
        peak_per_ms = self._peak_rate[channel] / HOUR
        gap = self.rng.expovariate(peak_per_ms)
        self._at(self.now + max(1, int(gap)), self._arrival, channel)

    def _arrival(self, channel: Channel) -> None:
        # Thinning: a candidate at the peak rate is kept with the profile's share at this moment.
        if self._tickets:
            factor = tickets.arrival_factor(channel, self.now / HOUR)
        else:
            factor = profiles.arrival_factor(channel, self.now / HOUR, self.config.profile)
        if self.rng.random() < factor and self._budget_left():
            self._new_issue(channel)
        self._schedule_arrival(channel)

    def _customer(self, index: int) -> Customer:
        customer = self._customers.get(index)
        if customer is None:
            rng = random.Random(f"customer/{self.config.seed}/{index}")
            first = rng.choice(profiles.FIRST_NAMES)
            last = rng.choice(profiles.LAST_NAMES)
            roll = rng.random()
            segment, priorities = profiles.SEGMENTS[-1][0], profiles.SEGMENTS[-1][2]
            for name, share, probs in profiles.SEGMENTS:
                if roll < share:
                    segment, priorities = name, probs
                    break
                roll -= share
            priority = rng.choices((0, 1, 2), weights=priorities)[0]
            customer = Customer(
                key=f"cust-{index:07d}",
                customer_id=f"C{10_000_000 + index}",
                phone=f"+1555{index:07d}",
                email=f"{first}.{last}{index}@example.com",
                social=f"twitter:@{first}_{last}{index}",
                cookie=f"ck-{rng.getrandbits(64):016x}",
                segment=segment,
                priority=priority,
            )
            self._customers[index] = customer
        return customer

    def _anonymous_customer(self) -> Customer:
        self._anonymous += 1
        return Customer(
            key=f"anon-{self.tag}-{self._anonymous:07d}",
            customer_id=None,
            phone=ANONYMOUS_PHONE,
            email="",
            social="",
            cookie="",
            segment="retail",
            priority=0,
            anonymous=True,
        )

    def _blocked(self, customer: Customer, intent: Intent) -> bool:
        """True when a contact about `intent` would belong to the customer's existing journey."""
        journey = customer.journeys.get(intent.name)
        if journey is None:
            return False
        if journey.active or journey.pending_return or journey.truth.resolved_at is None:
            return True
        return journey.last_resolved_at is not None and self.now - journey.last_resolved_at <= NEW_ISSUE_GAP

    def _new_issue(self, channel: Channel) -> None:
        rng = self.rng
        if channel == Channel.VOICE and rng.random() < profiles.ANONYMOUS_SHARE_VOICE:
            customer = self._anonymous_customer()
            intent = rng.choices(INTENTS, weights=self._intent_weights[channel])[0]
        else:
            for _ in range(6):
                customer = self._customer(rng.randrange(self.config.customers))
                intent = rng.choices(INTENTS, weights=self._intent_weights[channel])[0]
                if not self._blocked(customer, intent):
                    break
            else:
                return
        self._journey_seq += 1
        truth = JourneyTruth(
            journey_id=f"j-{self.tag}-{self._journey_seq:08d}",
            customer_key=customer.key,
            customer_id=customer.customer_id,
            intent=intent.name,
            started_at=self.now,
        )
        self.journeys.append(truth)
        journey = Journey(truth, customer, intent)
        if not customer.anonymous:
            customer.journeys[intent.name] = journey
        self._start_contact(journey, channel)

    def _return_contact(self, journey: Journey) -> bool:
        """The customer comes back about the same issue (after a failed contact or a recurrence)."""
        journey.pending_return = False
        if not self._budget_left():
            return False
        last = journey.truth.contacts[-1].channel
        if self.rng.random() < 0.45:
            channel = Channel(last)
        else:
            choices = [c for c in Channel if c.value != last]
            channel = self.rng.choices(choices, weights=[CHANNEL_MIX[c] for c in choices])[0]
        self._start_contact(journey, channel)
        return True

    # ------------------------------------------------------------------ contacts

    def _start_contact(self, journey: Journey, channel: Channel) -> None:
        self._contact_seq += 1
        customer = journey.customer
        rng = self.rng
        link: tuple[Identifier, Identifier] | None = None
        on_event = False
        cid = customer.customer_id
        if customer.anonymous:
            ids = CustomerIdentifiers(phone=customer.phone)
            identity = "none"
        else:
            assert cid is not None
            own: Identifier
            if channel == Channel.VOICE:
                own = Identifier(kind=IdentifierKind.PHONE, value=customer.phone)
                on_event = rng.random() < 0.35  # caller line matched to the CRM
            elif channel in BOT_CHANNELS:
                own = Identifier(kind=IdentifierKind.WEB_COOKIE, value=customer.cookie)
                on_event = rng.random() < 0.55  # logged in
            elif channel == Channel.EMAIL:
                own = Identifier(kind=IdentifierKind.EMAIL, value=customer.email)
                on_event = rng.random() < 0.4  # sender matched to the CRM
            elif channel == Channel.SMS:
                own = Identifier(kind=IdentifierKind.PHONE, value=customer.phone)
                on_event = rng.random() < 0.5
            else:
                own = Identifier(kind=IdentifierKind.SOCIAL_HANDLE, value=customer.social)
            base = {own.kind.value: own.value}
            if on_event:
                ids = CustomerIdentifiers(customer_id=cid, **base)
                identity = "on_event"
                if channel in BOT_CHANNELS:  # a web login also links the cookie explicitly
                    link = (own, Identifier(kind=IdentifierKind.CUSTOMER_ID, value=cid))
            else:
                ids = CustomerIdentifiers(**base)
                identity = "identity_link"
                link = (own, Identifier(kind=IdentifierKind.CUSTOMER_ID, value=cid))
        truth = ContactTruth(
            contact_id=f"c-{self.tag}-{self._contact_seq:08d}",
            channel=channel.value,
            customer_key=customer.key,
            customer_id=cid,
            anonymous=customer.anonymous,
            journey_id=journey.truth.journey_id,
            intent=journey.intent.name,
            priority=customer.priority,
            segment=customer.segment,
            started_at=self.now,
            identity=identity,
        )
        self.contacts.append(truth)
        journey.truth.contacts.append(truth)
        journey.active = True
        contact = Contact(truth, channel, customer, journey, journey.intent, ids)
        if channel in BOT_CHANNELS:
            contact.bot_id = profiles.BOT_IDS[channel]
            truth.bot_involved = True
        self._emit(contact, ev.ContactStarted)
        if link is not None:
            self._emit(contact, ev.IdentityLink, left=link[0], right=link[1])
            if not on_event and channel == Channel.VOICE:
                # verified in the IVR: later events carry the customer id too
                contact.ids = CustomerIdentifiers(phone=customer.phone, customer_id=cid)
        if channel == Channel.VOICE:
            self._at(self.now + self._ms(rng.uniform(2, 5)), self._ivr_step, contact, 0)
        elif channel in BOT_CHANNELS:
            self._at(self.now + self._ms(rng.uniform(3, 15)), self._bot_turn, contact, 0, rng.randint(2, 8))
        elif self._tickets:
            self._ticket_queue(contact, tickets.first_team(contact.intent.name, rng))
        else:
            self._enqueue(contact, profiles.queue_for(channel, contact.intent), "first")

    def _end(self, contact: Contact, acw: float = 0.0) -> None:
        """Emit `ended` and decide what the customer does next about the issue."""
        contact.truth.ended_at = self.now
        contact.truth.acw_seconds = acw
        self._emit(contact, ev.Ended, acw_seconds=acw)
        contact.token += 1
        journey = contact.journey
        journey.active = False
        if contact.customer.anonymous or self._tickets:  # a ticket's follow-ups are its reopens
            return
        rng = self.rng
        if contact.truth.resolved_at is not None:
            journey.last_resolved_at = contact.truth.resolved_at
            if rng.random() < 0.06:  # the problem comes back within the week: same journey
                resolved = contact.truth.resolved_at
                earliest = max(self.now, resolved) + HOUR
                latest = resolved + RECURRENCE_MAX
                if earliest < latest:
                    journey.pending_return = True
                    self._at(int(rng.uniform(earliest, latest)), self._recurrence, journey)
            return
        stage = contact.truth.abandoned_stage
        chance, median = {
            "ivr": (0.55, 20 * MINUTE),
            "queue": (0.7, 25 * MINUTE),
            "bot": (0.5, 2 * HOUR),
        }.get(stage or "", (0.65, 20 * HOUR))
        if rng.random() < chance:
            delay = int(median * rng.lognormvariate(0, 0.9))
            delay = min(max(delay, 2 * MINUTE), 4 * DAY)
            journey.pending_return = True
            self._at(self.now + delay, self._return_contact, journey)

    def _recurrence(self, journey: Journey) -> None:
        if self._return_contact(journey):
            journey.truth.reopened = True

    def _resolve(self, contact: Contact, by: Author) -> None:
        contact.truth.resolved_at = self.now
        contact.truth.resolved_by = by.value
        contact.truth.resolutions.append(self.now)
        contact.resolved = True
        self._emit(contact, ev.Resolved, resolved_by=by)

    def _abandon(self, contact: Contact, stage: Literal["ivr", "bot", "queue"]) -> None:
        contact.truth.abandoned_at = self.now
        contact.truth.abandoned_stage = stage
        self._emit(contact, ev.Abandoned, stage=stage)
        self._end(contact)

    # ------------------------------------------------------------------ voice: IVR

    def _ivr_step(self, contact: Contact, depth: int) -> None:
        rng = self.rng
        intent = contact.intent
        if depth == 0:
            node = "main"
        elif depth == 1:
            node = f"main>{intent.ivr_menu}"
        else:
            option = rng.choice(intent.menu_options) if intent.menu_options else "other"
            node = f"main>{intent.ivr_menu}>{option}"
        contact.truth.ivr_nodes.append(node)
        self._emit(contact, ev.IvrStep, ivr_node=node)
        if depth > 0 and rng.random() < 0.03:
            self._at(self.now + self._ms(rng.uniform(2, 12)), self._abandon, contact, "ivr")
            return
        if depth > 0 and rng.random() < 0.05:
            self._at(self.now + self._ms(rng.uniform(1, 4)), self._zero_out, contact, node)
            return
        last = depth >= (2 if intent.menu_options else 1)
        if not last:
            self._at(self.now + self._ms(rng.uniform(8, 25)), self._ivr_step, contact, depth + 1)
        elif rng.random() < intent.self_service:
            self._at(self.now + self._ms(rng.uniform(20, 90)), self._self_served, contact)
        else:
            target = profiles.queue_for(Channel.VOICE, intent)
            self._at(self.now + self._ms(rng.uniform(1, 3)), self._enqueue, contact, target, "live")

    def _zero_out(self, contact: Contact, node: str) -> None:
        contact.truth.ivr_zero_out = True
        self._emit(contact, ev.IvrZeroOut, ivr_node=node)
        self._enqueue(contact, "voice.general", "live")

    def _self_served(self, contact: Contact) -> None:
        self._resolve(contact, Author.CUSTOMER)
        self._end(contact)

    # ------------------------------------------------------------------ chat and web: the bot

    def _bot_turn(self, contact: Contact, turn: int, turns: int) -> None:
        rng = self.rng
        author = Author.CUSTOMER if turn % 2 == 0 else Author.BOT
        self._emit(contact, ev.BotTurn, author=author)
        if turn + 1 < turns:
            self._at(self.now + self._ms(rng.uniform(3, 20)), self._bot_turn, contact, turn + 1, turns)
            return
        roll = rng.random()
        containment = contact.intent.bot_containment * (1.15 if contact.channel == Channel.WEB else 1.0)
        delay = self.now + self._ms(rng.uniform(2, 10))
        if roll < containment:
            self._at(delay, self._bot_contained, contact)
        elif roll < containment + 0.12:
            self._at(delay + self._ms(rng.uniform(10, 60)), self._abandon, contact, "bot")
        else:
            self._at(delay, self._bot_handoff, contact)

    def _bot_contained(self, contact: Contact) -> None:
        contact.truth.bot_contained = True
        self._resolve(contact, Author.CUSTOMER if contact.channel == Channel.WEB else Author.BOT)
        self._end(contact)
        if self.rng.random() < 0.2:
            self._at(self.now + self._ms(self.rng.uniform(5, 60)), self._survey, contact)

    def _bot_handoff(self, contact: Contact) -> None:
        contact.truth.bot_handoff_at = self.now
        self._emit(contact, ev.BotHandoff, reason=self.rng.choice(profiles.HANDOFF_REASONS))
        contact.bot_id = None
        self._enqueue(contact, profiles.queue_for(contact.channel, contact.intent), "live")

    # ------------------------------------------------------------------ queues

    def _enqueue(self, contact: Contact, queue_name: str, kind: Literal["live", "first", "reply"]) -> None:
        pool = self._pools[queue_name]
        item = WorkItem(contact, kind, self.now)
        if kind != "reply":
            contact.queue = queue_name
            contact.truth.legs.append(Leg(queue_name, self.now))
            self._emit(contact, ev.Queued)
        self._seq += 1
        heapq.heappush(pool.waiting, (-contact.customer.priority, self._seq, item))
        if kind == "live" and pool.queue.patience_mean > 0:
            shape = pool.queue.patience_shape
            scale = pool.queue.patience_mean / math.gamma(1 + 1 / shape)
            patience = self.rng.weibullvariate(scale, shape) * (1.0 + 0.25 * contact.customer.priority)
            contact.token += 1
            self._at(self.now + self._ms(patience), self._patience_over, item, contact.token)
        self._dispatch(pool)

    def _patience_over(self, item: WorkItem, token: int) -> None:
        contact = item.contact
        if item.cancelled or token != contact.token:
            return
        item.cancelled = True
        contact.truth.legs[-1].abandoned_at = self.now
        self._abandon(contact, "queue")

    def _dispatch(self, pool: Pool) -> None:
        waiting = pool.waiting
        while waiting:
            agent = pool.free_agent()
            if agent is None:
                return
            item = heapq.heappop(waiting)[2]
            if item.cancelled:
                continue
            item.cancelled = True
            agent.load += 1
            contact = item.contact
            contact.token += 1  # patience no longer runs
            if item.kind == "live":
                self._answer_live(contact, pool, agent)
            else:
                self._work_message(contact, pool, agent, item)

    # ------------------------------------------------------------------ live contacts with an agent

    def _answer_live(self, contact: Contact, pool: Pool, agent: Agent) -> None:
        rng = self.rng
        contact.agent = agent
        contact.agent_pool = pool
        leg = contact.truth.legs[-1]
        leg.answered_at = self.now
        leg.agent_id = agent.agent_id
        self._emit(contact, ev.AgentAssigned)
        answered = self.now
        contact.work_from = answered
        contact.leg_hold = 0
        transfer_to = None
        if contact.truth.transfers < 2 and rng.random() < profiles.TRANSFER_PROBABILITY.get(pool.queue.name, 0):
            transfer_to = profiles.transfer_target(pool.queue.name, contact.intent)
        if contact.channel == Channel.VOICE:
            greet = answered + self._ms(rng.uniform(2, 6))
            self._at(greet, self._greet, contact)
            talk = self._lognormal(contact.intent.talk_mean, 0.55)
            if transfer_to is not None:
                talk *= rng.uniform(0.2, 0.5)
            talk_ms = max(self._ms(talk), greet - answered + 2 * SECOND)
            hold_ms = 0
            if rng.random() < 0.22:
                hold_ms = self._ms(self._lognormal(75, 0.7))
                hold_at = answered + int(talk_ms * rng.uniform(0.3, 0.7))
                hold_at = max(hold_at, greet + 1)
                self._at(hold_at, self._hold, contact, True)
                self._at(hold_at + hold_ms, self._hold, contact, False)
            finish = answered + talk_ms + hold_ms
        else:
            first = answered + self._ms(rng.uniform(8, 40))
            self._at(first, self._greet, contact)
            t = first
            lines = rng.randint(1, 5) if transfer_to is None else rng.randint(0, 2)
            for _ in range(lines):
                t += self._ms(self._lognormal(pool.queue.work_mean, 0.7))
                self._at(t, self._chat_line, contact, Author.CUSTOMER)
                t += self._ms(self._lognormal(pool.queue.work_mean, 0.7))
                self._at(t, self._chat_line, contact, Author.AGENT)
            finish = t + self._ms(rng.uniform(10, 60))
        if transfer_to is not None:
            self._at(finish, self._transfer, contact, transfer_to)
        else:
            self._at(finish, self._finish_live, contact)

    def _greet(self, contact: Contact) -> None:
        if contact.replied:
            contact.truth.agent_replies.append(self.now)
            self._emit(contact, ev.AgentReply)
            return
        contact.replied = True
        contact.truth.first_response_at = self.now
        contact.truth.agent_replies.append(self.now)
        self._emit(contact, ev.FirstAgentReply)

    def _customer_message(self, contact: Contact) -> None:
        contact.truth.customer_messages.append(self.now)
        self._emit(contact, ev.CustomerMessage)

    def _chat_line(self, contact: Contact, author: Author) -> None:
        if author == Author.CUSTOMER:
            self._customer_message(contact)
        else:
            contact.truth.agent_replies.append(self.now)
            self._emit(contact, ev.AgentReply)

    def _hold(self, contact: Contact, start: bool) -> None:
        if start:
            contact.leg_hold = -self.now
            self._emit(contact, ev.HoldStarted)
        else:
            contact.leg_hold += self.now
            contact.truth.hold_ms += contact.leg_hold
            self._emit(contact, ev.HoldEnded)

    def _account_talk(self, contact: Contact) -> None:
        contact.truth.talk_ms += self.now - contact.work_from - contact.leg_hold

    def _transfer(self, contact: Contact, to_queue: str) -> None:
        contact.truth.transfers += 1
        leg = contact.truth.legs[-1]
        leg.transferred_at = self.now
        leg.to_queue = to_queue
        self._account_talk(contact)
        self._emit(contact, ev.Transferred, to_queue=to_queue)
        pool, agent = contact.agent_pool, contact.agent
        contact.agent = None
        contact.agent_pool = None
        assert pool is not None and agent is not None
        self._release(pool, agent)
        self._enqueue(contact, to_queue, "live")

    def _finish_live(self, contact: Contact) -> None:
        rng = self.rng
        pool, agent = contact.agent_pool, contact.agent
        assert pool is not None and agent is not None
        self._account_talk(contact)
        if rng.random() < contact.intent.resolve:
            self._resolve(contact, Author.AGENT)
        acw = round(self._lognormal(pool.queue.acw_mean, 0.5), 3) if pool.queue.acw_mean else 0.0
        self._end(contact, acw)
        contact.agent = None
        self._at(self.now + self._ms(acw), self._release, pool, agent)
        chance = 0.35 if contact.channel == Channel.VOICE else 0.45
        if rng.random() < chance:
            self._at(self.now + self._ms(rng.uniform(20, 180)), self._survey, contact)

    # ------------------------------------------------------------------ asynchronous threads

    def _work_message(self, contact: Contact, pool: Pool, agent: Agent, item: WorkItem) -> None:
        if item.kind == "first":
            leg = contact.truth.legs[-1]
            leg.answered_at = self.now
            leg.agent_id = agent.agent_id
            contact.agent = agent
            self._emit(contact, ev.AgentAssigned)
        work = self._ms(self._lognormal(pool.queue.work_mean, 0.6))
        contact.work_from = self.now
        self._at(self.now + work, self._async_reply, contact, pool, agent)

    def _async_reply(self, contact: Contact, pool: Pool, agent: Agent) -> None:
        rng = self.rng
        contact.agent = agent
        contact.rounds += 1
        contact.truth.talk_ms += self.now - contact.work_from
        self._greet(contact)
        self._release(pool, agent)
        resolve_chance = contact.intent.resolve * (0.5 if contact.rounds == 1 else 0.8)
        roll = rng.random()
        if roll < resolve_chance or (contact.rounds >= 4 and roll < 0.9):
            self._resolve(contact, Author.AGENT)
            contact.agent = None
            contact.token += 1
            self._at(self.now + ASYNC_CLOSE_AFTER, self._close_thread, contact, contact.token)
            if rng.random() < 0.08:
                self._at(self.now + int(rng.uniform(HOUR, 20 * HOUR)), self._reopen, contact, contact.token)
            if rng.random() < 0.2:
                self._at(self.now + int(rng.uniform(10 * MINUTE, 6 * HOUR)), self._survey, contact)
            return
        contact.agent = None
        pace = {Channel.SMS: 8 * MINUTE, Channel.SOCIAL: 50 * MINUTE}.get(contact.channel, 3 * HOUR)
        contact.token += 1
        if contact.rounds >= 4:
            self._at(self.now + HOUR, self._close_thread, contact, contact.token)
        elif rng.random() < 0.6:
            contact.truth.waiting.append([self.now, None])
            contact.truth.waiting_reasons.append("customer")
            self._emit(contact, ev.WaitingOnCustomer)
            if rng.random() < 0.85:
                delay = int(pace * rng.lognormvariate(0, 0.8))
                self._at(
                    self.now + min(delay, ASYNC_GIVE_UP_AFTER - MINUTE), self._customer_writes, contact, contact.token
                )
            self._at(self.now + ASYNC_GIVE_UP_AFTER, self._close_thread, contact, contact.token)
        else:
            delay = int(pace * rng.lognormvariate(-0.3, 0.8))
            self._at(self.now + max(delay, MINUTE), self._customer_writes, contact, contact.token)

    def _customer_answers(self, contact: Contact, token: int) -> bool:
        """The customer writes on the thread (ending a wait); False when the timer is stale."""
        if token != contact.token:
            return False
        contact.token += 1
        if contact.truth.waiting and contact.truth.waiting[-1][1] is None:
            contact.truth.waiting[-1][1] = self.now
            if self._tickets:  # ticket waits carry their reason (event schema version 2)
                self._emit(contact, ev.WaitingEnded, schema_version=2, reason=contact.truth.waiting_reasons[-1])
            else:
                self._emit(contact, ev.WaitingEnded)
        self._customer_message(contact)
        return True

    def _customer_writes(self, contact: Contact, token: int) -> None:
        if self._customer_answers(contact, token):
            self._queue_reply(contact)

    def _queue_reply(self, contact: Contact) -> None:
        """The customer's message goes back into the contact's queue (or its channel's queue for its intent)."""
        self._enqueue(contact, contact.queue or profiles.queue_for(contact.channel, contact.intent), "reply")

    def _customer_reopens(self, contact: Contact, token: int) -> bool:
        """The customer writes back on a resolved thread; False when the timer is stale."""
        if token != contact.token:
            return False
        contact.token += 1
        contact.resolved = False
        contact.truth.resolved_at = None
        contact.truth.resolved_by = None
        contact.truth.reopened_at.append(self.now)
        contact.journey.truth.reopened = True
        self._emit(contact, ev.Reopened)
        self._customer_message(contact)
        return True

    def _reopen(self, contact: Contact, token: int) -> None:
        if self._customer_reopens(contact, token):
            self._queue_reply(contact)

    def _close_thread(self, contact: Contact, token: int) -> None:
        if token != contact.token:
            return
        self._end(contact)

    # ------------------------------------------------------------------ tickets (profile "tickets")
    # Every handler emits its events in the order a ticketing system would (transferred before
    # queued, a reply before the wait or resolution it leads to, waiting_ended before the customer's
    # message), and separate steps are separate handlers at later, random instants.

    def _work(self, mean_seconds: float, sigma: float = 0.9) -> int:
        """When work of about `mean_seconds` (business time) started now is done."""
        return tickets.add_business(self.now, self._ms(self._lognormal(mean_seconds, sigma)))

    def _ticket_queue(self, contact: Contact, team: str) -> None:
        contact.queue = team
        contact.agent = None
        contact.truth.legs.append(Leg(team, self.now))
        self._emit(contact, ev.Queued)
        contact.token += 1
        pickup = self._work(tickets.PICKUP_MEAN.get(contact.customer.priority, tickets.PICKUP_MEAN[0]), 1.0)
        self._at(pickup, self._ticket_assign, contact, contact.token)

    def _ticket_assign(self, contact: Contact, token: int) -> None:
        if token != contact.token:
            return
        rng = self.rng
        team = contact.queue or tickets.SERVICEDESK
        agent = rng.choice(self._team_agents[team])
        contact.agent = agent
        leg = contact.truth.legs[-1]
        leg.answered_at = self.now
        leg.agent_id = agent.agent_id
        self._emit(contact, ev.AgentAssigned)
        contact.token += 1
        triage = (
            team == tickets.SERVICEDESK
            and tickets.TEAM_OF_INTENT[contact.intent.name] != team
            and contact.truth.transfers < tickets.MAX_TRANSFERS
            and rng.random() < tickets.TRIAGE_TRANSFER
        )
        if triage:
            self._at(self._work(20 * 60.0), self._ticket_transfer, contact, contact.token)
        else:
            self._at(self._work(tickets.WORK_MEAN), self._ticket_reply, contact, contact.token)

    def _ticket_transfer(self, contact: Contact, token: int) -> None:
        if token != contact.token:
            return
        team = contact.queue or tickets.SERVICEDESK
        to_team = tickets.transfer_target(team, contact.intent.name, self.rng)
        contact.truth.transfers += 1
        leg = contact.truth.legs[-1]
        leg.transferred_at = self.now
        leg.to_queue = to_team
        self._emit(contact, ev.Transferred, to_queue=to_team)
        self._ticket_queue(contact, to_team)

    def _ticket_reply(self, contact: Contact, token: int) -> None:
        if token != contact.token:
            return
        rng = self.rng
        contact.rounds += 1
        self._greet(contact)
        contact.token += 1
        token = contact.token
        if rng.random() < tickets.resolve_chance(contact.rounds):
            self._ticket_resolve(contact)
            return
        roll = rng.random()
        action = "customer_writes"
        for name, share in tickets.AFTER_REPLY:
            if roll < share:
                action = name
                break
            roll -= share
        if action == "transfer" and contact.truth.transfers >= tickets.MAX_TRANSFERS:
            action = "customer_writes"
        if action == "transfer":
            self._at(self._work(15 * 60.0), self._ticket_transfer, contact, token)
        elif action == "customer_writes":
            self._at(self.now + self._customer_delay(8 * HOUR), self._ticket_customer_writes, contact, token)
        else:
            reason = action.removeprefix("wait_")
            contact.truth.waiting.append([self.now, None])
            contact.truth.waiting_reasons.append(reason)
            self._emit(contact, ev.WaitingOnCustomer, schema_version=2, reason=reason)
            if reason == "customer":
                roll = rng.random()
                if roll < 0.87:
                    self._at(self.now + self._customer_delay(20 * HOUR), self._ticket_customer_writes, contact, token)
                elif roll < 0.94:  # answers after more than a month of silence
                    later = int(rng.uniform(31 * DAY, 45 * DAY))
                    self._at(self.now + later, self._ticket_customer_writes, contact, token)
                self._at(self.now + tickets.CUSTOMER_SILENT_CLOSE, self._close_thread, contact, token)
            elif reason == "vendor":
                if rng.random() < 0.85:
                    done = self._work(self._lognormal(2 * 86_400.0, 0.8), 0.3)
                else:  # a vendor that takes one to two months
                    done = tickets.add_business(self.now + int(rng.uniform(30 * DAY, 50 * DAY)), MINUTE)
                self._at(done, self._ticket_wait_over, contact, token)
            else:
                self._at(self._work(6 * 3600.0), self._ticket_wait_over, contact, token)

    def _customer_delay(self, mean_ms: float) -> int:
        """How long a customer takes to write back; the answer slips past a weekend half of the time."""
        delay = int(self._lognormal(mean_ms / 1000, 1.0) * 1000)
        weekday = ((self.now + delay) // DAY + 3) % 7
        if weekday >= 5 and self.rng.random() < 0.85:
            delay += (7 - weekday) * DAY
        return max(delay, MINUTE)

    def _ticket_customer_writes(self, contact: Contact, token: int) -> None:
        if self._customer_answers(contact, token):
            self._at(self._work(tickets.WORK_MEAN), self._ticket_reply, contact, contact.token)

    def _ticket_wait_over(self, contact: Contact, token: int) -> None:
        """The vendor or the other team came back (logged by the agent): the agent carries on."""
        if token != contact.token:
            return
        contact.token += 1
        contact.truth.waiting[-1][1] = self.now
        self._emit(contact, ev.WaitingEnded, schema_version=2, reason=contact.truth.waiting_reasons[-1])
        self._at(self._work(tickets.WORK_MEAN), self._ticket_reply, contact, contact.token)

    def _ticket_resolve(self, contact: Contact) -> None:
        rng = self.rng
        self._resolve(contact, Author.AGENT)
        token = contact.token
        self._at(self.now + tickets.RESOLVE_AFTER_DAYS * DAY, self._close_thread, contact, token)
        reopens = len(contact.truth.reopened_at)
        chance = tickets.REOPEN_FIRST if reopens == 0 else tickets.REOPEN_AGAIN
        if reopens < tickets.MAX_REOPENS and rng.random() < chance:
            later = int(rng.uniform(2 * HOUR, (tickets.RESOLVE_AFTER_DAYS - 1) * DAY))
            self._at(self.now + later, self._ticket_reopen, contact, token)
        if rng.random() < 0.2:
            self._at(self.now + int(rng.uniform(10 * MINUTE, 2 * DAY)), self._survey, contact)

    def _ticket_reopen(self, contact: Contact, token: int) -> None:
        if self._customer_reopens(contact, token):
            self._at(self._work(tickets.WORK_MEAN), self._ticket_reply, contact, contact.token)

    # ------------------------------------------------------------------ surveys

    def _survey(self, contact: Contact) -> None:
        rng = self.rng
        truth = contact.truth
        leg = next((leg for leg in truth.legs if leg.answered_at is not None), None)
        wait = (leg.answered_at - leg.queued_at) / 1000 if leg is not None and leg.answered_at is not None else 0.0
        if truth.channel in {c.value for c in ASYNC_CHANNELS} and truth.first_response_at is not None:
            wait = (truth.first_response_at - truth.started_at) / 1000 / 30  # hours feel like minutes
        resolved = truth.resolved_at is not None
        penalty = min(wait / 240, 1.5) + 0.5 * truth.transfers
        scores = {
            "csat": round(4.5 - (0 if resolved else 1.7) - penalty + rng.gauss(0, 0.7)),
            "ces": round(2.0 + (0 if resolved else 2.0) + 1.2 * penalty + rng.gauss(0, 0.9)),
            "nps": round(8.8 - (0 if resolved else 3.0) - 2 * penalty + rng.gauss(0, 1.5)),
        }
        chances = {"csat": 0.9, "ces": 0.6, "nps": 0.5}
        for survey, chance in chances.items():
            if rng.random() >= chance:
                continue
            low, high = SURVEY_BOUNDS[survey]
            score = min(high, max(low, scores[survey]))
            truth.surveys.append(Survey(survey, score, self.now))
            self._emit(contact, ev.SurveyResponse, survey=survey, score=score)


SURVEY_BOUNDS: dict[str, tuple[int, int]] = {"csat": (1, 5), "ces": (1, 7), "nps": (0, 10)}
