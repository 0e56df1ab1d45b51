"""The agent's LLM: a client for any OpenAI-compatible chat-completions server.

`ChatClient.stream` posts one turn's messages and yields what the model says
as it arrives: `TextDelta` pieces of the reply, a `ToolCall` per complete tool
call, and `Done` last. Every failure (no connection, no first token in time, a
stream that stalls or breaks, an error status, a chunk that is not JSON)
surfaces as `LLMError`; the API key never appears in a message or a log line.

`SentenceSplitter` turns the text pieces into chunks TTS can speak, and
`render_template` fills an agent's prompt with the lead's fields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from pipelines.errors import LLMError

__all__ = [
    "ChatClient",
    "Done",
    "LLMConfig",
    "LLMEvent",
    "SentenceSplitter",
    "TextDelta",
    "ToolCall",
    "render_template",
    "tool_calls_message",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMConfig:
    """Where the model is and how to ask it.

    `timeout_s` bounds the connect plus the wait for the first token, and then
    each silence between two pieces of the stream.
    """

    base_url: str
    api_key: str = field(repr=False)
    model: str
    timeout_s: float = 10.0
    temperature: float = 0.7
    max_tokens: int = 256


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One complete tool call; `arguments` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Done:
    """The reply ended; always the last event of a stream."""

    finish_reason: str
    usage: dict[str, Any] | None = None


LLMEvent = TextDelta | ToolCall | Done


class _StreamDecoder:
    """Server-sent events in, `LLMEvent`s out; no I/O."""

    def __init__(self) -> None:
        self.done = False  # [DONE] arrived
        self.started = False  # the model produced text or a tool call
        self._data: list[str] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, str]] = {}
        self._calls_sent = False

    def feed(self, raw: bytes) -> list[LLMEvent]:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line:
            # An event's data lines are joined until the blank line ends it.
            if line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
            return []  # comments (keep-alives), `event:` and `id:` fields
        return self._dispatch()

    def finish(self) -> list[LLMEvent]:
        """The body ended: flush what is pending and close with `Done`."""
        events = self._dispatch()
        if not self.done and self._finish_reason is None:
            raise LLMError("the LLM stream ended before it finished")
        events.extend(self._tool_calls())
        events.append(Done(self._finish_reason or "stop", self._usage))
        return events

    def _dispatch(self) -> list[LLMEvent]:
        if not self._data:
            return []
        data = "\n".join(self._data)
        self._data.clear()
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LLMError(
                f"the LLM sent a chunk that is not JSON: {data[:80]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise LLMError(f"the LLM sent a chunk that is not an object: {data[:80]!r}")
        return self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> list[LLMEvent]:
        if "error" in chunk:
            raise LLMError(f"the LLM failed mid-stream: {_error_text(chunk)}")
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        events: list[LLMEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we ask for one choice; ignore any others
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.started = True
                events.append(TextDelta(content))
            for position, part in enumerate(delta.get("tool_calls") or ()):
                self.started = True
                self._add_call_part(position, part)
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
                events.extend(self._tool_calls())
        return events

    def _add_call_part(self, position: int, part: Any) -> None:
        if not isinstance(part, dict):
            raise LLMError("the LLM sent a malformed tool call")
        # Some servers omit `index` when they send each call whole.
        call = self._calls.setdefault(
            int(part.get("index", position)), {"id": "", "name": "", "arguments": ""}
        )
        function = part.get("function") or {}
        call["id"] = call["id"] or str(part.get("id") or "")
        call["name"] = call["name"] or str(function.get("name") or "")
        call["arguments"] += str(function.get("arguments") or "")

    def _tool_calls(self) -> list[LLMEvent]:
        if self._calls_sent:
            return []
        self._calls_sent = True
        events: list[LLMEvent] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call["name"]:
                raise LLMError("the LLM sent a tool call without a name")
            events.append(
                ToolCall(
                    call["id"] or f"call_{index}",
                    call["name"],
                    call["arguments"] or "{}",
                )
            )
        return events


def _error_text(payload: Any) -> str:
    """The human message inside an error body, whichever server wrote it."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error", "message", "detail"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    return str(payload)[:200]


class ChatClient:
    """Talks to one chat-completions server; one per process, shared by calls.

    Pass a session to share its connection pool; otherwise the client makes
    one on first use and closes it in `close`.
    """

    def __init__(
        self, config: LLMConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.config = config
        self._session = session
        self._owns_session = session is None
        self._url = config.base_url.rstrip("/") + "/chat/completions"

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        """Yield the reply to `messages` as it is generated.

        Iterate inside `contextlib.aclosing` (or cancel the task) to stop
        early: the HTTP response is closed as soon as the generator is.
        """
        log = log or logger
        timeout_s = self.config.timeout_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_deadline = started + timeout_s
        body = self._body(messages, tools, stream=True)
        body["stream_options"] = {"include_usage": True}
        log.debug("LLM request: %d messages, %d tools", len(messages), len(tools or ()))
        response = await self._post(body, first_deadline)

        completed = False
        try:
            await self._check_status(response)
            decoder = _StreamDecoder()
            while not decoder.done:
                # Before the first token the deadline is fixed; after it, the
                # stream may pause for at most `timeout_s` between lines.
                waited_for_first = not decoder.started
                deadline = (
                    first_deadline if waited_for_first else loop.time() + timeout_s
                )
                line = await self._readline(response, deadline, waited_for_first)
                if not line:
                    break
                for event in decoder.feed(line):
                    yield event
            tail = decoder.finish()
            completed = True
        finally:
            # Release keeps the connection for the next turn; a reply cut
            # short (barge-in, error) closes it so the server stops generating.
            if completed:
                response.release()
            else:
                response.close()

        # The body is fully read before `Done` goes out, so a caller that
        # stops at `Done` leaves nothing open.
        log.debug("LLM reply complete in %.3f s", loop.time() - started)
        for event in tail:
            yield event

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Ask for the whole reply at once; returns the `chat.completion` body.

        `choices[0]["message"]` is checked to exist. `timeout_s` bounds the
        whole exchange, since nothing arrives until generation ends.
        """
        body = self._body(messages, tools, stream=False)
        if response_format is not None:
            body["response_format"] = response_format
        deadline = asyncio.get_running_loop().time() + timeout_s
        response = await self._post(body, deadline)
        try:
            await self._check_status(response)
            try:
                async with asyncio.timeout_at(deadline):
                    payload = await response.json(content_type=None)
            except TimeoutError as exc:
                raise LLMError(f"the LLM sent no reply within {timeout_s} s") from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise LLMError(f"the LLM reply could not be read: {exc}") from exc
        finally:
            response.close()
        choices = payload.get("choices") if isinstance(payload, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
            raise LLMError("the LLM reply has no choices[0].message")
        return dict(payload)

    def _body(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": stream,
        }
        if tools:
            body["tools"] = tools
        return body

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key else text

    async def _post(
        self, body: dict[str, Any], deadline: float
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._session.post(
                    self._url,
                    json=body,
                    headers=self._headers(stream=bool(body["stream"])),
                    timeout=aiohttp.ClientTimeout(total=None),
                )
        except TimeoutError as exc:
            raise LLMError(
                f"no answer from the LLM at {self._url} within "
                f"{self.config.timeout_s} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            message = self._redact(f"cannot reach the LLM at {self._url}: {exc}")
            raise LLMError(message) from exc

    async def _check_status(self, response: aiohttp.ClientResponse) -> None:
        if 200 <= response.status < 300:
            return
        detail = response.reason or "no detail"
        try:
            async with asyncio.timeout(self.config.timeout_s):
                text = await response.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError, OSError):
            text = ""
        if text.strip():
            try:
                detail = _error_text(json.loads(text))
            except ValueError:
                detail = text.strip()[:200]
        raise LLMError(
            self._redact(f"the LLM answered HTTP {response.status}: {detail}")
        )

    async def _readline(
        self, response: aiohttp.ClientResponse, deadline: float, first: bool
    ) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await response.content.readline()
        except TimeoutError as exc:
            limit = self.config.timeout_s
            if first:
                raise LLMError(f"the LLM sent no first token within {limit} s") from exc
            raise LLMError(f"the LLM stream stalled for {limit} s") from exc
        except (aiohttp.ClientError, HttpProcessingError, OSError, ValueError) as exc:
            # HttpProcessingError: a line longer than the read buffer allows.
            message = self._redact(f"the LLM stream broke: {exc}")
            raise LLMError(message) from exc


# Words after which a period does not end the sentence: titles and initials
# always lead into a name.
_NEVER_ENDS = frozenset(
    "mr mrs ms mx dr prof rev fr st sgt capt lt col gen hon mt ft".split()
)
# Abbreviations that may or may not end the sentence; the next word decides.
_MAYBE_ENDS = frozenset(
    "etc vs approx inc ltd co corp jr sr no ave blvd rd dept ext est apt "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_TERMINALS = ".!?…"
_CLOSERS = "\"')]\u201d\u2019"
_CLAUSE_MARKS = ",;:"
_DASHES = "\u2014\u2013"  # em and en dash
_MARKDOWN = str.maketrans("", "", "*#`")
_BULLET = re.compile(r"^\s*[-•+]\s+")
_SPACES = re.compile(r"\s+")


class SentenceSplitter:
    """Cuts a streamed reply into chunks TTS can speak as soon as they end.

    A chunk ends at a sentence end or a newline. The first chunk of a reply
    may also end at a clause mark once it holds `first_clause_words` words, so
    the agent starts speaking sooner; 0 turns that off. `flush` ends the reply
    and readies the splitter for the next one.
    """

    def __init__(self, first_clause_words: int = 4) -> None:
        self.first_clause_words = first_clause_words
        self._buffer = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        self._buffer += delta.translate(_MARKDOWN)
        chunks: list[str] = []
        while (end := self._boundary()) is not None:
            text, self._buffer = self._buffer[:end], self._buffer[end:]
            if speakable := _speakable(text):
                chunks.append(speakable)
                self._first = False
        return chunks

    def flush(self) -> str | None:
        text, self._buffer = self._buffer, ""
        self._first = True
        return _speakable(text) or None

    def _boundary(self) -> int | None:
        """Where the first complete chunk in the buffer ends, if it is known."""
        buf = self._buffer
        n = len(buf)
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n":
                return i + 1
            if ch in _TERMINALS:
                j = i
                while j < n and buf[j] in _TERMINALS:
                    j += 1
                while j < n and buf[j] in _CLOSERS:
                    j += 1
                if j == n:
                    return None  # "3." may become "3.5": wait for more
                if buf[j].isspace():
                    ends = self._period_ends(buf, i, j) if ch == "." else True
                    if ends is None:
                        return None
                    if ends:
                        return j
                i = j
                continue
            if self._first and self.first_clause_words and self._is_clause(buf, i):
                if i + 1 == n:
                    return None
                if buf[i + 1].isspace() or ch in _DASHES:
                    if _word_count(buf[: i + 1]) >= self.first_clause_words:
                        return i + 1
            i += 1
        return None

    @staticmethod
    def _is_clause(buf: str, i: int) -> bool:
        ch = buf[i]
        if ch in _CLAUSE_MARKS or ch in _DASHES:
            return True
        # A hyphen counts only set apart by spaces, never inside "well-known".
        return ch == "-" and i > 0 and buf[i - 1] == " "

    @staticmethod
    def _period_ends(buf: str, i: int, j: int) -> bool | None:
        """Whether the period at `i` (its run ending at `j`) ends a sentence.

        None when that depends on a next word that has not arrived.
        """
        start = i
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        word = buf[start:i].lstrip("\"'([\u201c\u2018")
        if word.isdigit() and not buf[:start].strip():
            return False  # "2. Pick a time": a list number, not a sentence
        if (len(word) == 1 and word.isupper()) or word.lower() in _NEVER_ENDS:
            return False
        if "." not in word and word.lower() not in _MAYBE_ENDS:
            return True
        k = j
        while k < len(buf) and buf[k] in " \t":
            k += 1
        if k == len(buf):
            return None
        # "at 3 p.m. tomorrow" goes on; "at 3 p.m. Then" is a new sentence.
        return not (buf[k].islower() or buf[k].isdigit())


def _word_count(text: str) -> int:
    return sum(1 for word in text.split() if any(c.isalnum() for c in word))


def _speakable(text: str) -> str:
    text = _SPACES.sub(" ", _BULLET.sub("", text)).strip()
    return text if any(c.isalnum() for c in text) else ""


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")


def tool_calls_message(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant message that asked for `calls`, for the next request."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
        ],
    }


def render_template(text: str, fields: Mapping[str, str]) -> str:
    """Fill `{{name}}` placeholders from `fields`; unknown names become ""."""
    return _PLACEHOLDER.sub(lambda m: str(fields.get(m.group(1), "")), text)
