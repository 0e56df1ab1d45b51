"""The TwiML webhook and the stream upgrade, signed by Twilio's own library."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from benchmarks.caller import SimulatedCaller
from tests.conftest import run_harness
from voice.settings import Settings

pytestmark = pytest.mark.models

TOKEN = "token"


@pytest.fixture
def signed_settings(settings: Settings) -> Settings:
    return replace(
        settings, validate_signatures=True, public_url="https://voice.example.com"
    )


async def test_signed_webhook_answers_connect_stream(
    models: Any, signed_settings: Settings
) -> None:
    """A correctly signed webhook gets <Connect><Stream> with the call's parameters."""
    async with run_harness(models, signed_settings) as h:
        url = (
            "https://voice.example.com/twilio/voice"
            "?call_id=c1&lead_id=l1&campaign_id=k1"
        )
        form = {
            "CallSid": "CA" + "2" * 32,
            "AccountSid": "AC" + "0" * 32,
            "From": "+15550001111",
        }
        signature = RequestValidator(TOKEN).compute_signature(url, form)
        async with aiohttp.ClientSession() as s:
            path = "/twilio/voice?call_id=c1&lead_id=l1&campaign_id=k1"
            async with s.post(
                h.url + path, data=form, headers={"X-Twilio-Signature": signature}
            ) as r:
                assert r.status == 200
                body = await r.text()
        root = ET.fromstring(body)
        stream = root.find("./Connect/Stream")
        assert stream is not None
        assert stream.get("url") == "wss://voice.example.com/twilio/stream"
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        assert params["call_id"] == "c1" and params["lead_id"] == "l1"
        assert params["nonce"]
        assert root.find("./Hangup") is not None and root.find("./Say") is not None


async def test_unsigned_or_forged_webhook_is_refused(
    models: Any, signed_settings: Settings
) -> None:
    """A missing or wrong signature answers 403 and registers nothing."""
    async with run_harness(models, signed_settings) as h:
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"X-Twilio-Signature": "bm9wZQ=="}):
                async with s.post(
                    h.url + "/twilio/voice", data={"CallSid": "CA1"}, headers=headers
                ) as r:
                    assert r.status == 403


async def test_stream_upgrade_requires_signature_and_nonce(
    models: Any, signed_settings: Settings
) -> None:
    """The upgrade must be signed, and `start` must carry a nonce from the webhook."""
    async with run_harness(models, signed_settings) as h:
        validator = RequestValidator(TOKEN)
        ws_signature = validator.compute_signature(
            "wss://voice.example.com/twilio/stream", {}
        )

        unsigned = SimulatedCaller(h.ws_url, custom_parameters={})
        with pytest.raises(Exception, match="403"):
            await unsigned.connect()

        bad_nonce = SimulatedCaller(
            h.ws_url,
            custom_parameters={"nonce": "made-up"},
            headers={"X-Twilio-Signature": ws_signature},
        )
        await bad_nonce.connect()
        await bad_nonce.wait_closed()
        assert bad_nonce.close_code == 1008

        url = "https://voice.example.com/twilio/voice?call_id=c9"
        form = {"CallSid": "CA" + "3" * 32}
        async with aiohttp.ClientSession() as s:
            async with s.post(
                h.url + "/twilio/voice?call_id=c9",
                data=form,
                headers={"X-Twilio-Signature": validator.compute_signature(url, form)},
            ) as r:
                stream = ET.fromstring(await r.text()).find("./Connect/Stream")
        assert stream is not None
        params = {
            p.get("name"): p.get("value") or "" for p in stream.findall("Parameter")
        }
        good = SimulatedCaller(
            h.ws_url,
            custom_parameters=params,
            headers={"X-Twilio-Signature": ws_signature},
        )
        async with good:
            while not good.media_times:
                await good.pause(0.1)
        record = await h.wait_record("c9")
        assert record["transcript"][0]["speaker"] == "agent"


async def test_healthz_and_metrics(harness: Any) -> None:
    """/healthz answers ok and /metrics is Prometheus text."""
    async with aiohttp.ClientSession() as s:
        async with s.get(harness.url + "/healthz") as r:
            assert (await r.json())["status"] == "ok"
        async with s.get(harness.url + "/metrics") as r:
            text = await r.text()
            assert r.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE voxdial_turn_latency_seconds histogram" in text
