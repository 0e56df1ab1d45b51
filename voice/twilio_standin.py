"""A local stand-in for the Calls resource of Twilio's REST API.

It answers in Twilio's shape (paths, Basic auth with the account SID and auth
token, form-encoded bodies, JSON resources, `{"code": 20404}` errors) so the
real client in `voice.twilio_rest` runs unchanged against it in tests and in
the offline demo.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class StandinCall:
    sid: str
    status: str = "in-progress"
    updates: list[dict[str, str]] = field(default_factory=list)


class TwilioStandin:
    """Twilio's REST API for one account, on a real socket."""

    def __init__(
        self, account_sid: str = "AC" + "0" * 32, auth_token: str = "token"
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.calls: dict[str, StandinCall] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def add_call(self, sid: str, status: str = "in-progress") -> StandinCall:
        call = self.calls[sid] = StandinCall(sid, status)
        return call

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post(
            "/2010-04-01/Accounts/{account}/Calls/{sid}.json", self._update_call
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        address = self._runner.addresses[0]
        self.base_url = f"http://{address[0]}:{address[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(
            f"{self.account_sid}:{self.auth_token}".encode()
        ).decode()
        return request.headers.get("Authorization", "") == f"Basic {expected}"

    async def _update_call(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        sid = request.match_info["sid"]
        self.requests.append((request.method, request.path, form))
        if (
            not self._authorized(request)
            or request.match_info["account"] != self.account_sid
        ):
            return _error(401, 20003, "Authenticate")
        call = self.calls.get(sid)
        if call is None or call.status in ("completed", "canceled", "failed"):
            return _error(
                404, 20404, f"The requested resource {request.path} was not found"
            )
        call.updates.append(form)
        if form.get("Status") in ("completed", "canceled"):
            call.status = form["Status"]
        return web.json_response(
            {"sid": sid, "account_sid": self.account_sid, "status": call.status}
        )


def _error(status: int, code: int, message: str) -> web.Response:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)
