"""A call's reply path, as a pipecat pipeline: utterance in, agent speech out.

    UtteranceFrame ─▶ SpeechToText ─▶ ChatLLM ─▶ TextToSpeech ─▶ ToCall ─▶ the call
                      (shared Whisper)  (streamed,  (shared Piper)
                                         sentences)

What runs here and what does not: the 20 ms audio path (the stream, the VAD,
turn-taking, playout pacing) stays in `pipelines.call`, outside any framework.
A pipecat processor costs a queue hop and a task switch per frame, which is
nothing for the dozen frames of a turn and too much for 50 audio frames a
second on every call (see `../shared/PERFORMANCE.md`). So only turn-sized
frames travel through this pipeline: an utterance, its transcript, the
reply's sentences, each sentence's audio.

The rules:

- Every frame of a reply carries that reply in `metadata["reply"]`, and
  `ToCall` hands a frame to the call only while the reply is still the call's
  current one. A barge-in makes the reply stale first and interrupts the
  pipeline second: pipecat's `InterruptionFrame` cancels the LLM stream and
  the synthesis in flight, and whatever slipped past is dropped as stale. No
  audio of an interrupted reply reaches the playout after the `clear`.
- The caller's words are never dropped: utterances and their transcripts are
  not interruptible, so speech that barges in is still transcribed.
- A failed request (STT, LLM, TTS) becomes a `StageFailedFrame`; the call
  decides what to say. Frames reach the pipeline in the order they were
  submitted, interruptions included.
- Tool calls run inside the LLM stage (`pipelines.tools.agent_tools`); when a
  result needs an answer, the model is asked again with it, up to
  `MAX_TOOL_ROUNDS` times a turn. A tool still running after `HOLD_AFTER_S`
  gets a holding line spoken, so the caller never hears dead air.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pipecat.frames.frames import (
    DataFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipelines.audio import PHONE_RATE, Int16Array
from pipelines.errors import PipelineError
from pipelines.llm import (
    ChatClient,
    SentenceSplitter,
    TextDelta,
    ToolCall,
    tool_calls_message,
)
from pipelines.models import Models
from pipelines.tools.agent_tools import AgentTools, ToolResult

__all__ = [
    "ReplyListener",
    "ReplyPipeline",
    "ReplyRequest",
    "StageFailedFrame",
    "UtteranceFrame",
]

REPLY = "reply"  # the metadata key naming the reply a frame belongs to
MAX_TOOL_ROUNDS = 3
HOLD_AFTER_S = 1.0
HOLDING_LINE = "One moment, please, while I check that."


@dataclass
class UtteranceFrame(DataFrame):
    """One stretch of caller speech, cut at the end of its turn."""

    audio: Int16Array = field(repr=False)
    speech_end: float  # monotonic time the caller stopped speaking
    decided: float  # monotonic time the turn was declared over
    started_at: float  # wall-clock time the utterance began
    interruptible: bool = field(default=False, init=False)


@dataclass
class ReplyRequest(DataFrame):
    """Generate the agent's next turn from `messages` (a snapshot)."""

    messages: list[dict[str, Any]] = field(repr=False)


@dataclass
class ToolCallFrame(DataFrame):
    call: ToolCall


@dataclass
class StageFailedFrame(DataFrame):
    """A stage's request failed; `kind` names it (stt, llm, tts)."""

    kind: str
    error: PipelineError
    interruptible: bool = field(default=False, init=False)


class ReplyListener(Protocol):
    """What the call does with the pipeline's output (`pipelines.call.Call`)."""

    def current_reply(self) -> object | None: ...
    def on_transcript(self, text: str, utterance: UtteranceFrame) -> None: ...
    def on_first_token(self, reply: Any) -> None: ...
    def audio_needed_by(self, reply: Any) -> float: ...
    def on_sentence_audio(self, reply: Any, text: str, audio: Int16Array) -> None: ...
    def on_tool_call(self, reply: Any, call: ToolCall) -> None: ...
    def on_tool_messages(self, reply: Any, messages: list[dict[str, Any]]) -> None: ...
    def on_reply_generated(self, reply: Any) -> None: ...
    def on_failure(
        self, reply: Any | None, kind: str, error: PipelineError
    ) -> None: ...


def _tag(frame: Frame, reply: object | None) -> Frame:
    if reply is not None:
        frame.metadata[REPLY] = reply
    return frame


class SpeechToText(FrameProcessor):
    """Utterances to transcripts, on the process-wide Whisper model."""

    def __init__(self, models: Models) -> None:
        super().__init__(name="stt")
        self._stt = models.stt

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, UtteranceFrame):
            await self.push_frame(frame, direction)
            return
        try:
            transcript = await self._stt.transcribe(frame.audio, PHONE_RATE)
        except PipelineError as exc:
            await self.push_frame(StageFailedFrame(kind="stt", error=exc))
            return
        out = TranscriptionFrame(
            text=transcript.text.strip(),
            user_id="caller",
            timestamp=datetime.now(UTC).isoformat(),
            result=frame,
        )
        out.interruptible = False
        await self.push_frame(out)


class ChatLLM(FrameProcessor):
    """Reply requests to sentences, streamed from an OpenAI-compatible LLM."""

    def __init__(
        self,
        llm: ChatClient,
        tools: AgentTools,
        listener: ReplyListener,
        log: logging.LoggerAdapter[Any],
    ) -> None:
        super().__init__(name="llm")
        self._llm = llm
        self._tools = tools
        self._listener = listener
        self._log = log

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, ReplyRequest):
            await self.push_frame(frame, direction)
            return
        reply = frame.metadata.get(REPLY)
        try:
            await self._generate(frame, reply)
        except PipelineError as exc:
            await self.push_frame(_tag(StageFailedFrame(kind="llm", error=exc), reply))
            return
        await self.push_frame(_tag(LLMFullResponseEndFrame(), reply))

    async def _generate(self, request: ReplyRequest, reply: object | None) -> None:
        messages = list(request.messages)
        tools = self._tools.definitions() or None
        for _ in range(MAX_TOOL_ROUNDS + 1):
            text, calls = await self._stream_once(messages, tools, reply)
            if not calls:
                return
            asked = tool_calls_message(text, calls)
            answers: list[dict[str, Any]] = []
            follow_up = False
            for call in calls:
                result = await self._run_tool(call, reply)
                answers.append(
                    {"role": "tool", "tool_call_id": call.id, "content": result.content}
                )
                follow_up = follow_up or result.follow_up
            # The call's context keeps the exchange; what was said is added
            # when the turn ends, cut to what the caller heard.
            self._listener.on_tool_messages(
                reply, [{**asked, "content": None}, *answers]
            )
            if not follow_up:
                return
            messages += [asked, *answers]

    async def _stream_once(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        reply: object | None,
    ) -> tuple[str, list[ToolCall]]:
        splitter = SentenceSplitter()
        spoken: list[str] = []
        calls: list[ToolCall] = []
        events = self._llm.stream(messages, tools, log=self._log)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    if not spoken and not calls:
                        self._listener.on_first_token(reply)
                    spoken.append(event.text)
                    for sentence in splitter.push(event.text):
                        await self.push_frame(_tag(TTSSpeakFrame(sentence), reply))
                elif isinstance(event, ToolCall):
                    calls.append(event)
                    await self.push_frame(_tag(ToolCallFrame(call=event), reply))
        rest = splitter.flush()
        if rest:
            await self.push_frame(_tag(TTSSpeakFrame(rest), reply))
        return "".join(spoken).strip(), calls

    async def _run_tool(self, call: ToolCall, reply: object | None) -> ToolResult:
        running = asyncio.ensure_future(self._tools.run(call))
        try:
            done, _ = await asyncio.wait({running}, timeout=HOLD_AFTER_S)
            if not done:
                await self.push_frame(_tag(TTSSpeakFrame(HOLDING_LINE), reply))
            return await running
        finally:
            running.cancel()  # a barge-in cancels us: the tool goes too


class TextToSpeech(FrameProcessor):
    """Sentences to 8 kHz speech, on the process-wide Piper voice."""

    def __init__(self, models: Models, listener: ReplyListener) -> None:
        super().__init__(name="tts")
        self._tts = models.tts
        self._listener = listener

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, TTSSpeakFrame):
            await self.push_frame(frame, direction)
            return
        reply = frame.metadata.get(REPLY)
        try:
            deadline = self._listener.audio_needed_by(reply)
            audio = await self._tts.synthesize(frame.text, deadline)
        except PipelineError as exc:
            await self.push_frame(_tag(StageFailedFrame(kind="tts", error=exc), reply))
            return
        out = TTSAudioRawFrame(
            audio=audio.tobytes(), sample_rate=PHONE_RATE, num_channels=1
        )
        out.metadata["text"] = frame.text
        out.metadata["pcm"] = audio
        await self.push_frame(_tag(out, reply))


class ToCall(FrameProcessor):
    """The pipeline's end: hands each current frame back to the call."""

    def __init__(self, listener: ReplyListener) -> None:
        super().__init__(name="to-call")
        self._listener = listener

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        listener = self._listener
        if isinstance(frame, TranscriptionFrame):
            if isinstance(frame.result, UtteranceFrame):
                listener.on_transcript(frame.text, frame.result)
            return
        if isinstance(frame, StageFailedFrame) and REPLY not in frame.metadata:
            listener.on_failure(None, frame.kind, frame.error)
            return
        reply = frame.metadata.get(REPLY)
        if reply is None:
            await self.push_frame(frame, direction)
            return
        if reply is not listener.current_reply():
            return  # from a reply that was interrupted or replaced: stale
        if isinstance(frame, TTSAudioRawFrame):
            listener.on_sentence_audio(
                reply, frame.metadata["text"], frame.metadata["pcm"]
            )
        elif isinstance(frame, ToolCallFrame):
            listener.on_tool_call(reply, frame.call)
        elif isinstance(frame, LLMFullResponseEndFrame):
            listener.on_reply_generated(reply)
        elif isinstance(frame, StageFailedFrame):
            listener.on_failure(reply, frame.kind, frame.error)


class ReplyPipeline:
    """One call's pipecat pipeline and its runner. `start`, `submit`, `close`."""

    def __init__(
        self,
        *,
        models: Models,
        llm: ChatClient,
        tools: AgentTools,
        listener: ReplyListener,
        log: logging.LoggerAdapter[Any],
    ) -> None:
        pipeline = Pipeline(
            [
                SpeechToText(models),
                ChatLLM(llm, tools, listener, log),
                TextToSpeech(models, listener),
                ToCall(listener),
            ]
        )
        self._worker = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=PHONE_RATE,
                audio_out_sample_rate=PHONE_RATE,
                send_initial_empty_metrics=False,
            ),
            # The call owns its lifetime: no idle timeout, no RTVI, no
            # pipecat turn tracking (turn-taking happens on the audio path).
            idle_timeout_secs=None,
            enable_rtvi=False,
            enable_turn_tracking=False,
            check_dangling_tasks=False,
        )
        self._runner: WorkerRunner | None = None
        self._running: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Frame] = asyncio.Queue()
        self._feeder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await self._runner.add_workers(self._worker)
        self._running = asyncio.create_task(self._runner.run(), name="reply-runner")
        self._feeder = asyncio.create_task(self._feed(), name="reply-feeder")

    def submit(self, frame: Frame, reply: object | None = None) -> None:
        """Queue `frame` (of `reply`) behind everything submitted before it."""
        self._inbox.put_nowait(_tag(frame, reply))

    def interrupt(self) -> None:
        """Stop whatever reply is being generated or synthesized."""
        self._inbox.put_nowait(InterruptionFrame())

    async def _feed(self) -> None:
        # One task feeds the worker so that an interruption never overtakes
        # the request submitted before it, nor lands after the next one.
        while True:
            frame = await self._inbox.get()
            await self._worker.queue_frame(frame)

    async def close(self, limit_s: float = 1.0) -> None:
        """Cancel the pipeline and wait (briefly) for its tasks to end."""
        started = time.monotonic()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self._runner is not None and self._running is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cancel(), limit_s)
            left = max(limit_s - (time.monotonic() - started), 0.05)
            try:
                await asyncio.wait_for(self._running, left)
            except (TimeoutError, asyncio.CancelledError):
                self._running.cancel()
