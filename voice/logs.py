"""Logging set-up: stdlib `logging` everywhere, pipecat's loguru routed into it.

Level policy: INFO is a few lines per call (started, a latency line per turn,
barge-ins, ended with its reason and outcome); DEBUG may be per frame. No
phone number, token or API key is ever logged in full.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes every line with the call (or conversation) id."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('call_id', '-')}] {msg}", kwargs


_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _forward_loguru(message: Any) -> None:
    record = message.record
    level = record["level"].no
    logging.getLogger(f"pipecat.{record['name']}").log(level, "%s", record["message"])


def route_loguru(level: int = logging.WARNING) -> None:
    """Send pipecat's loguru output through stdlib logging instead of stderr.

    Messages below `level` are dropped by loguru itself, before any is
    formatted: pipecat logs at DEBUG on every frame processor start and stop.
    """
    from loguru import logger

    logger.remove()
    logger.add(_forward_loguru, level=level, format="{message}")


def setup(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=_FORMAT, stream=sys.stderr)
    # pipecat is chatty at INFO about things we already report.
    pipecat_level = max(logging.WARNING, logging.getLogger().level)
    logging.getLogger("pipecat").setLevel(pipecat_level)
    route_loguru(pipecat_level)


def mask_number(number: str) -> str:
    """A phone number safe to log: `+1415***67`."""
    if len(number) <= 6:
        return "***"
    return f"{number[:5]}***{number[-2:]}"
