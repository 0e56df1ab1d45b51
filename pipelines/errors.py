"""Errors raised by the per-call pipeline and its models.

PipelineError
├── ModelError      a model file is missing, corrupt or failed to load
├── STTError        transcription of an utterance failed
├── TTSError        synthesis of a sentence failed
└── LLMError        the chat-completions request failed or was malformed
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error raised by `pipelines`."""


class ModelError(PipelineError):
    """A model file is missing, does not match its checksum, or will not load."""


class STTError(PipelineError):
    """Speech-to-text failed for one utterance."""


class TTSError(PipelineError):
    """Text-to-speech failed for one sentence."""


class LLMError(PipelineError):
    """The LLM request failed: transport, HTTP status or a malformed stream."""
