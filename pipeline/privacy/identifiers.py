"""Customer identifiers as they are compared: normalised, and told apart from placeholders.

Contact centres fill an identifier they do not know with a placeholder: a withheld caller's number
as `0000000000`, `+0`, `anonymous` or `withheld`, an e-mail as `noreply@…`, a field as `unknown`,
`n/a` or `-`. A placeholder names nobody. Hashed like a real identifier it would look like one
person in every table, and every caller who sent it would be stitched into one customer. So a
placeholder is dropped where events are decoded (`pipeline.privacy.pseudonym.apply`, whether or not
identifiers are pseudonymised): a customer identifier becomes absent (stored empty, like one never
sent), and a side of an identity link becomes the literal `PLACEHOLDER`, which the identity graph
refuses like any placeholder. This module is the one definition; the journey stage's own blocklist
(`pipeline.journeys.identity`) is a subset of it (tested).

Placeholders, after `normalise`:
- any kind: empty, no letter or digit at all (`-`, `?`, `...`), or one of `PLACEHOLDER_WORDS`
  (case-insensitive);
- phone: no digit at all (`withheld`, `Private Number`), or only zeros (`0000000000`, `+0`, `00`);
- e-mail: a local part in `PLACEHOLDER_MAILBOXES` or `PLACEHOLDER_WORDS` (`noreply@shop.example`,
  `unknown@…`), or a domain under the reserved `.invalid` top-level domain.
"""

from __future__ import annotations

import functools
import re

_PHONE_NOISE = re.compile(r"[\s\-.()/]")
_MEANINGFUL = re.compile(r"[^\W_]")  # a letter or digit, in any script

# stored in place of a placeholder on a side of an identity link (the model needs a value there)
PLACEHOLDER = "unknown"

PLACEHOLDER_WORDS: frozenset[str] = frozenset(
    {
        "0",
        "-",
        "n/a",
        "na",
        "none",
        "null",
        "nil",
        "undefined",
        "unknown",
        "anonymous",
        "withheld",
        "private",
        "restricted",
        "unavailable",
        "not available",
        "redacted",
    }
)
PLACEHOLDER_MAILBOXES: frozenset[str] = frozenset(
    {
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "nobody",
        "noemail",
        "no-email",
        "no_email",
        "invalid",
    }
)


def normalise(kind: str, value: str) -> str:
    """The form that is hashed and compared: phone numbers in E.164 (`+` and digits; a leading 00
    is the international prefix), e-mail addresses and social handles lower-cased, others trimmed."""
    value = value.strip()
    if kind == "phone":
        digits = _PHONE_NOISE.sub("", value)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        return digits
    if kind in ("email", "social_handle"):
        return value.lower()
    return value


@functools.lru_cache(maxsize=100_000)
def is_placeholder(kind: str, value: str) -> bool:
    """Whether `value`, given as an identifier of `kind`, is a placeholder rather than a person's."""
    form = normalise(kind, value)
    lowered = form.lower()
    if (
        not _MEANINGFUL.search(lowered)
        or lowered in PLACEHOLDER_WORDS
        or " ".join(lowered.split()) in PLACEHOLDER_WORDS
    ):
        return True
    if kind == "phone":
        digits = [ch for ch in form if ch.isdigit()]
        return not digits or set(digits) == {"0"}
    if kind == "email":
        mailbox, _, domain = lowered.rpartition("@")
        return mailbox in PLACEHOLDER_MAILBOXES or mailbox in PLACEHOLDER_WORDS or domain.endswith(".invalid")
    return False
