"""Settings are read from VOXDIAL_* variables and a TOML file, and validated."""

from pathlib import Path

import pytest

from voice.settings import Settings, SettingsError

DEV = {"VOXDIAL_VALIDATE_SIGNATURES": "false"}


def test_defaults_load() -> None:
    """With only the auth token set, every default is valid."""
    settings = Settings.load({"VOXDIAL_TWILIO_AUTH_TOKEN": "t"})
    assert settings.port == 8080
    assert settings.validate_signatures


def test_signature_validation_needs_a_token() -> None:
    """Validating signatures without an auth token is refused, naming both settings."""
    with pytest.raises(SettingsError, match="VOXDIAL_TWILIO_AUTH_TOKEN"):
        Settings.load({})
    assert not Settings.load(DEV).validate_signatures


def test_environment_overrides_file(tmp_path: Path) -> None:
    """An environment variable wins over the TOML file, which wins over defaults."""
    config = tmp_path / "voxdial.toml"
    config.write_text('port = 9000\nhost = "0.0.0.0"\n')
    settings = Settings.load({"VOXDIAL_PORT": "9100", **DEV}, config)
    assert settings.port == 9100
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("VOXDIAL_PORT", "eighty", "expected an integer"),
        ("VOXDIAL_PORT", "70000", "must be a TCP port"),
        ("VOXDIAL_VAD_THRESHOLD", "1.5", "between 0 and 1"),
        ("VOXDIAL_VALIDATE_SIGNATURES", "maybe", "true or false"),
        ("VOXDIAL_PUBLIC_URL", "example.com", "http"),
        ("VOXDIAL_NO_SUCH_THING", "1", "unknown setting"),
        ("VOXDIAL_CALLING_HOURS", "US=8-21", "REGION=HH:MM-HH:MM"),
    ],
)
def test_bad_values_name_the_setting(name: str, value: str, message: str) -> None:
    """A bad value raises SettingsError naming the variable and the problem."""
    with pytest.raises(SettingsError) as info:
        Settings.load({**DEV, name: value})
    assert name in str(info.value) and message in str(info.value)


def test_secrets_are_redacted() -> None:
    """Secrets never appear in the loggable form of the settings."""
    settings = Settings.load({"VOXDIAL_TWILIO_AUTH_TOKEN": "hunter2"})
    assert "hunter2" not in repr(settings.redacted())
