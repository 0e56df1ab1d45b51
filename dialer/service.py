"""`voxdial dialer`: one dialer process, until SIGINT or SIGTERM.

It dials through Twilio's REST API (or whatever speaks it at
`VOXDIAL_TWILIO_API_BASE`, such as the local carrier stand-in), and gives
Twilio `VOXDIAL_PUBLIC_URL` as the address of the voice webhook and of the
status callbacks, both served by `voxdial serve`. With
`VOXDIAL_WHATSAPP_ACCESS_TOKEN` set it also sends WhatsApp campaigns'
templates through the Graph API at `VOXDIAL_WHATSAPP_API_BASE`; their
webhooks go to `voxdial serve` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from dialer.dialer import Dialer, DialerConfig
from dialer.twilio_carrier import TwilioCarrier
from dialer.whatsapp import WhatsAppAccount
from dialer.window import parse_jurisdictions
from voice.admin_cli import open_store
from voice.settings import Settings

__all__ = ["run_dialer"]

log = logging.getLogger(__name__)


def dialer_config(settings: Settings) -> DialerConfig:
    return DialerConfig(
        public_url=settings.public_base(),
        lease_s=settings.dialer_lease_s,
        tick_s=settings.dialer_tick_s,
        calls_per_second=settings.dialer_calls_per_second,
        reconcile_after_s=settings.dialer_reconcile_after_s,
        jurisdictions=parse_jurisdictions(settings.calling_hours),
    )


async def run_dialer(settings: Settings) -> int:
    if not settings.twilio_account_sid and not settings.whatsapp_access_token:
        log.error(
            "neither VOXDIAL_TWILIO_ACCOUNT_SID nor VOXDIAL_WHATSAPP_ACCESS_TOKEN "
            "is set: the dialer has nothing to dial or message with"
        )
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(settings, stack)
        carrier = TwilioCarrier(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            base_url=settings.twilio_api_base,
        )
        stack.push_async_callback(carrier.close)
        whatsapp = None
        if settings.whatsapp_access_token:
            whatsapp = WhatsAppAccount(
                settings.whatsapp_access_token, base_url=settings.whatsapp_api_base
            )
            stack.push_async_callback(whatsapp.close)
        dialer = Dialer(store, carrier, dialer_config(settings), whatsapp=whatsapp)
        await dialer.run(stop)
    return 0
