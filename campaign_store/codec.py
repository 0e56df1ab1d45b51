"""Stored records: msgpack envelopes carrying their kind and schema version.

Every value is `{"k": kind, "v": version, "d": data}`. Reading a record
written by an older version runs the migrations from its version up to the
current one, in memory; the record is rewritten in the new shape only when it
is next saved. A record from a newer version is refused rather than guessed
at, so an old process running beside a new one never drops fields it does
not know.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from campaign_store.errors import SchemaError

__all__ = ["CURRENT", "MIGRATIONS", "decode", "encode"]

M = TypeVar("M", bound=BaseModel)
Data = dict[str, Any]

CURRENT: dict[str, int] = {
    "agent": 1,
    "campaign": 1,
    "lead": 2,
    "call": 1,
    "apikey": 1,
    "attempt": 1,
}


def _lead_1_to_2(data: Data) -> Data:
    # Version 2 records where a lead's zone came from (the import, its number,
    # or the campaign); version 1 kept only the zone, always one it was given.
    data.setdefault("timezone_source", "given")
    data.setdefault("timezone_note", "")
    return data


# (kind, from version) -> function producing the next version's data.
MIGRATIONS: dict[tuple[str, int], Callable[[Data], Data]] = {
    ("lead", 1): _lead_1_to_2,
}


def encode(kind: str, model: BaseModel) -> bytes:
    envelope = {"k": kind, "v": CURRENT[kind], "d": model.model_dump(mode="json")}
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return packed


def decode(kind: str, blob: bytes, cls: type[M]) -> M:
    try:
        envelope = msgpack.unpackb(blob, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise SchemaError(f"a stored {kind} is not valid msgpack") from exc
    if not isinstance(envelope, dict) or envelope.get("k") != kind:
        raise SchemaError(f"a stored record is not a {kind}")
    version = envelope.get("v")
    current = CURRENT[kind]
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"a stored {kind} has no schema version")
    if version > current:
        raise SchemaError(
            f"a stored {kind} has schema version {version}; this voxdial reads "
            f"up to {current}: upgrade it"
        )
    data: Data = envelope["d"]
    while version < current:
        data = MIGRATIONS[(kind, version)](data)
        version += 1
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(f"a stored {kind} does not validate: {exc}") from exc
