"""Finished calls into the campaign store: the store's side of `CallSink`.

A call placed for a campaign's lead (its stream carries both ids) is stored
on that campaign and linked from the lead. Anything else (a test call, an ad
hoc stream, a lead deleted meanwhile) goes to the fallback sink, so that no
record is ever dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from campaign_store.errors import StoreError
from campaign_store.keys import CampaignKeys
from campaign_store.models import CallRecordModel, TurnLatencyRecord, TurnRecord
from campaign_store.store import Store
from pipelines.record import CallRecord, CallSink

__all__ = ["StoreCallSink", "to_model"]

log = logging.getLogger(__name__)


def to_model(record: CallRecord) -> CallRecordModel:
    turns = [
        TurnRecord(
            speaker="agent" if t.speaker == "agent" else "caller",
            text=t.text,
            started_at=t.started_at,
            ended_at=t.ended_at,
            interrupted=t.interrupted,
            source=t.source,
            latency=None
            if t.latency is None
            else TurnLatencyRecord.model_validate(t.latency.__dict__),
        )
        for t in record.transcript
    ]
    return CallRecordModel(
        id=record.call_id,
        campaign_id=record.campaign_id,
        lead_id=record.lead_id,
        call_sid=record.call_sid,
        stream_sid=record.stream_sid,
        created_at=record.started_at,
        answered_at=record.started_at,
        ended_at=record.ended_at,
        end_reason=record.end_reason,
        outcome=record.outcome,
        transcript=turns,
        recording_path=record.recording_path,
        errors=list(record.errors),
        barge_ins=record.barge_ins,
        callback_at=record.callback_at,
        callback_local=record.callback_local,
        booking=record.booking,
        opted_out=record.opted_out,
        outcome_source=record.outcome_source,
        outcome_reason=record.outcome_reason,
        extracted=dict(record.extracted),
        extraction_flags=dict(record.extraction_flags),
    )


class StoreCallSink:
    def __init__(
        self,
        store: Store,
        fallback: CallSink,
        after_save: Callable[[str, str], Awaitable[Any]] | None = None,
    ) -> None:
        self.store = store
        self.fallback = fallback
        # Called with (campaign id, call id) once a campaign's call is stored:
        # the dialer settles the attempt whose record this is.
        self.after_save = after_save

    async def save(self, record: CallRecord) -> None:
        if record.campaign_id and record.lead_id:
            keys = CampaignKeys(record.campaign_id)
            try:
                if await self.store.redis.exists(keys.lead(record.lead_id)):
                    await self.store.save_call(to_model(record))
                    if self.after_save is not None:
                        await self.after_save(record.campaign_id, record.call_id)
                    return
            except StoreError:
                log.exception("call %s: the store failed; kept on disk", record.call_id)
            except OSError:
                log.exception(
                    "call %s: Redis unreachable; kept on disk", record.call_id
                )
        await self.fallback.save(record)
