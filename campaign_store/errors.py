"""The campaign store's exceptions.

StoreError                 anything the store cannot do
├── NotFound               no such object for this tenant (or another's)
├── Conflict               the object's state forbids the change
├── SchemaError            a stored record this version cannot read
└── ServerUnsuitable       the Redis server would lose or evict data
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of the campaign store's errors."""


class NotFound(StoreError):
    """The object does not exist, or belongs to another tenant."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class Conflict(StoreError):
    """The change is not allowed in the object's current state."""


class SchemaError(StoreError):
    """A stored record is newer than this code, or of the wrong kind."""


class ServerUnsuitable(StoreError):
    """The Redis server is configured so that it could lose our data."""
