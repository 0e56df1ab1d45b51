"""The WhatsApp half of `voxdial demo`: the same clinic, writing instead of calling.

Beside the voice campaign, the demo runs a second campaign on a WhatsApp
business number, with the same agent, fields, schedule, follow-ups and
calendar. Its leads are played by the Cloud API stand-in
(`dialer.whatsapp_standin`): the dialer processes send the template through
the real Graph API client, the stand-in posts signed webhooks to the media
server, and the scripted leads answer:

    booked           "Yes, I can make it. Please book it ..."  -> qualified
    not_interested   "No thanks, I am not interested anymore." -> not interested
    stop             "STOP"                                     -> do not call
    no_reply         silence: after the reply wait the no_answer rule sends
                     the template again
    not_on_whatsapp  the template fails (131026)                -> failed

Everything is set up through the admin API and read back through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from campaign_store.models import CallRecordModel, Lead, LeadStatus
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from voice import demo_scenarios as scenes
from voice.settings import Settings

__all__ = ["CHAT_SCENARIOS", "ChatResult", "WhatsAppDemo", "render"]

log = logging.getLogger("voxdial.demo")

NUMBER_ID = "106540352242922"
BUSINESS_ID = "100200300400500"
TEMPLATE = ("appointment_confirmation", "en_US")
VARIABLES = ["first_name", "appointment_time"]
BODY = (
    f"Hello {{{{1}}}}, this is {scenes.CLINIC}. Your appointment is on {{{{2}}}}. "
    "Can you make it? Reply here, or STOP to opt out."
)
PENDING_STATUS = (LeadStatus.NEW, LeadStatus.MESSAGED, LeadStatus.IN_CONVERSATION)
FINAL_STATUS = (
    LeadStatus.QUALIFIED,
    LeadStatus.NOT_INTERESTED,
    LeadStatus.DO_NOT_CALL,
    LeadStatus.COMPLETED,
)


@dataclass(frozen=True)
class ChatScenario:
    """How one lead answers on WhatsApp."""

    name: str
    replies: tuple[str, ...] = ()
    registered: bool = True
    expect: str = ""


CHAT_SCENARIOS: tuple[ChatScenario, ...] = (
    ChatScenario(
        "booked",
        ("Yes, I can make it. Please book it for me. Tuesdays suit me best.",),
        expect="qualified, the visit on the calendar",
    ),
    ChatScenario(
        "not_interested",
        ("No thanks, I am not interested anymore.",),
        expect="not interested",
    ),
    ChatScenario("stop", ("STOP",), expect="do not call"),
    ChatScenario("no_reply", expect="no answer, the template sent again"),
    ChatScenario("not_on_whatsapp", registered=False, expect="failed"),
)


@dataclass(frozen=True)
class ChatLead:
    planned: scenes.PlannedLead  # name, zone and appointment; its phone is ours
    scenario: ChatScenario


@dataclass
class ChatResult:
    """One WhatsApp lead after the run, as the admin API shows it."""

    chat: ChatLead
    lead: Lead
    conversations: list[CallRecordModel]  # newest first
    templates: int  # templates the stand-in accepted for the number


def plan_chat_leads(
    voice_leads: Sequence[scenes.PlannedLead], now: float
) -> list[ChatLead]:
    """One lead per scenario, in the voice plan's open zones, numbers of their own.

    The numbers end in 9xx, out of the voice list's way: an opt-out here puts
    the number on the tenant's do-not-call list, which both campaigns share.
    """
    callable_now = [lead for lead in voice_leads if lead.callable_now]
    # Visits of their own: one calendar holds both campaigns' bookings.
    taken = [
        datetime.fromisoformat(lead.appointment_start)
        .replace(tzinfo=ZoneInfo(lead.zone))
        .timestamp()
        for lead in voice_leads
    ]
    chats = []
    for i, scenario in enumerate(CHAT_SCENARIOS):
        base = callable_now[i % len(callable_now)]
        at = scenes.appointment_slot(base.zone, now, len(voice_leads) + i, taken)
        hour = at.strftime("%I:%M %p").lstrip("0")
        planned = replace(
            base,
            name=f"{scenes.FIRST_NAMES[-1 - i]} {base.name.split(' ')[-1]}",
            phone=f"{base.phone[:-3]}{900 + i}",
            appointment_start=at.strftime("%Y-%m-%dT%H:%M"),
            appointment_time=f"{at:%A, %B} {at.day} at {hour}",
        )
        chats.append(ChatLead(planned, scenario))
    return chats


class WhatsAppDemo:
    """The stand-in, the campaign, and its progress."""

    def __init__(self, leads: Sequence[ChatLead], *, fast: bool) -> None:
        self.leads = list(leads)
        self.fast = fast
        self.token = "EAAG" + secrets.token_hex(16)
        self.app_secret = secrets.token_hex(16)
        self.verify_token = secrets.token_hex(8)
        contacts = {
            c.planned.phone: Contact(
                name=c.planned.name,
                replies=c.scenario.replies,
                registered=c.scenario.registered,
                reply_after_s=1.0,
            )
            for c in self.leads
        }
        self.standin = WhatsAppStandin(
            access_token=self.token,
            app_secret=self.app_secret,
            phone_number_id=NUMBER_ID,
            business_account_id=BUSINESS_ID,
            templates={TEMPLATE: len(VARIABLES)},
            contacts=contacts,
            status_delay_s=0.3,
        )
        self.by_phone = {c.planned.phone: c for c in self.leads}

    async def start(self) -> None:
        await self.standin.start()

    async def stop(self) -> None:
        await self.standin.stop()

    def server_settings(self, settings: Settings) -> Settings:
        return replace(
            settings,
            whatsapp_api_base=self.standin.base_url,
            whatsapp_access_token=self.token,
            whatsapp_app_secret=self.app_secret,
            whatsapp_verify_token=self.verify_token,
        )

    def dialer_env(self) -> dict[str, str]:
        return {
            "VOXDIAL_WHATSAPP_API_BASE": self.standin.base_url,
            "VOXDIAL_WHATSAPP_ACCESS_TOKEN": self.token,
        }

    async def subscribe(self, server_url: str) -> None:
        """Meta's handshake against the media server, then the webhooks go there."""
        url = f"{server_url}/whatsapp/webhook"
        status, _ = await self.standin.verify_webhook(url, self.verify_token)
        if status != 200:
            raise RuntimeError(f"the webhook handshake failed: HTTP {status}")
        self.standin.webhook_url = url
        log.info("WhatsApp stand-in subscribed to %s (handshake ok)", url)

    async def create_campaign(
        self, api: Any, agent_id: str, parts: dict[str, Any], csv_text: str
    ) -> str:
        """The WhatsApp campaign through the admin API; `parts` as the voice one."""
        campaign = await api.call(
            "POST",
            "/campaigns",
            {
                "name": "Appointment confirmations on WhatsApp",
                "description": f"{scenes.CLINIC}: the same visits, by message.",
                "agent_id": agent_id,
                "fields": parts["fields"],
            },
        )
        path = f"/campaigns/{campaign['id']}"
        channel = {
            "kind": "whatsapp",
            "business_account_id": BUSINESS_ID,
            "phone_number_id": NUMBER_ID,
            "template": {
                "name": TEMPLATE[0],
                "language": TEMPLATE[1],
                "variables": VARIABLES,
                "body": BODY,
            },
            # A day in production; short here so the follow-up shows.
            "reply_wait_minutes": 0.25 if self.fast else 2.0,
        }
        await api.call("PUT", path + "/channel", channel)
        await api.call("PUT", path + "/schedule", parts["schedule"])
        await api.call("PUT", path + "/follow-ups", {"follow_ups": parts["follow_ups"]})
        await api.call("PUT", path + "/calendar", parts["calendar"])
        report = await api.call("POST", path + "/leads/import", csv_text=csv_text)
        if report["rejected"]:
            raise RuntimeError(f"the WhatsApp lead list was refused: {report}")
        review = await api.call("GET", path + "/review")
        if not review["ready"]:
            raise RuntimeError(f"the WhatsApp campaign is not ready: {review}")
        await api.call("POST", path + "/launch")
        log.info("WhatsApp campaign %s launched through the admin API", campaign["id"])
        return str(campaign["id"])

    async def wait(
        self,
        api: Any,
        campaign_id: str,
        *,
        horizon_s: float,
        limit_s: float,
        stop: asyncio.Event,
    ) -> bool:
        """Log each lead's moves until none has anything left to do soon."""
        shown: dict[str, str] = {}
        deadline = time.monotonic() + limit_s
        while True:
            leads = await api.leads(campaign_id)
            now = time.time()
            for lead in leads:
                if shown.get(lead.id, "new") != lead.status.value:
                    scene = self.by_phone[lead.phone].scenario.name
                    log.info(
                        "WhatsApp %-13s %-17s -> %s",
                        lead.name,
                        f"({scene})",
                        lead.status.value,
                    )
                shown[lead.id] = lead.status.value
            if not any(_pending(lead, now, horizon_s) for lead in leads):
                return True
            if time.monotonic() > deadline:
                log.warning("WhatsApp leads still in progress at the time limit")
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
                return False

    async def results(self, api: Any, campaign_id: str) -> list[ChatResult]:
        rows = []
        for lead in await api.leads(campaign_id):
            detail = await api.call("GET", f"/campaigns/{campaign_id}/leads/{lead.id}")
            rows.append(
                ChatResult(
                    self.by_phone[lead.phone],
                    Lead.model_validate(detail["lead"]),
                    [CallRecordModel.model_validate(c) for c in detail["calls"]],
                    sum(m.type == "template" for m in self.standin.sent_to(lead.phone)),
                )
            )
        order = {c.planned.phone: i for i, c in enumerate(self.leads)}
        return sorted(rows, key=lambda r: order[r.lead.phone])


def _pending(lead: Lead, now: float, horizon_s: float) -> bool:
    if lead.status in PENDING_STATUS:
        return True
    if lead.status in FINAL_STATUS or lead.next_attempt_at is None:
        return False
    return lead.next_attempt_at <= now + horizon_s


def _messages(conversation: CallRecordModel) -> str:
    parts = []
    for message in conversation.messages[:4]:
        text = message.text if len(message.text) <= 50 else message.text[:47] + "..."
        arrow = "agent" if message.direction == "out" else "lead"
        parts.append(f'{arrow}: "{text}" ({message.status})')
    return " / ".join(parts)


def render(rows: Sequence[ChatResult], violations: int) -> str:
    """The WhatsApp campaign's table, in the summary's style."""
    head = (
        f"{'lead':<20} {'scenario':<16} {'status':<15} {'outcome':<15} "
        f"{'templates':>9}  {'messages':>8}"
    )
    lines = ["", "WhatsApp campaign (read back through the admin API)", head]
    lines.append("-" * len(head))
    for row in rows:
        lead = row.lead
        messages = sum(len(c.messages) for c in row.conversations)
        lines.append(
            f"{lead.name[:20]:<20} {row.chat.scenario.name:<16} "
            f"{lead.status.value:<15} {(lead.last_outcome or '-'):<15} "
            f"{row.templates:>9}  {messages:>8}"
        )
        if not row.conversations:
            continue
        latest = row.conversations[0]
        if latest.booking:
            lines.append(
                f"    booked: {latest.booking['title']} at {latest.booking['start']}"
            )
        lines += textwrap.wrap(
            _messages(latest), 100, initial_indent="    ", subsequent_indent="      "
        )
    lines.append(
        f"{len(rows)} WhatsApp leads; {violations} free-text message(s) sent "
        "outside a customer-service window."
    )
    return "\n".join(lines)
