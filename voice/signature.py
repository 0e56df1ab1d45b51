"""Twilio request signatures (`X-Twilio-Signature`).

The signature is base64(HMAC-SHA1(auth token, URL + parameters)), where the
URL is the one Twilio requested, query string included, and the parameters
are the POST form fields sorted by name, each name followed by its value.

Tolerances, matching Twilio's own validator:

- Twilio does not say whether the standard port is part of the signed URL,
  so a signature is accepted for the URL with or without it (`:443` for
  https/wss, `:80` for http/ws).
- A form field sent more than once contributes each distinct value, in sorted
  order. The reference library drops repeated identical values; until Twilio
  documents which it signs, both spellings are accepted.
- The stream upgrade is signed over the `wss://` URL in the TwiML, which our
  server sees as an `https://` request behind a proxy: `candidate_urls`
  yields both spellings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "SIGNATURE_HEADER",
    "MultiMapping",
    "Params",
    "candidate_urls",
    "compute_signature",
    "public_url",
    "validate",
    "validate_upgrade",
]

SIGNATURE_HEADER = "X-Twilio-Signature"

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
_SPELLINGS = {"wss": "https", "https": "wss", "ws": "http", "http": "ws"}


@runtime_checkable
class MultiMapping(Protocol):
    """A form with repeated keys, such as aiohttp's `MultiDictProxy`."""

    def keys(self) -> Iterable[str]: ...

    def getall(self, key: str) -> list[str]: ...


# A plain mapping may hold a list of values for a repeated key.
Params: TypeAlias = (
    "MultiMapping | Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]"
)


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    """Every (name, value) pair in the form, repeated keys included."""
    if params is None:
        return []
    if isinstance(params, MultiMapping):
        names = dict.fromkeys(params.keys())
        return [(name, value) for name in names for value in params.getall(name)]
    if isinstance(params, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in params.items():
            if isinstance(value, str):
                pairs.append((name, value))
            else:
                pairs.extend((name, v) for v in value)
        return pairs
    return list(params)


def _payload(url: str, pairs: list[tuple[str, str]], *, dedupe: bool) -> bytes:
    # Sorting by name then value is sorting the pairs; Python compares code
    # points, as Twilio's reference library does.
    ordered = sorted(set(pairs)) if dedupe else sorted(pairs)
    return (url + "".join(name + value for name, value in ordered)).encode()


def _sign(auth_token: str, payload: bytes) -> str:
    digest = hmac.new(auth_token.encode(), payload, hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def compute_signature(auth_token: str, url: str, params: Params | None) -> str:
    """The signature Twilio sends for a request to `url` with form `params`."""
    return _sign(auth_token, _payload(url, _pairs(params), dedupe=True))


def _port_variants(url: str) -> list[str]:
    """`url` as given, then with the standard port added or removed."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return [url]
    if default is None or parts.hostname is None:
        return [url]
    userinfo, _, hostport = parts.netloc.rpartition("@")
    prefix = userinfo + "@" if userinfo else ""
    if port is None:
        netloc = f"{prefix}{hostport}:{default}"
    elif port == default:
        netloc = prefix + hostport[: hostport.rindex(":")]
    else:
        return [url]
    return [url, urlunsplit(parts._replace(netloc=netloc))]


def validate(auth_token: str, url: str, params: Params | None, signature: str) -> bool:
    """Whether `signature` is Twilio's for this URL and form, in constant time."""
    if not auth_token or not signature:
        return False
    expected = signature.strip().encode()
    pairs = _pairs(params)
    spellings = [True, False] if len(set(pairs)) != len(pairs) else [True]
    valid = False
    for candidate in _port_variants(url):
        for dedupe in spellings:
            computed = _sign(auth_token, _payload(candidate, pairs, dedupe=dedupe))
            # No early exit: every candidate costs the same.
            valid |= hmac.compare_digest(computed.encode(), expected)
    return valid


def candidate_urls(url: str) -> list[str]:
    """`url` in both of its spellings, `wss://`/`https://` or `ws://`/`http://`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    other = _SPELLINGS.get(scheme)
    if other is None:
        return [url]
    return [url, urlunsplit(parts._replace(scheme=other))]


def validate_upgrade(auth_token: str, url: str, signature: str) -> bool:
    """Whether `signature` signs the stream upgrade to `url` in any spelling."""
    results = [validate(auth_token, u, None, signature) for u in candidate_urls(url)]
    return any(results)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # A plain dict is case-sensitive; proxies and tests spell names freely.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None:
        return None
    # A chain of proxies appends: the first entry is the one the client used.
    first = value.split(",")[0].strip()
    return first or None


def public_url(
    request_url: str, headers: Mapping[str, str], configured_base: str | None
) -> str:
    """The URL Twilio requested, rebuilt from what reached this server.

    With `configured_base` (the public base URL from settings), its scheme and
    host replace the request's, and its path is put in front of the request
    path unless the proxy passed that prefix through. Without it, the scheme
    and host come from `X-Forwarded-Proto` and `X-Forwarded-Host`, falling
    back to `Host` and the request URL itself.
    """
    request = urlsplit(request_url)
    if configured_base:
        base = urlsplit(configured_base.rstrip("/"))
        path = request.path
        if base.path and not (path == base.path or path.startswith(base.path + "/")):
            path = base.path + path
        return urlunsplit((base.scheme, base.netloc, path, request.query, ""))

    scheme = _header(headers, "X-Forwarded-Proto") or request.scheme
    host = (
        _header(headers, "X-Forwarded-Host") or _header(headers, "Host")
    ) or request.netloc
    return urlunsplit((scheme.lower(), host, request.path, request.query, ""))
