"""voxdial's settings: one typed object, read from `VOXDIAL_*` variables.

Each field of `Settings` is read from the environment variable named after it
(`port` from `VOXDIAL_PORT`), or else from an optional TOML file (the file
named by `VOXDIAL_CONFIG`, keys spelled as the field names), or else keeps its
default. Values are checked once, at start: a bad one raises `SettingsError`
naming the variable, and the server refuses to start.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "VOXDIAL_"


class SettingsError(ValueError):
    """A setting has a value that voxdial cannot run with."""


def _check(predicate: Callable[[Any], bool], message: str) -> dict[str, Any]:
    return {"check": (predicate, message)}


def _positive() -> dict[str, Any]:
    return _check(lambda v: v > 0, "must be greater than 0")


def _calling_hours_ok(text: str) -> bool:
    from dialer.window import parse_jurisdictions

    try:
        parse_jurisdictions(text)
    except ValueError:
        return False
    return True


def _unit() -> dict[str, Any]:
    return _check(lambda v: 0.0 < v < 1.0, "must be between 0 and 1")


@dataclass(frozen=True)
class Settings:
    """Every knob of the media server. See the README for what each one does."""

    # The HTTP server.
    host: str = "127.0.0.1"
    port: int = field(
        default=8080, metadata=_check(lambda v: 0 <= v < 65536, "must be a TCP port")
    )
    public_url: str = field(
        default="",
        metadata=_check(
            lambda v: v == "" or v.startswith(("http://", "https://")),
            "must start with http:// or https://",
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=_check(
            lambda v: v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "must be DEBUG, INFO, WARNING or ERROR",
        ),
    )
    data_dir: Path = Path("data")

    # Twilio.
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", metadata={"secret": True})
    twilio_api_base: str = "https://api.twilio.com"
    validate_signatures: bool = True

    # The LLM: any OpenAI-compatible chat-completions endpoint.
    llm_base_url: str = ""
    llm_api_key: str = field(default="", metadata={"secret": True})
    llm_model: str = "voxdial-scripted"
    llm_timeout_s: float = field(default=10.0, metadata=_positive())
    llm_temperature: float = 0.4
    llm_max_tokens: int = field(default=200, metadata=_positive())

    # The campaign store. Empty: start a private redis-server (append-only,
    # data in `data_dir/redis`) for as long as voxdial runs.
    redis_url: str = field(
        default="",
        metadata={
            "secret": True,
            **_check(
                lambda v: v == "" or v.startswith(("redis://", "rediss://", "unix://")),
                "must be a redis://, rediss:// or unix:// URL",
            ),
        },
    )

    # The dialer (`voxdial dialer`).
    dialer_lease_s: float = field(default=30.0, metadata=_positive())
    dialer_tick_s: float = field(default=0.25, metadata=_positive())
    dialer_calls_per_second: float = field(default=1.0, metadata=_positive())
    dialer_reconcile_after_s: float = field(default=120.0, metadata=_positive())
    # The law's calling hours at the called party's local time, by country,
    # on top of each campaign's own schedule; `*` is every other country.
    calling_hours: str = field(
        default="US=08:00-21:00,CA=08:00-21:00,*=08:00-21:00",
        metadata=_check(
            _calling_hours_ok,
            "must be REGION=HH:MM-HH:MM entries separated by commas, or none",
        ),
    )

    # WhatsApp campaigns (Meta's Cloud API): one Meta app per server, like
    # one Twilio account. The token sends; the app secret checks every
    # webhook (X-Hub-Signature-256); the verify token answers Meta's
    # subscription handshake. The service window is WhatsApp's rule (free
    # text only within 24 h of the lead's last message): shorten it in tests
    # only.
    whatsapp_api_base: str = "https://graph.facebook.com/v21.0"
    whatsapp_access_token: str = field(default="", metadata={"secret": True})
    whatsapp_app_secret: str = field(default="", metadata={"secret": True})
    whatsapp_verify_token: str = field(default="", metadata={"secret": True})
    whatsapp_service_window_s: float = field(default=86_400.0, metadata=_positive())
    whatsapp_sweep_s: float = field(default=1.0, metadata=_positive())

    # Google Calendar, for campaigns that book meetings.
    google_calendar_api_base: str = "https://www.googleapis.com/calendar/v3"

    # The admin API.
    admin_api: bool = True
    admin_max_body_bytes: int = field(default=1 << 20, metadata=_positive())
    admin_max_csv_bytes: int = field(default=64 << 20, metadata=_positive())

    # The agent used when a call names none (until campaigns provide one).
    agent_system_prompt: str = (
        "You are a friendly assistant from {{company}} on a phone call. "
        "Answer in one or two short sentences."
    )
    agent_greeting: str = "Hello {{name}}, this is the assistant from {{company}}."

    # Speech models. `instant`: STT and TTS stand-ins that answer at once,
    # the real VAD and audio path (benchmarks of the server's own cost).
    speech: str = field(
        default="local",
        metadata=_check(
            lambda v: v in {"local", "instant"}, "must be local or instant"
        ),
    )
    stt_beam_size: int = field(default=1, metadata=_positive())
    stt_threads: int = field(default=2, metadata=_positive())
    stt_workers: int = field(default=1, metadata=_positive())
    tts_workers: int = field(default=1, metadata=_positive())
    tts_speed: float = field(default=1.0, metadata=_positive())
    vad_threshold: float = field(default=0.6, metadata=_unit())
    vad_start_ms: int = field(default=160, metadata=_positive())
    vad_stop_ms: int = field(default=200, metadata=_positive())
    turn_silence_ms: int = field(default=700, metadata=_positive())
    smart_turn: bool = True
    smart_turn_silence_ms: int = field(default=300, metadata=_positive())
    smart_turn_threshold: float = field(default=0.5, metadata=_unit())

    # Barge-in and playout.
    barge_in_min_speech_ms: int = field(default=200, metadata=_positive())
    playout_lead_ms: int = field(
        default=160, metadata=_check(lambda v: 20 <= v <= 1000, "must be 20..1000")
    )

    # Stream hygiene.
    media_timeout_s: float = field(default=5.0, metadata=_positive())
    max_frame_bytes: int = field(default=8192, metadata=_positive())
    max_bad_frames: int = field(default=50, metadata=_positive())
    record_calls: bool = True

    def public_base(self) -> str:
        """The public http(s) base URL, defaulting to this server's own address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, for logging."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            out[f.name] = value
        return out

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        *,
        serving: bool = True,
    ) -> Settings:
        """Read settings from the environment, then the TOML file, then defaults.

        `serving=False` is for the operator commands, which take no Twilio
        requests and so need no auth token to check them.
        """
        env = os.environ if environ is None else environ
        if config_file is None and env.get(PREFIX + "CONFIG"):
            config_file = Path(env[PREFIX + "CONFIG"])
        file_values: dict[str, Any] = {}
        if config_file is not None:
            try:
                file_values = tomllib.loads(config_file.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(
                    f"{PREFIX}CONFIG: cannot read {config_file}: {exc}"
                ) from exc

        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in file_values:
            if key not in known:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
        for key in env:
            if key.startswith(PREFIX) and key != PREFIX + "CONFIG":
                if key[len(PREFIX) :].lower() not in known:
                    raise SettingsError(f"{key}: unknown setting")

        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            if name in env:
                raw: Any = env[name]
            elif f.name in file_values:
                raw = file_values[f.name]
            else:
                continue
            value = _convert(name, hints[f.name], raw)
            check = f.metadata.get("check")
            if check is not None and not check[0](value):
                raise SettingsError(f"{name}: {check[1]} (got {raw!r})")
            values[f.name] = value
        settings = cls(**values)
        if serving and settings.validate_signatures and not settings.twilio_auth_token:
            raise SettingsError(
                f"{PREFIX}TWILIO_AUTH_TOKEN: required to validate Twilio's request "
                f"signatures; set it, or set {PREFIX}VALIDATE_SIGNATURES=false for "
                "local development"
            )
        return settings


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, kind: Any, raw: Any) -> Any:
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(raw, bool) or not str(raw).strip().lstrip("-").isdigit():
                raise ValueError("expected an integer")
            return int(str(raw).strip())
        if kind is float:
            try:
                return float(str(raw).strip())
            except ValueError:
                raise ValueError("expected a number") from None
        if kind is Path:
            return Path(str(raw))
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc} (got {raw!r})") from exc
