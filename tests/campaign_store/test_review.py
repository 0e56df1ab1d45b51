"""The launch review: every blocking problem, listed at once."""

from __future__ import annotations

from campaign_store.models import (
    Agent,
    Campaign,
    FieldDef,
    FollowUpRule,
    HourRange,
    PhoneChannel,
    Schedule,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.review import review


def _agent(prompt: str = "Confirm {{day}} with {{name}}.") -> Agent:
    return Agent(
        id="agt_1",
        tenant="acme",
        name="A",
        system_prompt=prompt,
        greeting="Hi {{name}}",
    )


def _campaign(**parts: object) -> Campaign:
    base: dict[str, object] = {
        "id": "cmp_1",
        "tenant": "acme",
        "name": "C",
        "agent_id": "agt_1",
        "channel": PhoneChannel(caller_id="+14155550100"),
        "fields": [FieldDef(name="day")],
    }
    base.update(parts)
    return Campaign.model_validate(base)


def test_a_complete_campaign_has_no_problems() -> None:
    """Agent, channel, leads, fields for every placeholder: ready."""
    assert review(_campaign(), _agent(), leads=3) == []


def test_every_problem_is_listed() -> None:
    """No agent, no channel, no leads and no days are all reported together."""
    campaign = _campaign(agent_id=None, channel=None, schedule=Schedule(days=[]))
    codes = [p.code for p in review(campaign, None, leads=0)]
    assert codes == ["no_agent", "no_leads", "no_channel", "no_days"]


def test_placeholders_need_fields() -> None:
    """A {{placeholder}} with no field of that name blocks launch, naming it."""
    problems = review(_campaign(), _agent("Talk about {{budget}}."), leads=1)
    assert [(p.code, p.path) for p in problems] == [
        ("unknown_placeholder", "agent.system_prompt")
    ]
    assert "{{budget}}" in problems[0].message


def test_quiet_margin_that_closes_every_window() -> None:
    """A quiet margin as long as every hour range leaves no open hour."""
    schedule = Schedule(
        hours=[HourRange(start="09:00", end="10:00")], quiet_margin_minutes=60
    )
    codes = [p.code for p in review(_campaign(schedule=schedule), _agent(), leads=1)]
    assert codes == ["no_open_hour"]


def test_windows_may_cross_midnight() -> None:
    """22:00-02:00 is four hours long, not negative."""
    schedule = Schedule(
        hours=[HourRange(start="22:00", end="02:00")], quiet_margin_minutes=60
    )
    assert review(_campaign(schedule=schedule), _agent(), leads=1) == []


def test_template_variables_and_duplicate_rules() -> None:
    """WhatsApp template variables must be fields; one follow-up rule per outcome."""
    channel = WhatsAppChannel(
        business_account_id="123456",
        phone_number_id="654321",
        template=WhatsAppTemplate(
            name="hello", language="en_US", variables=["name", "plan"]
        ),
    )
    rules = [FollowUpRule(outcome="busy"), FollowUpRule(outcome="busy")]
    codes = [
        p.code
        for p in review(_campaign(channel=channel, follow_ups=rules), _agent(), leads=1)
    ]
    assert codes == ["unknown_template_variable", "duplicate_follow_up"]


def test_a_template_body_must_number_every_variable() -> None:
    """A body's {{n}} are exactly 1..len(variables); without a body, no check."""
    template = WhatsAppTemplate(
        name="hello", language="en_US", variables=["name"], body="Hi {{1}} {{2}}"
    )
    channel = WhatsAppChannel(
        business_account_id="123456", phone_number_id="654321", template=template
    )
    codes = [p.code for p in review(_campaign(channel=channel), _agent(), leads=1)]
    assert codes == ["template_body_mismatch"]
    template = template.model_copy(update={"body": "Hi {{ 1 }}!"})
    channel = channel.model_copy(update={"template": template})
    assert review(_campaign(channel=channel), _agent(), leads=1) == []
    assert template.render(["Ada"]) == "Hi Ada!"
