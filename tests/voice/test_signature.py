from __future__ import annotations

import pytest
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from voice.signature import (
    candidate_urls,
    compute_signature,
    public_url,
    validate,
    validate_upgrade,
)

TOKEN = "12345678901234567890123456789012"
FORM = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
REFERENCE = RequestValidator(TOKEN)

URLS = [
    "https://example.com/twilio/voice",
    "https://example.com/twilio/voice?call_id=c1&lead_id=l%202&f_name=Ann",
    "https://example.com:8443/twilio/voice?x=1",
    "http://127.0.0.1:8080/twilio/voice",
    "https://user:secret@example.com/twilio/voice",
]


@pytest.mark.parametrize("url", URLS)
def test_matches_the_reference_signer(url: str) -> None:
    """Our signature equals Twilio's library's for the same URL and form."""
    assert compute_signature(TOKEN, url, FORM) == REFERENCE.compute_signature(url, FORM)


@pytest.mark.parametrize("url", URLS)
def test_reference_signatures_validate(url: str) -> None:
    """A request signed by Twilio's library passes our check, and vice versa."""
    theirs = REFERENCE.compute_signature(url, FORM)
    assert validate(TOKEN, url, FORM, theirs)
    assert REFERENCE.validate(url, FORM, compute_signature(TOKEN, url, FORM))


def test_no_params_signs_the_url_alone() -> None:
    """A GET (or the stream upgrade) signs just the URL."""
    url = "https://example.com/twilio/voice?call_id=c1"
    theirs = REFERENCE.compute_signature(url, {})
    assert compute_signature(TOKEN, url, None) == theirs
    assert validate(TOKEN, url, None, theirs)


def test_tampering_fails() -> None:
    """A changed parameter, URL, token or signature fails validation."""
    url = URLS[1]
    good = REFERENCE.compute_signature(url, FORM)
    assert not validate(TOKEN, url, FORM | {"Digits": "9"}, good)
    assert not validate(TOKEN, url + "&extra=1", FORM, good)
    assert not validate(TOKEN.replace("1", "x"), url, FORM, good)
    assert not validate(TOKEN, url, FORM, good[:-2] + "AA")
    assert not validate(TOKEN, url, FORM, "")
    assert not validate("", url, FORM, good)


@pytest.mark.parametrize(
    ("signed", "received"),
    [
        ("https://example.com/twilio/voice", "https://example.com:443/twilio/voice"),
        ("https://example.com:443/twilio/voice", "https://example.com/twilio/voice"),
        (
            "http://example.com/twilio/voice?a=1",
            "http://example.com:80/twilio/voice?a=1",
        ),
        ("http://example.com:80/twilio/voice", "http://example.com/twilio/voice"),
    ],
)
def test_standard_port_is_optional(signed: str, received: str) -> None:
    """The standard port may be present on one side and absent on the other."""
    assert validate(TOKEN, received, FORM, REFERENCE.compute_signature(signed, FORM))


def test_other_ports_must_match() -> None:
    """A non-standard port is part of the URL and cannot be dropped or changed."""
    signature = REFERENCE.compute_signature("https://example.com:8443/v", FORM)
    assert not validate(TOKEN, "https://example.com/v", FORM, signature)
    assert not validate(TOKEN, "https://example.com:9443/v", FORM, signature)


def test_repeated_form_keys_match_the_reference() -> None:
    """A field sent several times contributes each value, sorted, as Twilio's does."""
    form = MultiDict([("To", "+1800"), ("Tag", "b"), ("Tag", "a"), ("Tag", "c")])
    url = URLS[0]
    theirs = REFERENCE.compute_signature(url, form)
    assert compute_signature(TOKEN, url, form) == theirs
    assert validate(TOKEN, url, form, theirs)
    # The same form as a mapping of lists, or as pairs, signs the same.
    assert (
        compute_signature(TOKEN, url, {"To": "+1800", "Tag": ["c", "a", "b"]}) == theirs
    )
    assert compute_signature(TOKEN, url, list(form.items())) == theirs


def test_repeated_identical_values_validate_either_way() -> None:
    """A value repeated verbatim is accepted whether signed once or twice."""
    form = MultiDict([("Tag", "a"), ("Tag", "a")])
    url = URLS[0]
    assert validate(TOKEN, url, form, REFERENCE.compute_signature(url, form))
    twice = REFERENCE.compute_signature(url, {"TagaTag": "a"})  # "TagaTaga"
    assert validate(TOKEN, url, form, twice)


def test_candidate_urls_spell_both_schemes() -> None:
    """A stream URL is tried as wss:// and https:// (ws:// and http:// unencrypted)."""
    assert candidate_urls("wss://example.com/stream") == [
        "wss://example.com/stream",
        "https://example.com/stream",
    ]
    assert candidate_urls("https://example.com/stream") == [
        "https://example.com/stream",
        "wss://example.com/stream",
    ]
    assert candidate_urls("ws://127.0.0.1:8080/stream") == [
        "ws://127.0.0.1:8080/stream",
        "http://127.0.0.1:8080/stream",
    ]


@pytest.mark.parametrize(
    "signed", ["wss://example.com/stream", "https://example.com/stream"]
)
def test_upgrade_validates_in_either_spelling(signed: str) -> None:
    """A stream upgrade signed over the wss:// or https:// URL is accepted."""
    signature = REFERENCE.compute_signature(signed, {})
    assert validate_upgrade(TOKEN, "wss://example.com/stream", signature)
    assert validate_upgrade(TOKEN, "https://example.com:443/stream", signature)
    assert not validate_upgrade(TOKEN, "wss://example.com/other", signature)


def test_public_url_from_forwarded_headers() -> None:
    """Behind a proxy the scheme and host come from X-Forwarded-*."""
    headers = CIMultiDict(
        {
            "Host": "10.0.0.5:8080",
            "x-forwarded-proto": "https, http",
            "X-Forwarded-Host": "calls.example.com",
        }
    )
    url = public_url("http://10.0.0.5:8080/twilio/voice?a=1", headers, None)
    assert url == "https://calls.example.com/twilio/voice?a=1"


def test_public_url_header_names_are_case_insensitive_in_a_dict() -> None:
    """Plain dict headers are matched regardless of case."""
    headers = {"x-forwarded-proto": "https", "host": "calls.example.com"}
    url = public_url("http://10.0.0.5:8080/stream", headers, None)
    assert url == "https://calls.example.com/stream"


def test_public_url_without_proxy_is_the_request_url() -> None:
    """With no forwarding headers the request URL stands."""
    url = "http://127.0.0.1:8080/twilio/voice?a=1"
    assert public_url(url, {}, None) == url


def test_public_url_prefers_the_configured_base() -> None:
    """A configured base URL replaces the scheme and host and prefixes its path."""
    request = "http://10.0.0.5:8080/twilio/voice?a=1"
    spoofed = {"X-Forwarded-Host": "evil.example.com"}
    assert (
        public_url(request, spoofed, "https://calls.example.com/")
        == "https://calls.example.com/twilio/voice?a=1"
    )
    assert (
        public_url(request, {}, "https://example.com/voxdial")
        == "https://example.com/voxdial/twilio/voice?a=1"
    )
    # A proxy that passes the prefix through does not get it twice.
    passed = "http://10.0.0.5:8080/voxdial/twilio/voice"
    assert (
        public_url(passed, {}, "https://example.com/voxdial")
        == "https://example.com/voxdial/twilio/voice"
    )
