"""Whisper on the full 30 s window against the shortened one, on phone audio.

Synthesizes a few sentences with Piper, passes them through 8 kHz mu-law the
way a call does, and transcribes each both ways with the same loaded model.
Prints one line per sentence and the median of each way.

    python -m benchmarks.stt_trim
"""

from __future__ import annotations

import re
import statistics

from pipelines.audio import pcm_to_ulaw, ulaw_to_pcm
from pipelines.stt import WhisperSTT
from pipelines.tts import PiperTTS

SENTENCES = [
    "Hello.",
    "Yes.",
    "Who is this?",
    "Can you repeat that?",
    "Not right now, maybe next week.",
    "I would like to book an appointment for Tuesday morning.",
    "My number is five five five, one two three four.",
    "We already have a provider for that, but thanks for calling.",
    "Honestly I have been thinking about switching for a while now, so tell me "
    "more about the pricing and what is included.",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def main() -> None:
    tts = PiperTTS()
    stt = WhisperSTT(beam_size=1, cpu_threads=2, workers=1)
    timings: dict[bool, list[float]] = {False: [], True: []}
    misses: dict[bool, int] = {False: 0, True: 0}
    for sentence in SENTENCES:
        audio = ulaw_to_pcm(pcm_to_ulaw(tts.synthesize_sync(sentence, 8000)))
        print(f"{audio.size / 8000:5.2f} s  {sentence}")
        for trim in (False, True):
            stt.trim = trim
            result = stt.transcribe_sync(audio, 8000)
            timings[trim].append(result.elapsed_s)
            misses[trim] += words(result.text) != words(sentence)
            label = "trimmed" if trim else "full"
            print(f"   {label:8} {result.elapsed_s:6.3f} s  {result.text}")
    for trim in (False, True):
        label = "trimmed" if trim else "full"
        print(
            f"{label:8} median {statistics.median(timings[trim]):.3f} s, "
            f"max {max(timings[trim]):.3f} s, "
            f"{misses[trim]}/{len(SENTENCES)} transcripts not word-exact"
        )
    print(f"trimmed decodes redone on the full window: {stt.fallbacks}")
    stt.shutdown()
    tts.shutdown()


if __name__ == "__main__":
    main()
