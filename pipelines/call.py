"""One call's pipeline: caller audio in, agent speech out, with barge-in.

The audio path and the model path are kept apart on purpose. Every 20 ms the
stream hands `on_media` one frame: it is decoded, given to the shared VAD
(which never blocks: results come back as events), written to the recording
and fed to the turn-taker. Nothing on that path waits for a model. The models
run in the call's pipecat pipeline (`pipelines.reply`), which sees only
turn-sized frames and calls back into this class:

    frame ─▶ VAD (shared worker) ─▶ TurnTaker ─▶ end of turn ─▶ ┌ STT ┐
                                        │                       │ LLM │ pipecat
                                  barge-in: clear,              │ TTS │
                                  interrupt the reply           └──┬──┘
    Twilio ◀── pacer (lead over playback, marks) ◀── Playout ◀─────┘

The LLM context only ever holds what the caller heard of the agent: on
barge-in, the agent's turn is cut to the words that had played.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
from pipecat.frames.frames import LLMFullResponseEndFrame, TTSSpeakFrame

from pipelines import prompt
from pipelines.audio import (
    FRAME_SAMPLES,
    PHONE_RATE,
    Int16Array,
    pcm_to_ulaw,
    ulaw_to_pcm,
)
from pipelines.errors import PipelineError
from pipelines.llm import ChatClient, ToolCall
from pipelines.models import Models
from pipelines.playout import Media, Playout
from pipelines.record import CallRecord, StereoRecorder, Turn, TurnLatency
from pipelines.reply import ReplyPipeline, ReplyRequest, UtteranceFrame
from pipelines.tools.agent_tools import AgentTools, CallEffects, ToolContext
from pipelines.tools.optout import asks_to_opt_out
from pipelines.turns import AskSmartTurn, BargeIn, EndOfTurn, TurnParams, TurnTaker
from pipelines.turns import State as TurnState
from pipelines.vad import VadEvent, VadParams

_PREROLL_MS = 300
_DTMF_FLUSH_S = 1.5
_FRAME_MS = 20

FALLBACK_LINE = "Sorry, I'm having a little trouble. Could you say that again?"
GOODBYE_LINE = "Sorry, I have to end the call now. Goodbye."
OPTED_OUT_NOTE = (
    "The caller asked not to be called again. Their number is now on the "
    "do-not-call list. Confirm that in one sentence, apologise, say goodbye and "
    "end the call."
)


class CallIO(Protocol):
    """The stream side of a call: the only three messages we may send."""

    async def send_media(self, payload: bytes) -> None: ...
    async def send_mark(self, name: str) -> None: ...
    async def send_clear(self) -> None: ...
    async def hang_up(self) -> None: ...


class CallObserver(Protocol):
    """Process-wide counters a call reports into (the server's metrics)."""

    def frame_out(self) -> None: ...
    def late_frame(self) -> None: ...
    def barge_in(self, seconds: float) -> None: ...
    def turn_latency(self, stage: str, seconds: float) -> None: ...
    def error(self, kind: str) -> None: ...


@dataclass(frozen=True)
class Agent:
    """The persona on the call."""

    system_prompt: str
    greeting: str
    tools: tuple[str, ...] = ("end_call",)  # see pipelines.tools.agent_tools


@dataclass(frozen=True)
class CallConfig:
    vad: VadParams = field(default_factory=VadParams)
    turns: TurnParams = field(default_factory=TurnParams)
    smart_turn_threshold: float = 0.5
    playout_lead_ms: int = 160
    recording_dir: Path | None = None


@dataclass
class _Reply:
    """The agent turn being produced, and its timing."""

    speech_end: float
    latency: TurnLatency
    started_at: float = field(default_factory=time.time)
    first_audio_pending: bool = True
    fallback: bool = False  # the spoken apology after a failed request


class Call:
    """Runs one call. Create, `await start()`, feed events, `await close()`."""

    def __init__(
        self,
        *,
        record: CallRecord,
        models: Models,
        llm: ChatClient,
        io: CallIO,
        agent: Agent,
        fields: dict[str, str],
        config: CallConfig,
        observer: CallObserver,
        log: logging.LoggerAdapter[logging.Logger],
        tools: AgentTools | None = None,
    ) -> None:
        self.record = record
        self._models = models
        self._llm = llm
        self._io = io
        self._agent = agent
        self._config = config
        self._observer = observer
        self._log = log
        self._debug = log.isEnabledFor(logging.DEBUG)

        if tools is None:
            tools = AgentTools(agent.tools, ToolContext(), CallEffects())
        self._tools = tools
        self.effects = tools.effects
        zone = ZoneInfo(tools.context.timezone)
        now_local = datetime.fromtimestamp(tools.context.clock(), zone)
        self._context: list[dict[str, Any]] = [
            {
                "role": "system",
                "content": prompt.system_prompt(
                    agent.system_prompt, fields, now_local=now_local
                ),
            }
        ]
        self._greeting = prompt.greeting(agent.greeting, fields)
        self._turns = TurnTaker(config.turns)
        self._playout = Playout(lead_s=config.playout_lead_ms / 1000)
        self._vad = models.vad.open_stream(config.vad, self._on_vad)
        self._replies = ReplyPipeline(
            models=models, llm=llm, tools=tools, listener=self, log=log
        )
        self._recorder: StereoRecorder | None = None
        if config.recording_dir is not None:
            path = config.recording_dir / f"{record.call_id}.wav"
            self._recorder = StereoRecorder(path)
            record.recording_path = str(path)

        # Caller audio: a short pre-roll so a turn starts at the speech onset
        # the VAD reports after the fact, then the turn's own frames.
        self._audio_ms = 0
        self._last_frame_at = time.monotonic()
        self._preroll: deque[Int16Array] = deque(maxlen=_PREROLL_MS // _FRAME_MS + 1)
        self._turn_audio: list[Int16Array] = []
        self._in_turn = False

        self._reply: _Reply | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake_pacer = asyncio.Event()
        self._pacer: asyncio.Task[None] | None = None
        self._dtmf: list[str] = []
        self._heard: deque[str] = deque(maxlen=3)  # the caller's last utterances
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._ending = False

    # Lifecycle.

    async def start(self) -> None:
        """Start the pacer and greet the caller (outbound calls speak first)."""
        await self._replies.start()
        self._pacer = asyncio.create_task(self._pace(), name="pacer")
        if self._greeting:
            self._start_reply(_Reply(time.monotonic(), TurnLatency()), self._greeting)

    async def close(self, reason: str) -> CallRecord:
        """Stop everything the call runs; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self.record.end_reason = self.record.end_reason or reason
            self.record.outcome = self.effects.outcome or self.record.outcome
            self.record.ended_at = time.time()
            if self._dtmf_timer is not None:
                self._dtmf_timer.cancel()
            self._vad.close()
            tasks = [t for t in (self._pacer, self._reply_task) if t] + list(
                self._tasks
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._replies.close()
            if self._reply is not None:
                self._finish_agent_turn(
                    self._playout.clear(time.monotonic()).text, True
                )
            if self._recorder is not None:
                self._recorder.close()
        return self.record

    # The 20 ms path.

    def on_media(self, payload: bytes) -> None:
        """One frame of caller audio. Never waits on anything."""
        pcm = ulaw_to_pcm(payload)
        self._audio_ms += pcm.size * 1000 // PHONE_RATE
        self._last_frame_at = time.monotonic()
        self._vad.push(pcm)
        if self._recorder is not None:
            self._recorder.caller(pcm)
        if self._in_turn:
            self._turn_audio.append(pcm)
        else:
            self._preroll.append(pcm)
        for action in self._turns.advance(self._audio_ms):
            self._act(action)

    def on_mark(self, name: str) -> None:
        self._playout.on_mark(name, time.monotonic())

    def on_dtmf(self, digit: str) -> None:
        """Keypad digits are caller input: gathered, then answered as a turn."""
        if self._agent_speaking():
            self._barge_in(time.monotonic())
        self._dtmf.append(digit)
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        loop = asyncio.get_running_loop()
        if digit == "#":
            self._flush_dtmf()
        else:
            self._dtmf_timer = loop.call_later(_DTMF_FLUSH_S, self._flush_dtmf)

    def _flush_dtmf(self) -> None:
        digits, self._dtmf = "".join(self._dtmf), []
        self._dtmf_timer = None
        if not digits or self._closed:
            return
        text = f"[The caller pressed keypad keys: {digits}]"
        now = time.time()
        self.record.transcript.append(Turn("caller", digits, now, now, source="dtmf"))
        self._context.append({"role": "user", "content": text})
        self._start_reply(_Reply(time.monotonic(), TurnLatency()))

    # Voice activity and turn-taking.

    def _on_vad(self, event: VadEvent) -> None:
        if self._closed:
            return
        if event.kind == "start":
            if not self._in_turn:
                self._in_turn = True
                keep = max(0, (self._audio_ms - event.at_ms + _PREROLL_MS) // _FRAME_MS)
                self._turn_audio = list(self._preroll)[-keep:] if keep else []
                self._preroll.clear()
            actions = self._turns.speech_started(event.at_ms, self._agent_speaking())
        else:
            actions = self._turns.speech_stopped(event.at_ms)
        for action in actions:
            self._act(action)

    def _act(self, action: BargeIn | AskSmartTurn | EndOfTurn) -> None:
        if isinstance(action, BargeIn):
            if self._agent_speaking():
                self._barge_in(self._wall_time(action.onset_ms))
        elif isinstance(action, AskSmartTurn):
            self._spawn(self._ask_smart_turn(action))
        else:
            self._end_turn(action)

    async def _ask_smart_turn(self, ask: AskSmartTurn) -> None:
        smart_turn = self._models.smart_turn
        if smart_turn is None:
            return
        audio = self._turn_pcm()
        try:
            probability = await smart_turn.probability(audio, PHONE_RATE)
        except PipelineError as exc:
            self._fault("smart_turn", exc)
            return
        complete = probability >= self._config.smart_turn_threshold
        for action in self._turns.smart_turn_said(ask.generation, complete):
            self._act(action)

    def _end_turn(self, end: EndOfTurn) -> None:
        audio = self._turn_pcm()
        keep = (end.end_ms - end.start_ms + _PREROLL_MS + 200) * PHONE_RATE // 1000
        audio = audio[: max(keep, FRAME_SAMPLES)]
        self._in_turn = False
        self._turn_audio = []
        speech_end = self._wall_time(end.end_ms)
        started_at = time.time() - (time.monotonic() - speech_end)
        self._replies.submit(
            UtteranceFrame(
                audio=audio,
                speech_end=speech_end,
                decided=time.monotonic(),
                started_at=started_at,
            )
        )

    def on_transcript(self, text: str, utterance: UtteranceFrame) -> None:
        """The pipeline transcribed an utterance: answer it, or keep it only."""
        if not text or self._closed:
            return
        latency = TurnLatency(
            turn_detection_s=utterance.decided - utterance.speech_end,
            stt_s=time.monotonic() - utterance.decided,
        )
        turn = Turn("caller", text, utterance.started_at, time.time())
        self.record.transcript.append(turn)
        # The request may be split over two utterances ("Please stop ..."
        # "... calling me"): look at the last few together.
        self._heard.append(text)
        recent = " ".join(self._heard)
        opting_out = asks_to_opt_out(recent) and not self.effects.opted_out
        if opting_out:
            # Deterministic: on the list now, whatever the model makes of it.
            self._log.info("the caller asked not to be called again")
            self._spawn(asyncio.shield(self._tools.opt_out_now()))
            self.effects.hang_up = True  # once the agent has confirmed it
            if self._agent_speaking():
                self._barge_in(time.monotonic())
            self._context.append({"role": "system", "content": OPTED_OUT_NOTE})
        if self._agent_speaking() and not opting_out:
            # Speech too short to barge in, heard while the agent talks on: a
            # backchannel. It is kept in the transcript but gets no reply.
            return
        self._context.append({"role": "user", "content": text})
        if self._turns.state is not TurnState.IDLE:
            # The caller spoke again while this was transcribed: answer once
            # that turn ends, with both parts in the context.
            return
        self._start_reply(_Reply(utterance.speech_end, latency))

    def _turn_pcm(self) -> Int16Array:
        if not self._turn_audio:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._turn_audio)

    # Barge-in.

    def _agent_speaking(self) -> bool:
        return self._reply is not None or self._playout.active(time.monotonic())

    def _barge_in(self, onset: float) -> None:
        """Stop the agent at once: clear Twilio's buffer, cancel the reply."""
        now = time.monotonic()
        heard = self._playout.clear(now)
        self._wake_pacer.set()
        self._spawn(self._io.send_clear())
        self._replies.interrupt()
        if self._recorder is not None:
            self._recorder.clear_agent()
        if self._reply_task is not None:
            self._reply_task.cancel()
            self._reply_task = None
        self._turns.agent_stopped()
        self.record.barge_ins += 1
        self._observer.barge_in(now - onset)
        self._log.info(
            "barge-in after %.0f ms; caller heard %r",
            (now - onset) * 1000,
            heard.text[-60:],
        )
        if self._reply is not None:
            self._finish_agent_turn(heard.text, interrupted=True)

    # The agent's reply.

    def _start_reply(self, reply: _Reply, text: str | None = None) -> None:
        """Speak `text`, or the LLM's answer to the context, as the next turn."""
        if self._ending:
            return
        if self._reply is not None or self._reply_task is not None:
            self._replies.interrupt()
        if self._reply_task is not None:
            self._reply_task.cancel()
            self._reply_task = None
        self._playout.start_turn()
        self._reply = reply
        if text is not None:
            self._say(reply, text)
        else:
            self._replies.submit(ReplyRequest(list(self._context)), reply)

    def _say(self, reply: _Reply, text: str) -> None:
        self._replies.submit(TTSSpeakFrame(text), reply)
        self._replies.submit(LLMFullResponseEndFrame(), reply)

    # What the reply pipeline hands back (see `pipelines.reply.ReplyListener`).

    def current_reply(self) -> object | None:
        return self._reply

    def on_first_token(self, reply: Any) -> None:
        current = self._reply
        if current is reply and current is not None:
            if current.latency.llm_first_token_s is None:
                current.latency.llm_first_token_s = (
                    time.monotonic() - current.speech_end
                )

    def audio_needed_by(self, reply: Any) -> float:
        """When this call runs out of agent audio: the TTS scheduler's deadline."""
        now = time.monotonic()
        if reply is not self._reply or not self._playout.active(now):
            return now
        return max(now, self._playout.playback_end())

    def on_sentence_audio(self, reply: Any, text: str, audio: Int16Array) -> None:
        if reply.latency.tts_first_audio_s is None:
            reply.latency.tts_first_audio_s = time.monotonic() - reply.speech_end
        self._playout.enqueue(text, pcm_to_ulaw(audio))
        self._wake_pacer.set()

    def on_tool_call(self, reply: Any, call: ToolCall) -> None:
        # Names only: arguments may hold what the lead said (emails, times).
        self._log.info("tool call: %s", call.name)

    def on_tool_messages(self, reply: Any, messages: list[dict[str, Any]]) -> None:
        if reply is self._reply:
            self._context.extend(messages)

    def on_reply_generated(self, reply: Any) -> None:
        """All of the reply's audio is queued: finish the turn once it has played."""
        self._reply_task = asyncio.create_task(self._finish(reply), name="reply")
        self._reply_task.add_done_callback(self._task_done)

    def on_failure(self, reply: Any | None, kind: str, error: PipelineError) -> None:
        """A failed request: say the fallback line, or hang up cleanly."""
        if reply is None:
            self._fault(kind, error)
            return
        self._fault(type(error).__name__, error)
        if reply.fallback:
            self._reply = None
            self._spawn(self._end_call("pipeline_error"))
            return
        # Stop what is left of the failed reply; its stray frames go stale.
        self._replies.interrupt()
        self._playout.clear(time.monotonic())
        self._reply = _Reply(
            reply.speech_end,
            reply.latency,
            started_at=reply.started_at,
            first_audio_pending=reply.first_audio_pending,
            fallback=True,
        )
        self._say(self._reply, FALLBACK_LINE)

    async def _finish(self, reply: _Reply) -> None:
        await self._wait_played()
        if reply is not self._reply:
            return
        self._reply_task = None
        heard = FALLBACK_LINE if reply.fallback else self._playout.heard_all()
        self._finish_agent_turn(heard, interrupted=False)
        if self.effects.hang_up:
            await self._end_call("agent_hung_up")

    async def _wait_played(self) -> None:
        while True:
            now = time.monotonic()
            if not self._playout.active(now):
                return
            end = self._playout.playback_end()
            await asyncio.sleep(
                max(end - now, 0.02) if not self._playout.pending else 0.05
            )

    def _finish_agent_turn(self, text: str, interrupted: bool) -> None:
        reply, self._reply = self._reply, None
        if reply is None:
            return
        latency = reply.latency if not reply.first_audio_pending else None
        if text or interrupted:
            self.record.transcript.append(
                Turn(
                    "agent",
                    text,
                    reply.started_at,
                    time.time(),
                    interrupted,
                    source="speech",
                    latency=latency,
                )
            )
        if text:
            self._context.append({"role": "assistant", "content": text})
        if latency is not None and latency.stt_s is not None:
            self._report_latency(latency)

    def _report_latency(self, latency: TurnLatency) -> None:
        stages = {
            "turn_detection": latency.turn_detection_s,
            "stt": latency.stt_s,
            "llm_first_token": latency.llm_first_token_s,
            "tts_first_audio": latency.tts_first_audio_s,
            "total": latency.first_audio_s,
        }
        for stage, value in stages.items():
            if value is not None:
                self._observer.turn_latency(stage, value)
        self._log.info(
            "turn latency %.0f ms (turn %.0f, stt %.0f, llm %.0f, tts %.0f)",
            *(
                1000 * (v or 0.0)
                for v in (latency.first_audio_s, *list(stages.values())[:4])
            ),
        )

    async def _end_call(self, reason: str) -> None:
        self._ending = True
        self.record.end_reason = reason
        await self._io.hang_up()

    # Sending audio.

    async def _pace(self) -> None:
        """Send agent audio a little ahead of the caller's playback."""
        playout = self._playout
        while True:
            now = time.monotonic()
            late_before = playout.late_frames
            batch = playout.due(now)
            if playout.late_frames != late_before:
                self._observer.late_frame()
            epoch_barge = self.record.barge_ins
            for item in batch:
                if self.record.barge_ins != epoch_barge:
                    break  # a barge-in landed mid-batch: send nothing more
                if isinstance(item, Media):
                    await self._io.send_media(item.payload)
                    self._observer.frame_out()
                    self._on_frame_sent(item.payload)
                else:
                    await self._io.send_mark(item.name)
            due = playout.next_due(time.monotonic())
            if due is None:
                self._wake_pacer.clear()
                await self._wake_pacer.wait()
            else:
                await asyncio.sleep(max(due - time.monotonic(), 0.002))

    def _on_frame_sent(self, payload: bytes) -> None:
        reply = self._reply
        if reply is not None and reply.first_audio_pending:
            reply.first_audio_pending = False
            reply.latency.first_audio_s = time.monotonic() - reply.speech_end
        if self._recorder is not None:
            self._recorder.agent(ulaw_to_pcm(payload))

    # Helpers.

    def _wall_time(self, audio_ms: int) -> float:
        """The monotonic time at which the caller's audio reached `audio_ms`."""
        return self._last_frame_at - (self._audio_ms - audio_ms) / 1000

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A task of the call died of a bug: count it, log it, keep the call."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._observer.error("internal")
        self.record.errors.append(f"internal: {exc!r}")
        self._log.error("%s task failed", task.get_name(), exc_info=exc)

    def _fault(self, kind: str, exc: BaseException) -> None:
        self._observer.error(kind)
        self.record.errors.append(f"{kind}: {exc}")
        self._log.warning("%s failed: %s", kind, exc)


Sender = Callable[[str], Awaitable[None]]
