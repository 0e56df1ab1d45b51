"""The agent writing instead of speaking: one WhatsApp reply at a time.

A conversation (the messaging counterpart of a call) has no audio path and
no turn-taking: each message from the lead is a turn, and the agent's answer
is generated whole, tool calls included, then sent as one text message. The
same agent, the same prompt (`pipelines.prompt`), the same LLM client and the
same tools (`pipelines.tools.agent_tools`) as on a call; only the words
differ: the prompt says it is written, and "hang up" means "close the
conversation".

What the LLM sees is rebuilt from the stored transcript for every reply:
the template that opened the conversation, then each message in and out.
Tool exchanges of earlier replies are not replayed; what they did (a
booking, a callback) is stated in the system message instead, so a lead who
writes again after booking is not booked twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines import prompt
from pipelines.errors import LLMError
from pipelines.llm import ChatClient, ToolCall, tool_calls_message
from pipelines.tools.agent_tools import AgentTools

__all__ = ["MAX_TOOL_ROUNDS", "WRITTEN_NOTE", "Turn", "context_for", "write_reply"]

MAX_TOOL_ROUNDS = 3
MAX_REPLY_CHARS = 4096  # WhatsApp's limit for a text message body
WRITTEN_NOTE = (
    "You are writing WhatsApp messages, not speaking on the phone. Answer in "
    "short plain-text messages, without markdown or lists. The end_call tool "
    "closes this conversation after your last message."
)


@dataclass(frozen=True)
class Turn:
    """One message of the conversation, as the transcript keeps it."""

    speaker: str  # "lead" or "agent"
    text: str


def context_for(
    system_prompt: str,
    fields: dict[str, str],
    turns: Sequence[Turn],
    *,
    now_local: datetime | None = None,
    done_so_far: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The chat messages for the agent's next reply."""
    instructions = "\n\n".join(
        p for p in (system_prompt.strip(), WRITTEN_NOTE, *done_so_far) if p
    )
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": prompt.system_prompt(instructions, fields, now_local=now_local),
        }
    ]
    for turn in turns:
        role = "assistant" if turn.speaker == "agent" else "user"
        if messages[-1]["role"] == role and role == "user":
            # Several messages in a row from the lead read as one turn.
            messages[-1]["content"] += "\n" + turn.text
        else:
            messages.append({"role": role, "content": turn.text})
    return messages


async def write_reply(
    llm: ChatClient,
    tools: AgentTools,
    messages: list[dict[str, Any]],
    *,
    log: logging.Logger | logging.LoggerAdapter[Any],
    timeout_s: float = 30.0,
) -> str:
    """The agent's answer to the conversation so far ("" if it has none).

    Tools run as the model asks for them; their effects land on
    `tools.effects`. A failing LLM raises `LLMError`; the caller decides what
    the lead reads then.
    """
    messages = list(messages)
    definitions = tools.definitions() or None
    written: list[str] = []
    for _ in range(MAX_TOOL_ROUNDS + 1):
        payload = await llm.complete(messages, definitions, timeout_s=timeout_s)
        message = payload["choices"][0]["message"]
        text = str(message.get("content") or "").strip()
        if text:
            written.append(text)
        calls = _tool_calls(message)
        if not calls:
            break
        asked = tool_calls_message(text, calls)
        answers = []
        follow_up = False
        for call in calls:
            result = await tools.run(call)
            log.info("tool %s ran", call.name)
            answers.append(
                {"role": "tool", "tool_call_id": call.id, "content": result.content}
            )
            follow_up = follow_up or result.follow_up
        if not follow_up:
            break
        messages += [asked, *answers]
    return "\n\n".join(written)[:MAX_REPLY_CHARS]


def _tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for raw in message.get("tool_calls") or ():
        function = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise LLMError("the LLM sent a tool call without a function name")
        calls.append(
            ToolCall(
                id=str(raw.get("id") or ""),
                name=str(function["name"]),
                arguments=str(function.get("arguments") or "{}"),
            )
        )
    return calls
