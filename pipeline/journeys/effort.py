"""Customer effort score of a journey: 0 (effortless) to 100 (maximum effort).

The score is computed from the journey's metrics only (a pure function, no state):

    B = min(100,
            12 * min(contacts - 1, 5)          # every contact beyond the first, up to 5
          +  8 * min(channel_switches, 5)      # adjacent contacts on different channels
          +  6 * min(transfers, 5)             # transfers, summed over the journey's contacts
          +  5 * min(ivr_zero_outs, 4)         # contacts where the caller zeroed out of the IVR
          +  4 * min(bot_handoffs, 5)          # contacts the bot handed to a human
          +  5 * min(abandoned_contacts, 4)    # contacts the customer abandoned
          + 20 * min(elapsed_hours / 72, 1)    # time to resolution (unresolved: start -> last activity)
          + (0 if resolved else 10))           # still unresolved

    effort = B                                  when the journey has no CES answer
    effort = 0.5 * B + 0.5 * 100 * (ces - 1) / 6 when it has one (its last CES answer, 1-7)

rounded to one decimal. `elapsed_hours` is time to resolution in hours for a resolved journey and
(last activity - start) in hours otherwise, so the score never depends on the wall clock. A
single contact resolved at once without transfer, zero-out or handoff scores 0 (plus the time
term: 20 points only after three days). CES measures effort as the customer felt it, so when
present it counts for half.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_EXTRA_CONTACT = 12.0
WEIGHT_CHANNEL_SWITCH = 8.0
WEIGHT_TRANSFER = 6.0
WEIGHT_IVR_ZERO_OUT = 5.0
WEIGHT_BOT_HANDOFF = 4.0
WEIGHT_ABANDONED = 5.0
WEIGHT_TIME = 20.0
TIME_SATURATION_HOURS = 72.0
UNRESOLVED_PENALTY = 10.0
CES_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class EffortInputs:
    """The journey metrics the effort score uses."""

    contacts: int
    channel_switches: int = 0
    transfers: int = 0
    ivr_zero_outs: int = 0
    bot_handoffs: int = 0
    abandoned_contacts: int = 0
    elapsed_seconds: float = 0.0
    resolved: bool = False
    ces: int | None = None  # last CES answer of the journey, 1 (very easy) to 7


def _behavioural(
    contacts: int, channel_switches: int, transfers: int, ivr_zero_outs: int, bot_handoffs: int,
    abandoned_contacts: int, elapsed_seconds: float, resolved: bool,
) -> float:  # fmt: skip
    """`B` of the module docstring: the effort the journey's shape shows, 0-100 (unrounded)."""
    hours = max(elapsed_seconds, 0.0) / 3600.0
    raw = (
        WEIGHT_EXTRA_CONTACT * min(max(contacts - 1, 0), 5)
        + WEIGHT_CHANNEL_SWITCH * min(channel_switches, 5)
        + WEIGHT_TRANSFER * min(transfers, 5)
        + WEIGHT_IVR_ZERO_OUT * min(ivr_zero_outs, 4)
        + WEIGHT_BOT_HANDOFF * min(bot_handoffs, 5)
        + WEIGHT_ABANDONED * min(abandoned_contacts, 4)
        + WEIGHT_TIME * min(hours / TIME_SATURATION_HOURS, 1.0)
        + (0.0 if resolved else UNRESOLVED_PENALTY)
    )
    return min(100.0, raw)


def effort_score(inputs: EffortInputs) -> float:
    """The customer effort score, 0-100, one decimal (formula in the module docstring)."""
    i = inputs
    return effort_of(
        i.contacts, i.channel_switches, i.transfers, i.ivr_zero_outs, i.bot_handoffs, i.abandoned_contacts,
        i.elapsed_seconds, i.resolved, i.ces,
    )  # fmt: skip


def effort_of(
    contacts: int, channel_switches: int, transfers: int, ivr_zero_outs: int, bot_handoffs: int,
    abandoned_contacts: int, elapsed_seconds: float, resolved: bool, ces: int | None,
) -> float:  # fmt: skip
    """`effort_score` of the metrics as arguments (the journey rules score every journey they build,
    without an `EffortInputs` each)."""
    score = _behavioural(
        contacts, channel_switches, transfers, ivr_zero_outs, bot_handoffs, abandoned_contacts, elapsed_seconds,
        resolved,
    )  # fmt: skip
    if ces is not None:
        ces = min(max(ces, 1), 7)
        score = (1 - CES_SHARE) * score + CES_SHARE * 100.0 * (ces - 1) / 6.0
    return round(score, 1)
