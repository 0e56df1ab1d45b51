"""What stands between a draft campaign and its launch.

`review` lists every problem at once, so that an operator fixes them in one
pass; a campaign launches only when the list is empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from campaign_store.models import (
    STANDARD_PLACEHOLDERS,
    Agent,
    Campaign,
    HourRange,
    PhoneChannel,
    WhatsAppChannel,
    placeholders,
)

__all__ = ["Problem", "review"]


@dataclass(frozen=True)
class Problem:
    code: str
    path: str  # which part of the campaign to fix
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _length(hours: HourRange) -> int:
    start, end = _minutes(hours.start), _minutes(hours.end)
    return end - start if end > start else 24 * 60 - start + end


def review(campaign: Campaign, agent: Agent | None, leads: int) -> list[Problem]:
    """Every problem that would block `campaign` from launching."""
    problems: list[Problem] = []

    def add(code: str, path: str, message: str) -> None:
        problems.append(Problem(code, path, message))

    # The agent and what its prompt needs.
    if campaign.agent_id is None:
        add("no_agent", "agent_id", "the campaign has no agent")
    elif agent is None:
        add("agent_missing", "agent_id", "the campaign's agent no longer exists")
    else:
        if not agent.system_prompt.strip():
            add("empty_prompt", "agent.system_prompt", "the agent has no prompt")
        known = STANDARD_PLACEHOLDERS | {f.name for f in campaign.fields}
        for part in ("system_prompt", "greeting"):
            for name in sorted(placeholders(getattr(agent, part)) - known):
                add(
                    "unknown_placeholder",
                    f"agent.{part}",
                    f"{{{{{name}}}}} is used but the campaign has no field {name!r}",
                )

    # Who is called, from where.
    if leads == 0:
        add("no_leads", "leads", "the campaign has no leads")
    if campaign.channel is None:
        add("no_channel", "channel", "the campaign has no phone number or WhatsApp")
    elif isinstance(campaign.channel, WhatsAppChannel):
        known = STANDARD_PLACEHOLDERS | {f.name for f in campaign.fields}
        for name in campaign.channel.template.variables:
            if name not in known:
                add(
                    "unknown_template_variable",
                    "channel.template.variables",
                    f"template variable {name!r} is not a lead field",
                )
        template = campaign.channel.template
        wanted = set(range(1, len(template.variables) + 1))
        if template.body and template.numbered() != wanted:
            add(
                "template_body_mismatch",
                "channel.template.body",
                f"the body's placeholders {sorted(template.numbered())} do not "
                f"match the {len(template.variables)} variables",
            )
    else:
        assert isinstance(campaign.channel, PhoneChannel)

    # When.
    schedule = campaign.schedule
    if not schedule.days:
        add("no_days", "schedule.days", "the schedule has no calling day")
    if not schedule.hours:
        add("no_hours", "schedule.hours", "the schedule has no calling hours")
    elif all(_length(h) <= schedule.quiet_margin_minutes for h in schedule.hours):
        add(
            "no_open_hour",
            "schedule.quiet_margin_minutes",
            "the quiet margin leaves no time to start a call in any hour range",
        )

    # Follow-ups that contradict each other.
    outcomes = [rule.outcome for rule in campaign.follow_ups]
    for outcome in sorted({o for o in outcomes if outcomes.count(o) > 1}):
        add(
            "duplicate_follow_up",
            "follow_ups",
            f"two follow-up rules for {outcome!r}",
        )
    return problems
