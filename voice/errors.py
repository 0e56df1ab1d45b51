"""Errors raised by the media server.

VoiceError
├── TwilioError     Twilio's REST API refused or could not be reached
└── StreamError     a media stream broke the protocol beyond repair
"""

from __future__ import annotations


class VoiceError(Exception):
    """Root of every error raised by `voice`."""


class TwilioError(VoiceError):
    """A request to Twilio's REST API failed."""


class StreamError(VoiceError):
    """A media stream cannot go on (too many bad frames, no `start`, ...)."""
