"""Hanging up through Twilio's REST API, against the local stand-in."""

import pytest

from voice.errors import TwilioError
from voice.twilio_rest import TwilioRest
from voice.twilio_standin import TwilioStandin

SID = "AC" + "0" * 32


async def test_hang_up_live_then_already_ended() -> None:
    """A live call is completed; a second hang-up sees 20404 and returns False."""
    twilio = TwilioStandin(SID, "secret")
    await twilio.start()
    twilio.add_call("CA1")
    rest = TwilioRest(SID, "secret", base_url=twilio.base_url)
    try:
        assert await rest.hang_up("CA1") is True
        assert twilio.calls["CA1"].status == "completed"
        assert twilio.requests[0][2] == {"Status": "completed"}
        assert await rest.hang_up("CA1") is False
        assert await rest.hang_up("CA-unknown") is False
    finally:
        await rest.close()
        await twilio.stop()


async def test_bad_credentials_raise_twilio_error() -> None:
    """A refused request raises TwilioError with the status, not a bare HTTP error."""
    twilio = TwilioStandin(SID, "secret")
    await twilio.start()
    twilio.add_call("CA1")
    rest = TwilioRest(SID, "wrong", base_url=twilio.base_url)
    try:
        with pytest.raises(TwilioError, match="401"):
            await rest.hang_up("CA1")
    finally:
        await rest.close()
        await twilio.stop()
