"""The slice of Twilio's REST API that the media server needs: ending a call.

Closing the media websocket does not hang up a call (Twilio moves on to the
TwiML after `<Connect>`), so the agent ends calls here. The base URL is a
setting so tests and the offline demo can point it at a local stand-in that
answers in Twilio's shape.
"""

from __future__ import annotations

import base64
import logging

import aiohttp

from voice.errors import TwilioError

log = logging.getLogger(__name__)

_ALREADY_ENDED = 20404


class TwilioRest:
    """An async client for the Calls resource of one Twilio account."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str = "https://api.twilio.com",
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._account_sid = account_sid
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}
        self._base = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    @property
    def configured(self) -> bool:
        return bool(self._account_sid)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client session, shared with the call's other clients."""
        return self._client()

    async def hang_up(self, call_sid: str) -> bool:
        """End a live call. Returns False when Twilio says it had already ended."""
        account = f"{self._base}/2010-04-01/Accounts/{self._account_sid}"
        url = f"{account}/Calls/{call_sid}.json"
        try:
            async with self._client().post(
                url,
                data={"Status": "completed"},
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.status == 404:
                    body = await response.json(content_type=None)
                    if isinstance(body, dict) and body.get("code") == _ALREADY_ENDED:
                        return False
                if response.status >= 400:
                    text = await response.text()
                    raise TwilioError(
                        f"hang-up of {call_sid} failed: HTTP {response.status}: "
                        f"{text[:200]}"
                    )
                return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TwilioError(f"hang-up of {call_sid} failed: {exc!r}") from exc
