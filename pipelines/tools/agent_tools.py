"""The agent's tools during a call: what the LLM may call, and what each does.

Built in, offered according to the agent's settings:

    end_call(outcome, reason)      close politely and hang up
    schedule_callback(when)        a callback at a local time of the lead's
    book_meeting(start, duration_minutes, title, attendee_email)
    opt_out()                      the number goes on the do-not-call list

plus the tools of the campaign's MCP bindings (`pipelines.tools.mcp_tools`).

Rules that hold whatever the model does:

- Times the model gives are wall-clock times in the lead's own zone
  ("2026-12-08T15:00"); an explicit UTC offset is respected. Around a
  daylight-saving change: a time that happens twice (clocks fall back) means
  the first one; a time that never happens (clocks spring forward) moves
  forward by the gap, as a wall clock would read it (02:30 becomes 03:30).
- A callback is checked against the lead's calling window: a closed time
  moves to the next open moment, and the tool result says which time was
  booked so the agent tells the lead the truth.
- opt_out puts the number on the do-not-call list at once, before the call
  ends, and the call's outcome becomes do_not_call; the model cannot take it
  back. Compliance (the list, windows, numbers) is never the model's to set.
- A tool that is slow gets a spoken holding line (see `pipelines.reply`); one
  that fails gets a plain result saying so, never an exception into the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from pipelines.llm import ToolCall
from pipelines.tools.calendar import (
    Calendar,
    CalendarError,
    SlotUnavailable,
    book,
)

if TYPE_CHECKING:
    # Imported when used: a call without MCP bindings never loads the client.
    from pipelines.tools.mcp_tools import McpToolbox

__all__ = [
    "BUILTIN_TOOLS",
    "AgentTools",
    "CallEffects",
    "OpenHours",
    "ToolContext",
    "ToolResult",
    "local_instant",
]

log = logging.getLogger(__name__)

DEFAULT_OUTCOMES = (
    "qualified",
    "callback",
    "not_interested",
    "wrong_person",
    "voicemail",
    "do_not_call",
    "completed",
)


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


def _end_call(outcomes: Sequence[str]) -> dict[str, Any]:
    return _function(
        "end_call",
        "Hang up after your last sentence, once the conversation is over.",
        {
            "outcome": {"type": "string", "enum": list(outcomes)},
            "reason": {"type": "string", "description": "One short sentence."},
        },
        ["outcome"],
    )


_LOCAL_TIME = (
    "Local wall-clock time in the lead's time zone, as YYYY-MM-DDTHH:MM "
    "(no offset), for example 2026-12-08T15:00."
)
SCHEDULE_CALLBACK = _function(
    "schedule_callback",
    "Book a callback when the lead asks to be called at another time.",
    {"when": {"type": "string", "description": _LOCAL_TIME}},
    ["when"],
)
BOOK_MEETING = _function(
    "book_meeting",
    "Book a meeting on the calendar once the lead agreed to a time.",
    {
        "start": {"type": "string", "description": _LOCAL_TIME},
        "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 240},
        "title": {"type": "string"},
        "attendee_email": {"type": "string"},
    },
    ["start", "duration_minutes"],
)
OPT_OUT = _function(
    "opt_out",
    "The lead asked not to be called again: call this at once.",
    {},
    [],
)
BUILTIN_TOOLS = ("end_call", "schedule_callback", "book_meeting", "opt_out")


class OpenHours(Protocol):
    """A lead's calling window (`dialer.window.Window` is one)."""

    def is_open(self, at: float) -> bool: ...
    def next_open(self, at: float, horizon_days: int = 8) -> float | None: ...


@dataclass
class CallEffects:
    """What the tools did during the call; the call record keeps it."""

    outcome: str = ""
    reason: str = ""
    hang_up: bool = False
    callback_at: float | None = None
    callback_local: str = ""
    booking: dict[str, Any] | None = None
    opted_out: bool = False


@dataclass
class ToolContext:
    """The call's facts the tools work from. Built by the media server."""

    call_id: str = ""
    timezone: str = "UTC"
    window: OpenHours | None = None
    calendar: Calendar | None = None
    opt_out: Callable[[], Awaitable[None]] | None = None
    mcp: McpToolbox | None = None
    outcomes: Sequence[str] = DEFAULT_OUTCOMES
    meeting_title: str = "Meeting"
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class ToolResult:
    """The text the model gets back, and whether it must be asked again."""

    content: str
    follow_up: bool = True


def local_instant(text: str, zone: str) -> datetime:
    """The instant meant by `text`, a local time in `zone` (see the rules above)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a YYYY-MM-DDTHH:MM time") from exc
    if parsed.tzinfo is not None:
        return parsed.astimezone(UTC)
    # fold=0 is both rules at once (PEP 495): a repeated wall time takes its
    # first occurrence, and one in a gap takes the offset from before the
    # change, which lands it the length of the gap later.
    return parsed.replace(tzinfo=ZoneInfo(zone), fold=0).astimezone(UTC)


def _spoken(at: datetime, zone: str) -> str:
    local = at.astimezone(ZoneInfo(zone))
    hour = local.strftime("%I:%M %p").lstrip("0")
    return f"{local:%A, %B} {local.day} at {hour} ({zone})"


class AgentTools:
    """The tools offered on one call, and their effects."""

    def __init__(
        self, enabled: Sequence[str], context: ToolContext, effects: CallEffects
    ) -> None:
        self.enabled = [name for name in BUILTIN_TOOLS if name in set(enabled)]
        if "book_meeting" in self.enabled and context.calendar is None:
            self.enabled.remove("book_meeting")  # nowhere to book
        self.context = context
        self.effects = effects

    def definitions(self) -> list[dict[str, Any]]:
        """The OpenAI tool definitions the model is offered."""
        known = {
            "end_call": _end_call(self.context.outcomes),
            "schedule_callback": SCHEDULE_CALLBACK,
            "book_meeting": BOOK_MEETING,
            "opt_out": OPT_OUT,
        }
        tools = [known[name] for name in self.enabled]
        if self.context.mcp is not None:
            tools += self.context.mcp.openai_tools()
        return tools

    def is_mcp(self, name: str) -> bool:
        return self.context.mcp is not None and self.context.mcp.owns(name)

    async def run(self, call: ToolCall) -> ToolResult:
        """Run one tool call; failures become results, never exceptions."""
        if self.is_mcp(call.name):
            return await self._mcp(call)
        if call.name not in self.enabled:
            return ToolResult(f"There is no tool called {call.name!r}.")
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return ToolResult("The tool arguments must be a JSON object.")
        if call.name == "book_meeting":
            return await self._book_meeting(args, f"{self.context.call_id}:{call.id}")
        handler = {
            "end_call": self._end_call,
            "schedule_callback": self._schedule_callback,
            "opt_out": self._opt_out,
        }[call.name]
        return await handler(args)

    async def _end_call(self, args: dict[str, Any]) -> ToolResult:
        effects = self.effects
        outcome = str(args.get("outcome") or "completed")
        if outcome not in self.context.outcomes:
            outcome = "completed"
        if not effects.opted_out:
            # A booked meeting or callback says more than a late "completed".
            if not (outcome == "completed" and effects.outcome):
                effects.outcome = outcome
        effects.reason = str(args.get("reason") or "")[:200]
        effects.hang_up = True
        return ToolResult("The call will end after your last sentence.", False)

    async def opt_out_now(self) -> None:
        """Put the number on the do-not-call list (idempotent)."""
        effects = self.effects
        if effects.opted_out:
            return
        effects.opted_out = True
        effects.outcome = "do_not_call"
        if self.context.opt_out is not None:
            await self.context.opt_out()

    async def _opt_out(self, args: dict[str, Any]) -> ToolResult:
        # Shielded: a barge-in may cancel the reply, never the opt-out.
        await asyncio.shield(self.opt_out_now())
        self.effects.hang_up = True
        return ToolResult(
            "Done: the number is on the do-not-call list and will not be called "
            "again. Confirm that briefly, apologise for the trouble and say goodbye."
        )

    async def _schedule_callback(self, args: dict[str, Any]) -> ToolResult:
        context = self.context
        try:
            wanted = local_instant(str(args.get("when", "")), context.timezone)
        except ValueError as exc:
            return ToolResult(f"Could not read the time: {exc}. Ask again.")
        now = context.clock()
        at = wanted.timestamp()
        if at <= now:
            return ToolResult("That time has already passed. Ask for a later time.")
        moved = ""
        if context.window is not None and not context.window.is_open(at):
            opens = context.window.next_open(at, horizon_days=31)
            if opens is None:
                return ToolResult(
                    "No calling hours are open in the next month; say a colleague "
                    "will follow up instead."
                )
            moved = f" {_spoken(wanted, context.timezone)} is outside calling hours;"
            at = opens
        booked = datetime.fromtimestamp(at, UTC)
        self.effects.callback_at = at
        self.effects.callback_local = booked.astimezone(
            ZoneInfo(context.timezone)
        ).isoformat(timespec="minutes")
        if self.effects.outcome in ("", "completed"):
            self.effects.outcome = "callback"
        return ToolResult(
            f"Callback booked.{moved} The lead will be called on "
            f"{_spoken(booked, context.timezone)}. Tell the lead that time."
        )

    async def _book_meeting(self, args: dict[str, Any], request_id: str) -> ToolResult:
        context = self.context
        calendar = context.calendar
        if calendar is None:
            return ToolResult("No calendar is connected; offer a callback instead.")
        try:
            start = local_instant(str(args.get("start", "")), context.timezone)
        except ValueError as exc:
            return ToolResult(f"Could not read the time: {exc}. Ask again.")
        if start.timestamp() <= context.clock():
            return ToolResult("That time has already passed. Ask for a later time.")
        try:
            minutes = int(args.get("duration_minutes") or 30)
        except (TypeError, ValueError):
            minutes = 30
        minutes = min(max(minutes, 5), 240)
        email = str(args.get("attendee_email") or "").strip() or None
        if email is not None and ("@" not in email or len(email) > 254):
            email = None
        title = str(args.get("title") or context.meeting_title)[:200]
        try:
            event = await book(
                calendar,
                start=start,
                duration_minutes=minutes,
                title=title,
                attendee_email=email,
                time_zone=context.timezone,
                # Stable for this tool call: a retry never books twice.
                request_id=request_id,
            )
        except SlotUnavailable:
            return ToolResult(
                f"{_spoken(start, context.timezone)} is already taken. Offer the "
                "lead another time."
            )
        except CalendarError as exc:
            log.warning("book_meeting failed: %s", type(exc).__name__)
            return ToolResult(
                "The calendar cannot be reached right now. Apologise and offer a "
                "callback instead."
            )
        self.effects.booking = {
            "event_id": event.id,
            "link": event.html_link,
            "start": event.start.isoformat(),
            "end": event.end.isoformat(),
            "title": title,
            "attendee_email": email or "",
        }
        if not self.effects.opted_out:
            self.effects.outcome = "qualified"
        return ToolResult(
            f"Booked: {title} on {_spoken(start, context.timezone)} for {minutes} "
            "minutes. Confirm it to the lead."
        )

    async def _mcp(self, call: ToolCall) -> ToolResult:
        from pipelines.tools.mcp_tools import ToolError

        toolbox = self.context.mcp
        assert toolbox is not None
        try:
            text = await toolbox.call(call.name, call.arguments or "{}")
        except ToolError as exc:
            log.warning("tool %s failed: %s", call.name, type(exc).__name__)
            return ToolResult(
                f"The tool {call.name} did not answer ({type(exc).__name__}). "
                "Carry on without it."
            )
        return ToolResult(text[:4000])
