"""After the call: the campaign's extracted fields, filled from the transcript.

One structured request per call: the transcript goes to the LLM with a JSON
schema (`response_format: json_schema`, strict) holding one property per
field marked `extract`, each nullable: "not said" is null, never a guess.
Every value that comes back is validated against the field's type (the same
rules as a CSV import); one that fails is left empty and flagged with the
reason. A reply that is not JSON, or not an object, flags every field.

And the call's outcome when nothing set one (`outcome_for`): the rule is

1. the caller opted out (tool or phrase): do_not_call;
2. the agent's tools set one (end_call, a booking, a callback): that;
3. otherwise a call in which the caller never said a word is no_answer
   (the follow-up rules retry it), and any other is completed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from campaign_store.csv_import import coerce_value
from campaign_store.models import FieldDef, FieldValue
from pipelines.errors import LLMError
from pipelines.llm import ChatClient
from pipelines.record import CallRecord, Turn

__all__ = ["extract_fields", "extraction_schema", "outcome_for"]

log = logging.getLogger(__name__)

MAX_TRANSCRIPT_CHARS = 24_000
_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "date": "string",
    "email": "string",
    "enum": "string",
}
INSTRUCTIONS = (
    "You read the transcript of a phone call and fill in fields from what was "
    "said. Use null for anything the caller did not clearly say; never guess. "
    "Answer with the JSON object only."
)


def extraction_schema(fields: Sequence[FieldDef]) -> dict[str, Any]:
    """The `response_format` for these fields (all required, all nullable)."""
    properties: dict[str, Any] = {}
    for f in fields:
        prop: dict[str, Any] = {"type": [_JSON_TYPES[f.type], "null"]}
        if f.type == "enum":
            prop["enum"] = [*f.choices, None]
        if f.type == "date":
            prop["description"] = "YYYY-MM-DD"
        if f.description:
            prop["description"] = (prop.get("description", "") + " " + f.description)[
                :500
            ].strip()
        properties[f.name] = prop
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "call_fields",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": [f.name for f in fields],
                "additionalProperties": False,
            },
        },
    }


def _transcript_text(transcript: Sequence[Turn]) -> str:
    lines = []
    for turn in transcript:
        who = "Agent" if turn.speaker == "agent" else "Caller"
        cut = " (interrupted)" if turn.interrupted else ""
        lines.append(f"{who}{cut}: {turn.text}")
    return "\n".join(lines)[-MAX_TRANSCRIPT_CHARS:]


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def extract_fields(
    llm: ChatClient, transcript: Sequence[Turn], fields: Sequence[FieldDef]
) -> tuple[dict[str, FieldValue], dict[str, str]]:
    """(values, flags): the validated values, and why each other one is empty."""
    wanted = [f for f in fields if f.extract]
    if not wanted or not any(t.speaker == "caller" for t in transcript):
        return {}, {}
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": _transcript_text(transcript)},
    ]
    try:
        reply = await llm.complete(
            messages, response_format=extraction_schema(wanted), timeout_s=30.0
        )
        content = reply["choices"][0]["message"].get("content") or ""
        data = json.loads(content)
    except (LLMError, ValueError, KeyError, TypeError) as exc:
        reason = f"extraction failed: {type(exc).__name__}"
        log.warning("%s", reason)
        return {}, {f.name: reason for f in wanted}
    if not isinstance(data, dict):
        return {}, {f.name: "extraction reply is not a JSON object" for f in wanted}

    values: dict[str, FieldValue] = {}
    flags: dict[str, str] = {}
    for f in wanted:
        raw = data.get(f.name)
        if raw is None or raw == "":
            continue
        if isinstance(raw, dict | list):
            flags[f.name] = "not a single value"
            continue
        try:
            values[f.name] = coerce_value(f, _as_text(raw))
        except ValueError as exc:
            flags[f.name] = str(exc)[:200]
    return values, flags


def outcome_for(
    record: CallRecord, tool_outcome: str, opted_out: bool
) -> tuple[str, str]:
    """(outcome, source) for a finished call; see the module's rule."""
    if opted_out:
        return "do_not_call", "opt_out"
    if tool_outcome:
        return tool_outcome, "agent"
    if not any(t.speaker == "caller" and t.text for t in record.transcript):
        return "no_answer", "rule"
    return "completed", "rule"
