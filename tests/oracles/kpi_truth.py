"""KPI oracle: the `kpi_minute` rows a run must produce, from the simulator's truth contact records.

Written from the rules documented in `pipeline/kpi/contributions.py` and `pipeline/kpi/facts.py`
(module docstrings) without importing them. Every measure lands in the 1-minute EVENT-time window
(`t - t mod 60 000` ms) of the instant that completes it, under (channel, queue, priority) where
queue/priority are those of the queue leg in force at that instant (the latest leg opened at or
before it), or queue "" before any leg. Priority is the contact's (the simulator never changes it).

What the truth records carry, and how each column is derived (all times epoch ms, durations
`ms / 1000.0` exactly as the pipeline computes them, so float values compare exactly):

Compared (`COMPARED_COUNTS`, `COMPARED_LISTS`, `COMPARED_STATE`):
  offered             legs[].queued_at, under the leg's queue.
  answered, answer_waits, answered_within_sl
                      legs[].answered_at; wait = answered - queued; within SL when wait <= T(channel).
  abandoned, short_abandoned
                      legs[].abandoned_at (the model sets it only for queue abandons; IVR/bot
                      abandons happen before any leg, so the pipeline does not count them either);
                      short when wait < 5 s.
  removed_within_sl   answered or abandoned legs with wait <= T, at the removal instant.
  transfers           legs[].transferred_at, under the leg transferred OUT of (the next leg is
                      queued in the same millisecond but after the `transferred` event).
  bot_handoffs        bot_handoff_at, queue "" (the model queues the contact right after it).
  bot_contained       contact level, at completion (first of bot resolution and `ended`): the bot
                      was involved and there was no handoff, queued leg, answer or abandon at or
                      before it. ASSUMPTION: the truth has no bot-turn times; `bot_involved` stands
                      in for "a bot_turn at or before completion" (the model's first bot turn comes
                      seconds after the start, before anything else). Cross-checked against the
                      model's own `bot_contained` flag (see `Oracle.problems`).
  ivr_zero_outs       ASSUMPTION: the truth has a flag, not a time. The model emits `ivr_zero_out`
                      and queues the caller in the same handler, so the time is legs[0].queued_at;
                      queue "" (no leg yet when the zero-out event is sorted before `queued`).
  resolved            resolutions[] and reopened_at[] replayed in time order: a resolution counts
                      when the contact is not resolved; a reopen un-resolves it.
  first_contact_resolved
                      at ended_at: a counted resolution at or before it and no counted reopen.
  csat_*, ces_*, nps_*  surveys[] at their time: CSAT satisfied 4-5; CES sum; NPS promoters 9-10,
                      detractors 0-6.
  first_response_times
                      first_response_at - started_at - overlap with waiting_on_customer spans.
  next_response_times after the first agent reply, the first unanswered customer message starts a
                      clock, the next agent reply stops it (minus waiting overlap); from
                      agent_replies[], customer_messages[], waiting_on_customer[].
  handle_times        the PIPELINE's definition, recomputed from truth timestamps: talk = first
                      answer .. ended_at minus the queue waits of legs queued after the first answer
                      (hold inside talk), + acw_seconds; only for answered, ended contacts. The
                      simulator's own `handle_seconds` is NOT used as the value: for email/sms/
                      social it counts agent work time, while the pipeline defines talk as wall-clock
                      time from assignment to close. For voice/chat/web both definitions coincide
                      and are cross-checked (see `Oracle.problems`).
  backlog_end, oldest_wait_end
                      legs waiting at each window end instant E (queued < E, not removed before E;
                      removal = answer, abandon, transfer out or `ended` while waiting), summed per
                      (channel, queue, priority); oldest = (E - earliest queued) / 1000.
  sl_threshold_seconds, short_abandon_seconds
                      configuration echoed on every row (defaults of KpiConfig, restated here).

Derived KPIs (`derived_kpis`) are computed from these with the documented formulas; percentiles are
ClickHouse `quantileExact` (sorted element int(q * n), clamped), implemented here.

Not compared (and why):
  sl_headline, service_level   configuration choice (genesys/connect per channel), not truth; the
                               oracle evaluates `service_level` with the row's own headline.
  partial_rows, final, version, emitted_at
                               pipeline bookkeeping (final is asserted separately by the tests).
  Ties: when a customer message and an agent reply, or a resolution and a reopen, share the same
  millisecond, the truth cannot tell their event order; such contacts are reported in
  `Oracle.problems` (none occur in the seeds used by the tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.oracles import contact_records, iso, ms_of

WINDOW_MS = 60_000
# KpiConfig defaults (pipeline/kpi/settings.py), restated: service-level target T per channel.
SL_THRESHOLDS: dict[str, float] = {
    "voice": 20.0,
    "chat": 60.0,
    "web": 60.0,
    "sms": 900.0,
    "social": 3600.0,
    "email": 86400.0,
}
DEFAULT_SL_THRESHOLD = 60.0
SHORT_ABANDON_SECONDS = 5.0

COUNT_NAMES: tuple[str, ...] = (
    "offered",
    "answered",
    "answered_within_sl",
    "abandoned",
    "short_abandoned",
    "removed_within_sl",
    "transfers",
    "bot_contained",
    "bot_handoffs",
    "ivr_zero_outs",
    "resolved",
    "first_contact_resolved",
    "csat_responses",
    "csat_satisfied",
    "ces_responses",
    "ces_score_sum",
    "nps_responses",
    "nps_promoters",
    "nps_detractors",
)
LIST_NAMES: tuple[str, ...] = ("answer_waits", "first_response_times", "next_response_times", "handle_times")
STATE_NAMES: tuple[str, ...] = ("backlog_end", "oldest_wait_end")
CONFIG_NAMES: tuple[str, ...] = ("sl_threshold_seconds", "short_abandon_seconds")

COMPARED_COUNTS = COUNT_NAMES
COMPARED_LISTS = LIST_NAMES
COMPARED_STATE = STATE_NAMES
COMPARED_COLUMNS: tuple[str, ...] = (*COUNT_NAMES, *LIST_NAMES, *STATE_NAMES, *CONFIG_NAMES)
NOT_COMPARED: dict[str, str] = {
    "sl_headline": "configuration (formula per channel), not ground truth",
    "partial_rows": "pipeline bookkeeping (number of source partitions merged)",
    "final": "pipeline bookkeeping; the tests require every compared row to be final",
    "version": "pipeline bookkeeping",
    "emitted_at": "pipeline bookkeeping",
}
# KPIs of the views compared exactly, and those compared with a relative tolerance because they are
# means whose floating-point sum depends on summation order (ClickHouse arraySum over a merged array).
EXACT_KPIS: tuple[str, ...] = (
    "offered",
    "answered",
    "abandoned",
    "short_abandoned",
    "service_level_genesys",
    "service_level_connect",
    "service_level",
    "frt_p50_seconds",
    "frt_p90_seconds",
    "frt_p99_seconds",
    "nrt_p50_seconds",
    "nrt_p90_seconds",
    "nrt_p99_seconds",
    "handled",
    "transfers",
    "bot_contained",
    "bot_handoffs",
    "ivr_zero_outs",
    "resolved",
    "first_contact_resolved",
    "csat",
    "ces",
    "nps",
    "backlog",
    "oldest_wait_seconds",
)
MEAN_KPIS: tuple[str, ...] = ("asa_seconds", "frt_mean_seconds", "nrt_mean_seconds", "aht_seconds")

WindowKey = tuple[int, str, str, int]  # (window start epoch ms, channel, queue, priority)


def window_of(epoch_ms: int) -> int:
    return epoch_ms - epoch_ms % WINDOW_MS


def threshold(channel: str, thresholds: Mapping[str, float] | None = None) -> float:
    return (thresholds or SL_THRESHOLDS).get(channel, DEFAULT_SL_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Percentiles and the derived KPIs


def quantile_exact(values: Sequence[float], q: float) -> float | None:
    """ClickHouse quantileExact(q): sorted values' element at int(q * n), clamped; None when empty."""
    n = len(values)
    if n == 0:
        return None
    ordered = sorted(values)
    index = n - 1 if q >= 1 else int(q * n)
    return ordered[max(0, min(index, n - 1))]


def _mean(values: Sequence[float]) -> float | None:
    return sum(sorted(values)) / len(values) if values else None


def _ratio(num: float, den: float, scale: float = 1.0) -> float | None:
    if den == 0:
        return None
    return num / den if scale == 1.0 else scale * num / den


@dataclass(slots=True)
class Window:
    """The oracle's measures of one window key (all partitions merged)."""

    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    backlog_end: int = 0
    oldest_wait_end: float = 0.0
    sl_threshold_seconds: float = 0.0
    short_abandon_seconds: float = SHORT_ABANDON_SECONDS

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def value(self, name: str, v: float) -> None:
        self.values.setdefault(name, []).append(v)

    def columns(self) -> dict[str, Any]:
        """Every compared column, value lists sorted."""
        out: dict[str, Any] = {n: self.counts.get(n, 0) for n in COUNT_NAMES}
        out.update({n: sorted(self.values.get(n, ())) for n in LIST_NAMES})
        out["backlog_end"] = self.backlog_end
        out["oldest_wait_end"] = self.oldest_wait_end
        out["sl_threshold_seconds"] = self.sl_threshold_seconds
        out["short_abandon_seconds"] = self.short_abandon_seconds
        return out

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(self.values.values()) and self.backlog_end == 0


def derived_kpis(columns: Mapping[str, Any], headline: str = "genesys") -> dict[str, float | None]:
    """The view's KPIs from merged columns, by the documented formulas."""
    c = columns
    genesys = _ratio(c["answered_within_sl"], c["answered"] + c["abandoned"] - c["short_abandoned"])
    connect = _ratio(c["removed_within_sl"], c["offered"])
    out: dict[str, float | None] = {
        "offered": c["offered"],
        "answered": c["answered"],
        "abandoned": c["abandoned"],
        "short_abandoned": c["short_abandoned"],
        "service_level_genesys": genesys,
        "service_level_connect": connect,
        "service_level": connect if headline == "connect" else genesys,
        "asa_seconds": _mean(c["answer_waits"]),
    }
    for prefix, column in (("frt", "first_response_times"), ("nrt", "next_response_times")):
        out[f"{prefix}_mean_seconds"] = _mean(c[column])
        out[f"{prefix}_p50_seconds"] = quantile_exact(c[column], 0.5)
        out[f"{prefix}_p90_seconds"] = quantile_exact(c[column], 0.9)
        out[f"{prefix}_p99_seconds"] = quantile_exact(c[column], 0.99)
    out["handled"] = len(c["handle_times"])
    out["aht_seconds"] = _mean(c["handle_times"])
    for name in ("transfers", "bot_contained", "bot_handoffs", "ivr_zero_outs", "resolved", "first_contact_resolved"):
        out[name] = c[name]
    out["csat"] = _ratio(c["csat_satisfied"], c["csat_responses"])
    out["ces"] = _ratio(c["ces_score_sum"], c["ces_responses"])
    out["nps"] = _ratio(c["nps_promoters"] - c["nps_detractors"], c["nps_responses"], 100.0)
    out["backlog"] = c["backlog_end"]
    out["oldest_wait_seconds"] = c["oldest_wait_end"]
    return out


# ---------------------------------------------------------------------------------------------
# Contacts from truth records


@dataclass(frozen=True, slots=True)
class Leg:
    queue: str
    queued: int
    answered: int | None
    abandoned: int | None
    transferred: int | None
    closed: int | None  # `ended` while still waiting (no answer, abandon or transfer before it)

    @property
    def removed(self) -> int | None:
        times = [t for t in (self.answered, self.abandoned, self.transferred, self.closed) if t is not None]
        return min(times) if times else None

    def waiting_at(self, instant: int) -> bool:
        removed = self.removed
        return self.queued < instant and (removed is None or removed >= instant)


@dataclass(frozen=True, slots=True)
class Contact:
    contact_id: str
    channel: str
    priority: int
    started: int
    ended: int | None
    acw_seconds: float
    legs: tuple[Leg, ...]
    first_response: int | None
    agent_replies: tuple[int, ...]
    customer_messages: tuple[int, ...]
    waiting: tuple[tuple[int, int | None], ...]
    bot_involved: bool
    bot_contained_flag: bool
    bot_handoff: int | None
    ivr_zero_out: bool
    abandoned: int | None
    resolutions: tuple[int, ...]
    resolved_by: str | None
    reopens: tuple[int, ...]
    surveys: tuple[tuple[str, int, int], ...]  # (survey, score, at)
    talk_seconds: float
    hold_seconds: float
    raw: Mapping[str, Any]


def parse_contact(record: Mapping[str, Any]) -> Contact:
    ended = ms_of(record["ended_at"])
    raw_legs = record["legs"]
    legs: list[Leg] = []
    for i, leg in enumerate(raw_legs):
        queued = ms_of(leg["queued_at"])
        assert queued is not None
        answered, abandoned, transferred = (ms_of(leg[k]) for k in ("answered_at", "abandoned_at", "transferred_at"))
        closed = None
        last = i == len(raw_legs) - 1
        if last and ended is not None and answered is None and abandoned is None and transferred is None:
            closed = ended
        legs.append(Leg(leg["queue"], queued, answered, abandoned, transferred, closed))
    waiting = tuple((_req(ms_of(a)), ms_of(b)) for a, b in record["waiting_on_customer"])
    return Contact(
        contact_id=record["contact_id"],
        channel=record["channel"],
        priority=int(record["priority"]),
        started=_req(ms_of(record["started_at"])),
        ended=ended,
        acw_seconds=float(record["acw_seconds"]),
        legs=tuple(legs),
        first_response=ms_of(record["first_response_at"]),
        agent_replies=tuple(_req(ms_of(t)) for t in record["agent_replies"]),
        customer_messages=tuple(_req(ms_of(t)) for t in record["customer_messages"]),
        waiting=waiting,
        bot_involved=bool(record["bot_involved"]),
        bot_contained_flag=bool(record["bot_contained"]),
        bot_handoff=ms_of(record["bot_handoff_at"]),
        ivr_zero_out=bool(record["ivr_zero_out"]),
        abandoned=ms_of(record["abandoned_at"]),
        resolutions=tuple(_req(ms_of(t)) for t in record["resolutions"]),
        resolved_by=record["resolved_by"],
        reopens=tuple(_req(ms_of(t)) for t in record["reopened_at"]),
        surveys=tuple((s["survey"], int(s["score"]), _req(ms_of(s["at"]))) for s in record["surveys"]),
        talk_seconds=float(record["talk_seconds"]),
        hold_seconds=float(record["hold_seconds"]),
        raw=record,
    )


def _req(value: int | None) -> int:
    assert value is not None
    return value


def _overlap(start: int, end: int, spans: Iterable[tuple[int, int | None]]) -> int:
    total = 0
    for a, b in spans:
        lo, hi = max(start, a), end if b is None else min(end, b)
        if hi > lo:
            total += hi - lo
    return total


# ---------------------------------------------------------------------------------------------
# The oracle


@dataclass
class Oracle:
    """Windows keyed by (window start ms, channel, queue, priority), plus oracle self-checks."""

    windows: dict[WindowKey, Window]
    contacts: int
    problems: list[str]

    def rows(self, until_ms: int, minutes: int = 1) -> dict[WindowKey, dict[str, Any]]:
        """Compared columns of every non-empty bucket of `minutes` (aligned to the epoch, like the
        kpi_minute / kpi_15m / kpi_1h views) that ends at or before `until_ms`: counts summed,
        value lists concatenated, backlog and oldest wait those of the bucket's last minute."""
        width = minutes * WINDOW_MS
        buckets: dict[WindowKey, Window] = {}
        for (start, channel, queue, priority), w in sorted(self.windows.items()):
            bucket = start - start % width
            if bucket + width > until_ms:
                continue
            key = (bucket, channel, queue, priority)
            b = buckets.get(key)
            if b is None:
                b = buckets[key] = Window(
                    sl_threshold_seconds=w.sl_threshold_seconds, short_abandon_seconds=w.short_abandon_seconds
                )
            for name, n in w.counts.items():
                b.count(name, n)
            for name, vs in w.values.items():
                b.values.setdefault(name, []).extend(vs)
            if start == bucket + width - WINDOW_MS:
                b.backlog_end, b.oldest_wait_end = w.backlog_end, w.oldest_wait_end
        return {k: b.columns() for k, b in sorted(buckets.items()) if not b.is_empty()}


def kpi_oracle(
    records: Iterable[Any],
    *,
    until_ms: int,
    thresholds: Mapping[str, float] | None = None,
    short_abandon_seconds: float = SHORT_ABANDON_SECONDS,
) -> Oracle:
    """Compute every window from truth records. Backlog/oldest wait are computed for every window
    end up to `until_ms` (the run's horizon: nothing happens after it, so legs still waiting then
    stay in the backlog)."""
    windows: dict[WindowKey, Window] = {}
    problems: list[str] = []
    contacts = [parse_contact(r) for r in contact_records(records)]
    for contact in contacts:
        _contact_measures(contact, windows, problems, thresholds, short_abandon_seconds)
        _backlog(contact, windows, until_ms)
    for (_, channel, _, _), w in windows.items():
        w.sl_threshold_seconds = threshold(channel, thresholds)
        w.short_abandon_seconds = short_abandon_seconds
    return Oracle(windows, len(contacts), problems)


def _contact_measures(
    c: Contact,
    windows: dict[WindowKey, Window],
    problems: list[str],
    thresholds: Mapping[str, float] | None,
    short_abandon_seconds: float,
) -> None:
    T = threshold(c.channel, thresholds)

    def leg_at(t: int, strict: bool) -> Leg | None:
        """The leg in force at t: latest leg queued at or before t (before t when the completing
        event is emitted before a `queued` of the same millisecond)."""
        found = None
        for leg in c.legs:
            if leg.queued < t or (not strict and leg.queued == t):
                found = leg
        return found

    def at(t: int, *, strict: bool = False, leg: Leg | None = None) -> Window:
        if leg is None:
            leg = leg_at(t, strict)
        key = (window_of(t), c.channel, leg.queue if leg is not None else "", c.priority)
        w = windows.get(key)
        if w is None:
            w = windows[key] = Window()
        return w

    for leg in c.legs:
        at(leg.queued, leg=leg).count("offered")
        if leg.answered is not None:
            wait = (leg.answered - leg.queued) / 1000.0
            w = at(leg.answered, leg=leg)
            w.count("answered")
            w.value("answer_waits", wait)
            if wait <= T:
                w.count("answered_within_sl")
                w.count("removed_within_sl")
        if leg.abandoned is not None:
            wait = (leg.abandoned - leg.queued) / 1000.0
            w = at(leg.abandoned, leg=leg)
            w.count("abandoned")
            if wait < short_abandon_seconds:
                w.count("short_abandoned")
            if wait <= T:
                w.count("removed_within_sl")
        if leg.transferred is not None:
            at(leg.transferred, leg=leg).count("transfers")

    # first and next response times
    if c.first_response is not None:
        frt = c.first_response - c.started - _overlap(c.started, c.first_response, c.waiting)
        at(c.first_response).value("first_response_times", frt / 1000.0)
    replies = set(c.agent_replies)
    ties = replies & set(c.customer_messages)
    if ties:
        problems.append(f"{c.contact_id}: agent reply and customer message in the same ms {sorted(ties)}")
    timeline = sorted([(t, 1) for t in c.agent_replies] + [(t, 0) for t in c.customer_messages])
    seen_reply = False
    pending: int | None = None
    for t, is_reply in timeline:
        if not is_reply:
            if seen_reply and pending is None:
                pending = t
            continue
        if not seen_reply:
            seen_reply = True
            if c.first_response != t:
                problems.append(f"{c.contact_id}: first agent reply {t} != first_response_at {c.first_response}")
        elif pending is not None:
            nrt = t - pending - _overlap(pending, t, c.waiting)
            at(t).value("next_response_times", nrt / 1000.0)
            pending = None

    # handle time: the pipeline's definition, from truth timestamps
    answered = [leg.answered for leg in c.legs if leg.answered is not None]
    if c.ended is not None and answered and c.ended >= min(answered):
        first = min(answered)
        requeue = 0
        for leg in c.legs:
            if first <= leg.queued < c.ended:
                removed = leg.removed
                requeue += min(c.ended if removed is None else removed, c.ended) - leg.queued
        talk_ms = c.ended - first - requeue
        at(c.ended).value("handle_times", talk_ms / 1000.0 + c.acw_seconds)
        if c.channel in ("voice", "chat", "web"):
            model_ms = round(c.talk_seconds * 1000) + round(c.hold_seconds * 1000)
            if model_ms != talk_ms:
                problems.append(f"{c.contact_id}: talk {talk_ms} ms != simulator talk + hold {model_ms} ms")

    # bot
    if c.bot_handoff is not None:
        at(c.bot_handoff, strict=True).count("bot_handoffs")
    completion: int | None = None
    if c.resolved_by == "bot" and c.resolutions:
        completion = c.resolutions[0]
    if c.ended is not None and (completion is None or c.ended < completion):
        completion = c.ended
    contained = False
    if completion is not None and c.bot_involved:
        blockers = [c.bot_handoff, c.abandoned, *(leg.queued for leg in c.legs), *answered]
        contained = not any(b is not None and b <= completion for b in blockers)
        if contained:
            at(completion).count("bot_contained")
    if contained != c.bot_contained_flag:
        problems.append(f"{c.contact_id}: bot contained {contained} but the simulator says {c.bot_contained_flag}")

    # IVR zero-out: same instant as the first queued leg, sorted before it
    if c.ivr_zero_out:
        if not c.legs:
            problems.append(f"{c.contact_id}: ivr_zero_out without a queue leg")
        else:
            at(c.legs[0].queued, strict=True).count("ivr_zero_outs")

    # resolutions, reopens, first-contact resolution
    changes = sorted([(t, 1) for t in c.resolutions] + [(t, 0) for t in c.reopens])
    if set(c.resolutions) & set(c.reopens):
        problems.append(f"{c.contact_id}: resolution and reopen in the same ms")
    is_resolved = False
    counted_resolutions: list[int] = []
    counted_reopens: list[int] = []
    for t, is_resolution in changes:
        if is_resolution and not is_resolved:
            is_resolved = True
            counted_resolutions.append(t)
            at(t).count("resolved")
        elif not is_resolution and is_resolved:
            is_resolved = False
            counted_reopens.append(t)
    if c.ended is not None:
        end = c.ended
        if any(t <= end for t in counted_resolutions) and not any(t <= end for t in counted_reopens):
            at(end).count("first_contact_resolved")

    # surveys
    for survey, score, t in c.surveys:
        w = at(t)
        if survey == "csat":
            w.count("csat_responses")
            if score >= 4:
                w.count("csat_satisfied")
        elif survey == "ces":
            w.count("ces_responses")
            w.count("ces_score_sum", score)
        elif survey == "nps":
            w.count("nps_responses")
            if score >= 9:
                w.count("nps_promoters")
            elif score <= 6:
                w.count("nps_detractors")


def _backlog(c: Contact, windows: dict[WindowKey, Window], until_ms: int) -> None:
    """Add the contact's waiting legs to the backlog of every window end instant E <= until_ms."""
    for leg in c.legs:
        # the window ends E with `leg.waiting_at(E)`: from the first end strictly after queued to
        # the leg's removal (bounds taken once, not asked again at each of a ticket's ~2M minutes)
        removed = leg.removed
        last = until_ms if removed is None else min(until_ms, removed)
        for end in range(window_of(leg.queued) + WINDOW_MS, last + 1, WINDOW_MS):
            key = (end - WINDOW_MS, c.channel, leg.queue, c.priority)
            w = windows.get(key)
            if w is None:
                w = windows[key] = Window()
            if w.backlog_end == 0:
                w.oldest_wait_end = (end - leg.queued) / 1000.0
            else:
                w.oldest_wait_end = max(w.oldest_wait_end, (end - leg.queued) / 1000.0)
            w.backlog_end += 1


# ---------------------------------------------------------------------------------------------
# Comparison helper


def compare_rows(
    expected: Mapping[WindowKey, Mapping[str, Any]],
    actual: Mapping[WindowKey, Mapping[str, Any]],
    columns: Sequence[str] = COMPARED_COLUMNS,
) -> list[str]:
    """Readable differences between oracle rows and pipeline rows (same keys, same columns).
    Lists compare as sorted multisets; a key on one side only is a mismatch unless all its
    compared columns are zero/empty there."""
    diffs: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        exp, act = expected.get(key), actual.get(key)
        label = f"window {_fmt_key(key)}"
        if exp is None or act is None:
            present = exp if exp is not None else act
            assert present is not None
            nonzero = {c: present[c] for c in columns if c in present and present[c] and c not in CONFIG_NAMES}
            if nonzero:
                side = "pipeline only" if exp is None else "oracle only"
                diffs.append(f"{label}: {side}: {nonzero}")
            continue
        for column in columns:
            e, a = exp[column], act[column]
            if column in LIST_NAMES:
                e, a = sorted(e), sorted(a)
            if e != a:
                diffs.append(f"{label}: {column}: oracle {e!r} != pipeline {a!r}")
    return diffs


def compare_kpis(
    expected: Mapping[WindowKey, Mapping[str, Any]],
    actual_kpis: Mapping[WindowKey, Mapping[str, Any]],
    headlines: Mapping[WindowKey, str] | None = None,
    rel_tol: float = 1e-9,
) -> list[str]:
    """Compare the derived KPIs of the oracle's rows with the pipeline's KPI values (view columns):
    EXACT_KPIS exactly, MEAN_KPIS within `rel_tol`. Keys missing on the pipeline side are skipped
    (`compare_rows` reports them)."""
    diffs: list[str] = []
    for key, columns in sorted(expected.items()):
        act = actual_kpis.get(key)
        if act is None:
            continue
        headline = (headlines or {}).get(key, "genesys")
        exp = derived_kpis(columns, headline)
        for name in EXACT_KPIS:
            if exp[name] != act[name]:
                diffs.append(f"window {_fmt_key(key)}: {name}: oracle {exp[name]!r} != pipeline {act[name]!r}")
        for name in MEAN_KPIS:
            e, a = exp[name], act[name]
            if (e is None) != (a is None) or (
                e is not None and a is not None and abs(e - a) > rel_tol * max(1.0, abs(e), abs(a))
            ):
                diffs.append(f"window {_fmt_key(key)}: {name}: oracle {e!r} != pipeline {a!r}")
    return diffs


# ---------------------------------------------------------------------------------------------
# Reading the pipeline's side from ClickHouse (the kpi_minute / kpi_15m / kpi_1h views)


def view_query(view: str, until_ms: int) -> str:
    """SQL for the rows of `view` before `until_ms` (a whole second): key, final, sl_headline, the
    compared columns, then the KPI columns (EXACT_KPIS, MEAN_KPIS); parse with `parse_view_rows`."""
    columns = (*COMPARED_COLUMNS, *EXACT_KPIS, *MEAN_KPIS)
    return (
        "SELECT toUnixTimestamp(window_start) * 1000, channel, queue, priority, `final`, sl_headline, "
        + ", ".join(f"`{c}`" for c in columns)
        + f" FROM {view} WHERE window_start < toDateTime({until_ms // 1000}, 'UTC')"
        " ORDER BY window_start, channel, queue, priority"
    )


@dataclass
class ViewRows:
    columns: dict[WindowKey, dict[str, Any]]  # compared columns, normalized
    kpis: dict[WindowKey, dict[str, Any]]
    headlines: dict[WindowKey, str]
    not_final: list[WindowKey]


def parse_view_rows(rows: Iterable[Sequence[Any]]) -> ViewRows:
    names = (*COMPARED_COLUMNS, *EXACT_KPIS, *MEAN_KPIS)
    out = ViewRows({}, {}, {}, [])
    for row in rows:
        key = (int(row[0]), str(row[1]), str(row[2]), int(row[3]))
        if not row[4]:
            out.not_final.append(key)
        out.headlines[key] = str(row[5])
        named = dict(zip(names, row[6:], strict=True))
        out.columns[key] = {c: _normalize(c, named[c]) for c in COMPARED_COLUMNS}
        out.kpis[key] = {k: named[k] for k in (*EXACT_KPIS, *MEAN_KPIS)}
    return out


def _normalize(column: str, value: Any) -> Any:
    if column in LIST_NAMES:
        return sorted(float(v) for v in value)
    if column in COUNT_NAMES or column == "backlog_end":
        return int(value)
    return float(value)


def _fmt_key(key: WindowKey) -> str:
    return f"{iso(key[0])} {key[1]}/{key[2] or '-'}/p{key[3]}"
