"""What the campaign store keeps: agents, campaigns, leads, calls, API keys.

Each record is a pydantic model that forbids unknown fields, so the same
classes validate what the admin API receives (a 422 naming every bad field)
and describe it in the OpenAPI document. Records are stored msgpack-encoded
with a schema version (see `campaign_store.codec`).

Times are Unix seconds (UTC) as floats; local times of day are "HH:MM"
strings evaluated in a named IANA zone when they are used, never as a stored
offset.
"""

from __future__ import annotations

import re
import time
import zoneinfo
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
HHMM_RE = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"

# Lead attributes that prompts may always use, whatever the campaign's fields.
STANDARD_PLACEHOLDERS = frozenset({"name", "phone", "first_name"})

FieldName = Annotated[str, StringConstraints(pattern=NAME_RE)]
ShortText = Annotated[str, StringConstraints(max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]


def now() -> float:
    return time.time()


def check_zone(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows, else ValueError."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


def check_e164(number: str) -> str:
    if not E164_RE.match(number):
        raise ValueError("must be an E.164 number such as +14155550123")
    return number


def placeholders(text: str) -> set[str]:
    """The `{{field}}` names used in a prompt or greeting."""
    return {m.group(1) for m in PLACEHOLDER_RE.finditer(text)}


class Strict(BaseModel):
    """Unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# Agents.


class AgentTool(StrEnum):
    END_CALL = "end_call"
    SCHEDULE_CALLBACK = "schedule_callback"
    BOOK_MEETING = "book_meeting"
    OPT_OUT = "opt_out"


class LLMChoice(Strict):
    """Per-agent LLM settings; empty values fall back to the server's."""

    model: ShortText = ""
    temperature: float = Field(default=0.4, ge=0.0, le=2.0)
    max_tokens: int = Field(default=200, ge=1, le=4096)


class AgentInput(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    system_prompt: LongText = ""
    greeting: Annotated[str, StringConstraints(max_length=2000)] = ""
    voice: ShortText = "en_US-joe-medium"
    llm: LLMChoice = Field(default_factory=LLMChoice)
    tools: list[AgentTool] = Field(
        default_factory=lambda: [AgentTool.END_CALL, AgentTool.OPT_OUT],
        max_length=len(AgentTool),
    )


class AgentPatch(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    system_prompt: LongText | None = None
    greeting: Annotated[str, StringConstraints(max_length=2000)] | None = None
    voice: ShortText | None = None
    llm: LLMChoice | None = None
    tools: list[AgentTool] | None = None


class Agent(AgentInput):
    id: str
    tenant: str
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


# Campaign parts.


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ARCHIVED = "archived"


class PhoneChannel(Strict):
    kind: Literal["phone"] = "phone"
    caller_id: str = Field(description="The E.164 number calls come from.")

    @field_validator("caller_id")
    @classmethod
    def _e164(cls, value: str) -> str:
        return check_e164(value)


class WhatsAppTemplate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Z]{2})?$")]
    variables: list[FieldName] = Field(
        default_factory=list,
        max_length=20,
        description="Lead fields filling the template's {{1}}, {{2}}, ... in order.",
    )
    body: Annotated[str, StringConstraints(max_length=1024)] = Field(
        default="",
        description="The approved template's body text, with its {{1}}, {{2}}, "
        "...: what the transcript and the agent show as the opening message. "
        "Empty: the agent's greeting stands for it.",
    )

    def numbered(self) -> set[int]:
        """The {{n}} of `body`."""
        return {int(n) for n in re.findall(r"\{\{\s*(\d+)\s*\}\}", self.body)}

    def render(self, values: list[str]) -> str:
        """`body` with each {{n}} filled from `values`."""

        def fill(match: re.Match[str]) -> str:
            n = int(match.group(1))
            return values[n - 1] if 0 < n <= len(values) else match.group(0)

        return re.sub(r"\{\{\s*(\d+)\s*\}\}", fill, self.body)


class WhatsAppChannel(Strict):
    kind: Literal["whatsapp"] = "whatsapp"
    business_account_id: Annotated[str, StringConstraints(pattern=r"^\d{5,32}$")]
    phone_number_id: Annotated[str, StringConstraints(pattern=r"^\d{5,32}$")]
    template: WhatsAppTemplate
    reply_wait_minutes: float = Field(
        default=24 * 60,
        gt=0,
        le=60 * 24 * 30,
        description="How long a template waits for a reply before the lead "
        "counts as not answering (the no_answer follow-up rule then applies).",
    )


Channel = Annotated[PhoneChannel | WhatsAppChannel, Field(discriminator="kind")]


class HourRange(Strict):
    """Local hours, start inclusive, end exclusive; end < start crosses midnight."""

    start: Annotated[str, StringConstraints(pattern=HHMM_RE)]
    end: Annotated[str, StringConstraints(pattern=HHMM_RE)]

    @model_validator(mode="after")
    def _not_empty(self) -> HourRange:
        if self.start == self.end:
            raise ValueError("start and end are the same: the range is empty")
        return self


class Pacing(Strict):
    calls_per_minute: int = Field(default=10, ge=1, le=600)
    max_concurrent: int = Field(default=5, ge=1, le=1000)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Schedule(Strict):
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS[:5]), max_length=7
    )
    hours: list[HourRange] = Field(
        default_factory=lambda: [HourRange(start="09:00", end="17:00")],
        max_length=12,
    )
    timezone_policy: Literal["lead", "campaign"] = Field(
        default="lead",
        description="'lead': each lead's own zone, the campaign zone when it has "
        "none; 'campaign': the campaign zone for everyone.",
    )
    timezone: str = "America/New_York"
    quiet_margin_minutes: int = Field(
        default=0, ge=0, le=240, description="No call starts this close to closing."
    )
    pacing: Pacing = Field(default_factory=Pacing)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("days")
    @classmethod
    def _unique_days(cls, value: list[Weekday]) -> list[Weekday]:
        if len(set(value)) != len(value):
            raise ValueError("a day is listed twice")
        return value


FieldType = Literal["string", "integer", "number", "boolean", "date", "email", "enum"]


class FieldDef(Strict):
    name: FieldName
    type: FieldType = "string"
    required: bool = False
    default: str | int | float | bool | None = None
    extract: bool = Field(
        default=False, description="Filled from the transcript after each call."
    )
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    choices: list[ShortText] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _choices(self) -> FieldDef:
        if self.type == "enum" and not self.choices:
            raise ValueError("an enum field needs choices")
        if self.type != "enum" and self.choices:
            raise ValueError("only enum fields have choices")
        if self.name in STANDARD_PLACEHOLDERS:
            raise ValueError(f"{self.name!r} is a standard lead attribute")
        return self


class Outcome(StrEnum):
    """How a call (or conversation) ended, as far as the campaign cares."""

    QUALIFIED = "qualified"
    CALLBACK = "callback"
    NOT_INTERESTED = "not_interested"
    WRONG_PERSON = "wrong_person"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    DO_NOT_CALL = "do_not_call"
    FAILED = "failed"
    COMPLETED = "completed"


class FollowUpRule(Strict):
    outcome: Literal["no_answer", "busy", "voicemail", "failed", "callback"]
    delay_minutes: int = Field(
        default=60,
        ge=0,
        le=60 * 24 * 30,
        description="Wait this long before the next try ('callback': used only "
        "when the lead named no time).",
    )
    max_attempts: int = Field(default=3, ge=1, le=20)


class McpBindingInput(Strict):
    name: FieldName
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    allowed_tools: list[Annotated[str, StringConstraints(max_length=128)]] = Field(
        default_factory=list, max_length=100
    )
    headers: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")],
        Annotated[str, StringConstraints(max_length=4096)] | None,
    ] = Field(
        default_factory=dict,
        max_length=20,
        description="Secret values, write-only. null keeps the value already set.",
    )


class McpBinding(Strict):
    name: str
    url: str
    transport: Literal["streamable_http", "sse"]
    allowed_tools: list[str]
    headers: dict[str, str]


class SecretView(Strict):
    set: bool
    last4: str


class McpBindingView(Strict):
    name: str
    url: str
    transport: Literal["streamable_http", "sse"]
    allowed_tools: list[str]
    headers: dict[str, SecretView]


def secret_view(value: str) -> SecretView:
    # Short secrets show nothing: four characters of six would give most away.
    return SecretView(set=bool(value), last4=value[-4:] if len(value) >= 12 else "")


def binding_view(binding: McpBinding) -> McpBindingView:
    return McpBindingView(
        name=binding.name,
        url=binding.url,
        transport=binding.transport,
        allowed_tools=binding.allowed_tools,
        headers={k: secret_view(v) for k, v in binding.headers.items()},
    )


# Where booked meetings go, and where call results are sent.


class CalendarInput(Strict):
    """The campaign's connected calendar (Google Calendar).

    `credentials` is the JSON text of a Google service-account key, or of
    `{"client_id", "client_secret", "refresh_token"}` for an OAuth grant;
    write-only: null keeps the stored value.
    """

    provider: Literal["google"] = "google"
    calendar_id: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    credentials: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    subject: Annotated[str, StringConstraints(max_length=320)] = Field(
        default="", description="A user to act as (domain-wide delegation)."
    )
    meeting_title: ShortText = "Meeting"
    default_duration_minutes: int = Field(default=30, ge=5, le=240)


class CalendarBinding(Strict):
    provider: Literal["google"] = "google"
    calendar_id: str
    credentials: str
    subject: str = ""
    meeting_title: str = "Meeting"
    default_duration_minutes: int = 30


class CalendarView(Strict):
    provider: Literal["google"]
    calendar_id: str
    credentials: SecretView
    subject: str
    meeting_title: str
    default_duration_minutes: int


def calendar_view(binding: CalendarBinding) -> CalendarView:
    data = binding.model_dump(exclude={"credentials"})
    return CalendarView(credentials=secret_view(binding.credentials), **data)


class WebhookInput(Strict):
    """A signed POST of every call's result. `secret`: write-only, null keeps it."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]
    secret: Annotated[str, StringConstraints(min_length=16, max_length=256)] | None = (
        None
    )


class WebhookBinding(Strict):
    url: str
    secret: str


class WebhookView(Strict):
    url: str
    secret: SecretView


def webhook_view(binding: WebhookBinding) -> WebhookView:
    return WebhookView(url=binding.url, secret=secret_view(binding.secret))


class CampaignInput(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    agent_id: str | None = None
    channel: Channel | None = None
    schedule: Schedule = Field(default_factory=Schedule)
    fields: list[FieldDef] = Field(default_factory=list, max_length=100)
    follow_ups: list[FollowUpRule] = Field(default_factory=list, max_length=20)
    mcp_bindings: list[McpBindingInput] = Field(default_factory=list, max_length=20)


class CampaignPatch(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    agent_id: str | None = None


class Campaign(Strict):
    id: str
    tenant: str
    name: str
    description: str = ""
    agent_id: str | None = None
    channel: Channel | None = None
    schedule: Schedule = Field(default_factory=Schedule)
    fields: list[FieldDef] = Field(default_factory=list)
    follow_ups: list[FollowUpRule] = Field(default_factory=list)
    mcp_bindings: list[McpBinding] = Field(default_factory=list)
    calendar: CalendarBinding | None = None
    webhook: WebhookBinding | None = None
    status: CampaignStatus = CampaignStatus.DRAFT
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    launched_at: float | None = None
    paused_at: float | None = None

    def field(self, name: str) -> FieldDef | None:
        return next((f for f in self.fields if f.name == name), None)


class CampaignView(Strict):
    """A campaign as the API shows it: secrets masked."""

    id: str
    name: str
    description: str
    agent_id: str | None
    channel: Channel | None
    schedule: Schedule
    fields: list[FieldDef]
    follow_ups: list[FollowUpRule]
    mcp_bindings: list[McpBindingView]
    calendar: CalendarView | None = None
    webhook: WebhookView | None = None
    status: CampaignStatus
    created_at: float
    updated_at: float
    launched_at: float | None
    paused_at: float | None

    @classmethod
    def of(cls, campaign: Campaign) -> CampaignView:
        data = campaign.model_dump(
            exclude={"tenant", "mcp_bindings", "calendar", "webhook"}
        )
        data["mcp_bindings"] = [binding_view(b) for b in campaign.mcp_bindings]
        if campaign.calendar is not None:
            data["calendar"] = calendar_view(campaign.calendar)
        if campaign.webhook is not None:
            data["webhook"] = webhook_view(campaign.webhook)
        return cls.model_validate(data)


# Leads.


class LeadStatus(StrEnum):
    NEW = "new"
    QUEUED = "queued"
    DIALING = "dialing"
    IN_CALL = "in_call"
    MESSAGED = "messaged"  # WhatsApp: the template is out, no reply yet
    IN_CONVERSATION = "in_conversation"  # WhatsApp: the lead has answered
    QUALIFIED = "qualified"
    CALLBACK = "callback"
    NOT_INTERESTED = "not_interested"
    NO_ANSWER = "no_answer"
    VOICEMAIL = "voicemail"
    DO_NOT_CALL = "do_not_call"
    FAILED = "failed"
    COMPLETED = "completed"


class TimezoneSource(StrEnum):
    GIVEN = "given"  # a column of the import, or the API request
    NUMBER = "number"  # inferred from the number: one zone only
    CAMPAIGN = "campaign"  # the number spans several zones, or none is known


FieldValue = str | int | float | bool | None


class LeadInput(Strict):
    phone: Annotated[str, StringConstraints(min_length=3, max_length=32)]
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    timezone: str | None = None
    fields: dict[FieldName, FieldValue] = Field(default_factory=dict, max_length=100)
    default_region: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = (
        None
    )


class Lead(Strict):
    id: str
    campaign_id: str
    seq: int = 0
    phone: str
    name: str = ""
    timezone: str
    timezone_source: TimezoneSource = TimezoneSource.GIVEN
    timezone_note: str = ""
    fields: dict[str, FieldValue] = Field(default_factory=dict)
    status: LeadStatus = LeadStatus.NEW
    attempts: int = 0
    next_attempt_at: float | None = None
    last_outcome: str = ""
    calls: list[str] = Field(default_factory=list)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)

    def placeholder_values(self) -> dict[str, str]:
        """The lead's values for `{{placeholders}}`, standard ones included."""
        values = {k: "" if v is None else str(v) for k, v in self.fields.items()}
        values["name"] = self.name
        values["first_name"] = self.name.split(" ", 1)[0] if self.name else ""
        return values


# Calls.


class TurnLatencyRecord(Strict):
    turn_detection_s: float | None = None
    stt_s: float | None = None
    llm_first_token_s: float | None = None
    tts_first_audio_s: float | None = None
    first_audio_s: float | None = None


class TurnRecord(Strict):
    speaker: Literal["caller", "agent", "lead"]  # "lead": a WhatsApp message
    text: str
    started_at: float
    ended_at: float
    interrupted: bool = False
    source: str = "speech"
    latency: TurnLatencyRecord | None = None


class MessageRecord(Strict):
    """One WhatsApp message of a conversation, in or out."""

    id: str  # WhatsApp's message id (wamid)
    direction: Literal["in", "out"]
    kind: Literal["template", "text"] = "text"
    text: str
    at: float
    # out: accepted -> sent -> delivered -> read, or failed; in: received.
    status: str = "accepted"
    status_at: float | None = None
    error: str = ""


class CallRecordModel(Strict):
    """A call, or a WhatsApp conversation (`channel`), with what it left behind.

    A conversation keeps its messages in `messages` and, as a call does, the
    words in `transcript`; it opens when its template is accepted and ends
    with an outcome like a call's.
    """

    id: str
    campaign_id: str
    lead_id: str
    call_sid: str = ""
    stream_sid: str = ""
    created_at: float = Field(default_factory=now)
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    outcome: str = ""
    transcript: list[TurnRecord] = Field(default_factory=list)
    recording_path: str = ""
    extracted: dict[str, FieldValue] = Field(default_factory=dict)
    # Fields whose extracted value failed validation: name -> why (left empty).
    extraction_flags: dict[str, str] = Field(default_factory=dict)
    outcome_source: str = ""  # "agent", "opt_out" or "rule"
    outcome_reason: str = ""  # the agent's one sentence, from end_call
    callback_at: float | None = None
    callback_local: str = ""
    booking: dict[str, str] | None = None
    opted_out: bool = False
    errors: list[str] = Field(default_factory=list)
    barge_ins: int = 0
    channel: Literal["phone", "whatsapp"] = "phone"
    messages: list[MessageRecord] = Field(default_factory=list)
    # WhatsApp: when free text may no longer be sent (24 h after the lead's
    # last message), and when a template left unanswered counts as no answer.
    service_window_until: float | None = None
    reply_by: float | None = None
    # WhatsApp: how many of the lead's messages the agent has answered.
    lead_messages_answered: int = 0

    def duration_s(self) -> float | None:
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.answered_at)


# Attempts: one dial of a lead.


class Attempt(Strict):
    """One dial of a lead, from its record before the dial to its settlement.

    `placed`: "pending" until the carrier answers the dial request, then
    "placed" (a call SID), "not_placed" (the carrier refused it) or "unknown"
    (no answer: the call may exist, and is reconciled before any retry).
    """

    id: str
    campaign_id: str
    lead_id: str
    token: str
    owner: str
    number: int  # the lead's attempt count including this one
    to: str
    from_: str
    created_at: float
    placed: Literal["pending", "placed", "not_placed", "unknown"] = "pending"
    call_sid: str = ""
    carrier_status: str = ""
    answered: bool = False
    answered_by: str = ""
    duration_s: int | None = None
    result: str = ""
    settled_at: float | None = None
    error: str = ""
    channel: Literal["phone", "whatsapp"] = "phone"
    message_id: str = ""  # WhatsApp: the template's wamid


# API keys.


class ApiKey(Strict):
    id: str
    tenant: str
    name: str = ""
    key_hash: str  # sha256 of the key, hex
    created_at: float = Field(default_factory=now)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as plain msgpack-able data."""
    return model.model_dump(mode="json")
