"""Spotting "don't call me again" in what the caller said, without the model.

An opt-out must hold whether or not the LLM calls `opt_out`: every caller
transcript is checked against these wordings, and a match puts the number on
the do-not-call list before the call ends. The patterns lean towards
catching a request: a false match costs one lead, a missed one breaks the law.
Negated pleasantries that are not requests ("you can call me again") do not
match: each pattern needs the "don't", "stop", "remove" or "never" itself.
"""

from __future__ import annotations

import re

__all__ = ["asks_to_opt_out", "asks_to_stop_messages"]

_PATTERNS = [
    r"\b(?:do not|don't|dont|never)\s+(?:ever\s+)?"
    r"(?:call|ring|phone|contact|message|text|write|whatsapp)\s+"
    r"(?:me|us|this number|here)\b",
    r"\bstop\s+(?:calling|ringing|phoning|contacting|messaging|texting|writing"
    r"|sending)\b",
    r"\b(?:remove|take|delete|get)\s+(?:me|my (?:number|name)|this number)\s+"
    r"(?:off|from)\b",
    r"\b(?:put|add)\s+(?:me|my number|this number)\s+(?:on|to)\s+(?:your\s+|the\s+)?"
    r"(?:do not|don't|no)[\s-]+call\b",
    r"\bdo[\s-]+not[\s-]+call\s+list\b",
    r"\bunsubscribe\b",
    r"\bopt(?:ing)?[\s-]+out\b",
    r"\bno more calls\b",
    r"\bnever\s+call(?:ing)?\s+(?:me|us|here)\s+again\b",
    r"\blose my number\b",
]
_OPT_OUT = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


# The words a whole message may be to opt out, as carriers treat SMS keywords.
_KEYWORDS = frozenset(
    {"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit",
     "optout", "opt out", "opt-out", "revoke", "remove me"}
)  # fmt: skip


def asks_to_stop_messages(text: str) -> bool:
    """Whether a written message asks for no more messages ("STOP", ...)."""
    bare = " ".join(text.translate(_APOSTROPHES).lower().strip(" .!?").split())
    for polite in ("please ", " please"):
        bare = bare.replace(polite, "").strip(" ,.!?")
    return bare in _KEYWORDS or asks_to_opt_out(text)


def asks_to_opt_out(text: str) -> bool:
    """Whether the caller's words ask not to be called again."""
    return _OPT_OUT.search(text.translate(_APOSTROPHES)) is not None
