"""Independent KPI oracle for the Anonymous Bank call log (`shared/realdata/anonbank-1999-10.tsv`).

Plain Python straight from the TSV rows; it shares no code with the pipeline (no converter, no
event model, no KPI core), only the definitions below, pinned so that both sides mean the same:

* **Offered to the agent queue**: every AGENT call (an AGENT call that never queued was routed
  straight to a free agent: offered and answered with a 0 s wait) and every HANG call that queued
  (`q_start` is not 0:00:00). HANG calls that never queued hung up in the IVR; PHANTOM calls left no
  trace of a caller: neither is in any queue KPI.
* **Answered**: AGENT calls, wait = `q_time` (0 when never queued). **Abandoned in queue**: HANG
  calls that queued, wait = `q_time`; **short abandons** are those with wait < 5 s.
* **Service level** (Genesys headline, the pipeline's default for voice): answered with wait <= 20 s
  / (answered + abandoned - short abandons).
* **ASA** = mean wait of answered calls.
* **Abandonment rate** = abandoned in queue / offered (short abandons included).
* **AHT** = mean `ser_time` of AGENT calls (0 s for the few AGENT rows without service times).
* **Dimension**: queue = service type (`type`), priority = `priority`.
* **Day attribution** (UTC days of the row clock times, which carry no zone): each measure counts on
  the day of the instant that completes it, as the pipeline's event-time windows do: offered on the
  day the call queued (or was answered, when it never queued), answered / waits on the day it left
  the queue (or the IVR), abandons on the day it left the queue, handle time on the day the service
  ended (answer + `ser_time`). A call that crosses midnight therefore splits over two days.
* **Clocks.** Instants are built from durations, not from clock-time arithmetic: IVR exit =
  `vru_entry` on `date` + `vru_time`; queue start = IVR exit + the signed clock difference
  `q_start - vru_exit` (taken within +-12 h); queue exit = queue start + `q_time`; the answer is the
  queue exit (or the IVR exit); the end is the answer + `ser_time`. The agent system's `ser_start`
  / `ser_exit` clock is not used (it disagrees with the IVR/queue clock).
* Rows that do not have exactly 17 tab-separated fields are malformed and counted nowhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SL_THRESHOLD_SECONDS = 20
SHORT_ABANDON_SECONDS = 5
N_FIELDS = 17
DAY = 86_400
REPO = Path(__file__).resolve().parents[1]
# shared/ sits beside the repository (in CI too); TOUCHLINE_SHARED_DIR points elsewhere
ANONBANK_TSV = (
    Path(os.environ.get("TOUCHLINE_SHARED_DIR", REPO.parent / "shared")) / "realdata" / "anonbank-1999-10.tsv"
)
# Under CI the data must be there: a missing file fails the run instead of skipping silently.
SKIP_WITHOUT_DATA = not ANONBANK_TSV.exists() and not os.environ.get("CI")
MALFORMED_LINES = (7315, 14247)

Key = tuple[date, str, int]  # (day, queue, priority)


@dataclass(slots=True)
class Tally:
    """Integer measures; every ratio is computed from them."""

    offered: int = 0
    answered: int = 0
    answered_within_sl: int = 0
    abandoned: int = 0
    short_abandoned: int = 0
    wait_sum: int = 0
    handled: int = 0
    handle_sum: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict[str, float | int | None]:
        sl_base = self.answered + self.abandoned - self.short_abandoned
        return {
            "offered": self.offered,
            "answered": self.answered,
            "answered_within_sl": self.answered_within_sl,
            "abandoned": self.abandoned,
            "short_abandoned": self.short_abandoned,
            "handled": self.handled,
            "wait_sum": self.wait_sum,
            "handle_sum": self.handle_sum,
            "service_level": self.answered_within_sl / sl_base if sl_base else None,
            "asa_seconds": self.wait_sum / self.answered if self.answered else None,
            "abandonment_rate": self.abandoned / self.offered if self.offered else None,
            "aht_seconds": self.handle_sum / self.handled if self.handled else None,
        }


@dataclass(slots=True)
class OracleResult:
    by_key: dict[Key, Tally] = field(default_factory=dict)
    month: Tally = field(default_factory=Tally)
    rows: int = 0  # well-formed call rows
    malformed: list[int] = field(default_factory=list)  # file line numbers
    outcomes: dict[str, int] = field(default_factory=dict)
    queued_calls: int = 0  # calls with a q_start (PHANTOM excluded)
    ivr_hangups: int = 0
    last_measure_s: int = 0  # absolute seconds (since 0001-01-01) of the latest measured instant

    @property
    def by_day(self) -> dict[date, Tally]:
        out: dict[date, Tally] = {}
        for (day, _, _), tally in self.by_key.items():
            out.setdefault(day, Tally()).add(tally)
        return dict(sorted(out.items()))

    @property
    def last_measure_at(self) -> datetime:
        return datetime.combine(date.fromordinal(self.last_measure_s // DAY), datetime.min.time(), UTC) + timedelta(
            seconds=self.last_measure_s % DAY
        )


def _clock(text: str) -> int:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _signed(diff: int) -> int:
    """A clock difference as the signed difference within +-12 h."""
    return (diff + DAY // 2) % DAY - DAY // 2


def compute(path: Path = ANONBANK_TSV) -> OracleResult:
    out = OracleResult()

    def tally(at_s: int, queue: str, priority: int) -> Tally:
        out.last_measure_s = max(out.last_measure_s, at_s)
        key = (date.fromordinal(at_s // DAY), queue, priority)
        found = out.by_key.get(key)
        if found is None:
            found = out.by_key[key] = Tally()
        return found

    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        col = {name: i for i, name in enumerate(header)}
        for number, line in enumerate(handle, start=2):
            f = line.rstrip("\r\n").split("\t")
            if len(f) != N_FIELDS:
                out.malformed.append(number)
                continue
            out.rows += 1
            outcome = f[col["outcome"]]
            out.outcomes[outcome] = out.outcomes.get(outcome, 0) + 1
            if outcome == "PHANTOM":
                continue
            queue, priority = f[col["type"]], int(f[col["priority"]])
            yymmdd = f[col["date"]]
            day = date(1900 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
            entry = day.toordinal() * DAY + _clock(f[col["vru_entry"]])
            ivr_exit = entry + int(f[col["vru_time"]])
            queued = f[col["q_start"]] != "0:00:00"
            q_time = int(f[col["q_time"]])
            q_start = q_exit = ivr_exit
            if queued:
                out.queued_calls += 1
                q_start = ivr_exit + _signed(_clock(f[col["q_start"]]) - _clock(f[col["vru_exit"]]))
                q_exit = q_start + q_time
            if outcome == "AGENT":
                answer = q_exit if queued else ivr_exit
                wait = q_time if queued else 0
                tally(q_start if queued else answer, queue, priority).offered += 1
                t = tally(answer, queue, priority)
                t.answered += 1
                t.wait_sum += wait
                t.answered_within_sl += wait <= SL_THRESHOLD_SECONDS
                service = int(f[col["ser_time"]])
                t = tally(answer + service, queue, priority)
                t.handled += 1
                t.handle_sum += service
            elif outcome == "HANG" and queued:
                tally(q_start, queue, priority).offered += 1
                t = tally(q_exit, queue, priority)
                t.abandoned += 1
                t.short_abandoned += q_time < SHORT_ABANDON_SECONDS
            elif outcome == "HANG":
                out.ivr_hangups += 1
    for t in out.by_key.values():
        out.month.add(t)
    out.by_key = dict(sorted(out.by_key.items()))
    return out


def summary(result: OracleResult) -> str:
    """The month figures as text, for test output."""
    f = result.month.figures()
    return (
        f"{result.rows:,} calls {result.outcomes}, malformed lines {result.malformed}; "
        f"offered {f['offered']:,}, answered {f['answered']:,}, abandoned in queue {f['abandoned']:,} "
        f"({f['short_abandoned']:,} short); service level (<= {SL_THRESHOLD_SECONDS} s, Genesys) "
        f"{f['service_level']:.4%}, ASA {f['asa_seconds']:.3f} s, abandonment {f['abandonment_rate']:.4%} of offered "
        f"({result.month.abandoned / result.queued_calls:.4%} of the {result.queued_calls:,} calls that queued), "
        f"AHT {f['aht_seconds']:.3f} s over {f['handled']:,} handled"
    )
