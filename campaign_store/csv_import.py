"""Lead lists from CSV: a streaming reader that validates each row.

The admin API spools an upload to a temporary file and, from a worker thread,
pulls validated leads out of it in batches with `LeadCsvReader.next_batch`.
Only the current batch and the set of numbers already accepted are held in
memory, never the file.

Whole-file problems raise `CsvFormatError`: the text is not UTF-8, there is
no header row, no phone column, two columns with the same name, a required
field with no column. `LeadCsvReader()` raises it for the header; a bad byte
further down surfaces from `next_batch`.

Every other problem rejects one row and is reported with a `RowError`. A row
gets one error, the first of, in this order:

    bad_row           the cell count differs from the header, or bad quoting
    bad_number        no valid phone number
    duplicate         the number of a row accepted earlier in the file
    unknown_timezone  the timezone cell is not an IANA zone
    missing_required  a required campaign field is empty
    bad_value         a value does not fit its field, or is too long

Row numbers are what a spreadsheet shows: the header is row 1 and a quoted
newline does not start a new row. Blank rows keep their number but are
skipped and not counted.

Accounting: `report.accepted` counts the leads handed out by `next_batch`. A
caller that refuses one of them afterwards (the number is already in the
campaign, say) calls `reject`, which moves it from accepted to rejected, so
`accepted + rejected == rows` holds throughout.

Messages never contain a phone number: at most four digits of any value are
echoed back.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import re
import unicodedata
import zoneinfo
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, BinaryIO, Final

import phonenumbers
from phonenumbers import (
    NumberParseException,
    PhoneNumber,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
)
from phonenumbers import timezone as number_zones

from campaign_store.models import FieldDef, FieldValue, TimezoneSource, check_zone

__all__ = [
    "CsvFormatError",
    "ImportOptions",
    "ImportReport",
    "LeadCsvReader",
    "ParsedLead",
    "RowError",
    "coerce_value",
    "infer_timezone",
    "normalize_phone",
]

ERROR_CODES: Final = tuple(
    "bad_row bad_number duplicate unknown_timezone missing_required bad_value".split()
)
MAX_NAME: Final = 200
MAX_STRING: Final = 1000
MAX_FIELDS: Final = 100  # as many as a campaign may define

# Column names, normalized; the first present wins the role and any other
# becomes a custom field under its own name.
PHONE_ALIASES: Final = (
    *("phone", "phone_number", "number", "mobile", "mobile_number", "mobile_phone"),
    *("cell", "cell_phone", "telephone", "tel", "msisdn"),
)
NAME_ALIASES: Final = ("name", "full_name", "contact", "contact_name")
TIMEZONE_ALIASES: Final = ("timezone", "time_zone", "tz")
FIRST_NAME_ALIASES: Final = ("first_name", "firstname", "given_name")
LAST_NAME_ALIASES: Final = ("last_name", "lastname", "surname", "family_name")
_ROLES: Final = {
    alias: (role, rank)
    for role, aliases in (
        ("phone", PHONE_ALIASES),
        ("name", NAME_ALIASES),
        ("timezone", TIMEZONE_ALIASES),
        ("first_name", FIRST_NAME_ALIASES),
        ("last_name", LAST_NAME_ALIASES),
    )
    for rank, alias in enumerate(aliases)
}

_DELIMITERS: Final = ",;\t|"
_CHUNK: Final = 1 << 16
_MAX_LINE: Final = 1 << 20
_UTF8_BOM: Final = b"\xef\xbb\xbf"

_NOT_WORD = re.compile(r"[^a-z0-9]+")
_PHONE_SEPARATORS = re.compile(r"[\s\-.()/]+")
_PHONE_DIGITS = re.compile(r"\+?\d+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_BOOLEANS: Final = {"true": True, "yes": True, "1": True} | {
    "false": False,
    "no": False,
    "0": False,
}
_UNKNOWN_ZONE: Final = "Etc/Unknown"


class CsvFormatError(ValueError):
    """The file as a whole cannot be imported; the message says why."""


@dataclass(frozen=True)
class ImportOptions:
    campaign_timezone: str
    fields: Sequence[FieldDef] = ()
    default_region: str | None = None
    max_errors_listed: int = 1000

    def __post_init__(self) -> None:
        check_zone(self.campaign_timezone)
        if self.default_region is not None:
            region = self.default_region.upper()
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"unknown region {self.default_region!r}")
            object.__setattr__(self, "default_region", region)
        if self.max_errors_listed < 0:
            raise ValueError("max_errors_listed must not be negative")


@dataclass(slots=True)
class ParsedLead:
    row: int
    phone: str
    name: str
    timezone: str
    timezone_source: TimezoneSource
    timezone_note: str
    fields: dict[str, FieldValue]


@dataclass(slots=True)
class RowError:
    row: int
    code: str
    message: str


@dataclass
class ImportReport:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    new_fields: list[str] = field(default_factory=list)
    truncated_errors: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "by_reason": dict(self.by_reason),
            "errors": [asdict(error) for error in self.errors],
            "new_fields": list(self.new_fields),
            "truncated_errors": self.truncated_errors,
        }


# Values.


def _got(value: str) -> str:
    """`, got 'value'` for a message, or nothing if it could give a number away."""
    if len(value) > 40 or sum(ch.isdigit() for ch in value) > 4:
        return ""
    return f", got {value!r}"


def _parse_phone(raw: str, default_region: str | None) -> PhoneNumber:
    digits = _PHONE_SEPARATORS.sub("", raw)
    if not digits:
        raise ValueError("empty")
    if not _PHONE_DIGITS.fullmatch(digits):
        raise ValueError("not a phone number: only digits, spaces and + - . ( )")
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if not digits.startswith("+") and default_region is None:
        raise ValueError(
            "national number needs a default region; "
            "or write it with + and the country code"
        )
    try:
        return phonenumbers.parse(digits, default_region)
    except NumberParseException as exc:
        reasons = {
            NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
            NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
            NumberParseException.TOO_SHORT_NSN: "too short",
            NumberParseException.TOO_LONG: "too long",
        }
        reason = reasons.get(exc.error_type, "not a phone number")
        raise ValueError(reason) from exc


def _invalid(number: PhoneNumber) -> ValueError:
    reasons = {
        ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
        ValidationResult.TOO_SHORT: "too short",
        ValidationResult.TOO_LONG: "too long",
        ValidationResult.INVALID_LENGTH: "wrong length",
    }
    reason = reasons.get(phonenumbers.is_possible_number_with_reason(number))
    return ValueError(
        f"not a valid number ({reason})" if reason else "not a valid number"
    )


def normalize_phone(raw: str, default_region: str | None) -> str:
    """`raw` as E.164, or ValueError saying what is wrong (never the number)."""
    number = _parse_phone(raw, default_region)
    if not phonenumbers.is_valid_number(number):
        raise _invalid(number)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _zones(number: PhoneNumber, number_type: int) -> tuple[str, ...]:
    """As `time_zones_for_number`, reusing a number type already computed."""
    if number_type == PhoneNumberType.UNKNOWN:
        return (_UNKNOWN_ZONE,)
    if phonenumbers.is_number_type_geographical(number_type, number.country_code or 0):
        return number_zones.time_zones_for_geographical_number(number)
    return number_zones.time_zones_for_number(number)


@functools.lru_cache(maxsize=4096)
def _choose_zone(
    zones: tuple[str, ...], fallback: str
) -> tuple[str, TimezoneSource, str]:
    real = [zone for zone in zones if zone != _UNKNOWN_ZONE]
    if not real:
        note = "no time zone is known for this number; using the campaign zone"
        return fallback, TimezoneSource.CAMPAIGN, note
    if len(real) > 1:
        note = f"number spans {len(real)} zones; using the campaign zone"
        return fallback, TimezoneSource.CAMPAIGN, note
    if _known_zone(real[0]) is None:
        note = f"the number's zone {real[0]} is unknown here; using the campaign zone"
        return fallback, TimezoneSource.CAMPAIGN, note
    return real[0], TimezoneSource.NUMBER, ""


def infer_timezone(e164: str, fallback: str) -> tuple[str, TimezoneSource, str]:
    """The number's zone if it has exactly one, else `fallback` with a note."""
    number = _parse_phone(e164, None)
    return _choose_zone(_zones(number, phonenumbers.number_type(number)), fallback)


@functools.cache
def _zones_by_folded_name() -> dict[str, str]:
    return {name.casefold(): name for name in zoneinfo.available_timezones()}


@functools.lru_cache(maxsize=1024)
def _known_zone(name: str) -> str | None:
    """The IANA zone `name` names, matched without regard to case; or None."""
    try:
        return check_zone(name)
    except ValueError:
        return _zones_by_folded_name().get(name.casefold())


def coerce_value(field: FieldDef, raw: str) -> FieldValue:
    """`raw` as a value of the field's type, or ValueError saying what is wrong."""
    value = raw.strip()
    kind = field.type
    if kind == "string":
        if len(value) > MAX_STRING:
            raise ValueError(f"longer than {MAX_STRING} characters")
        return value
    if kind == "integer":
        if not _INTEGER.fullmatch(value):
            raise ValueError(f"expected a whole number{_got(value)}")
        number = int(value)
        if not -(2**63) <= number < 2**63:
            raise ValueError("whole number out of range")
        return number
    if kind == "number":
        if not _NUMBER.fullmatch(value):
            raise ValueError(f"expected a number such as 12.5{_got(value)}")
        real = float(value)
        if math.isinf(real):
            raise ValueError("number out of range")
        return real
    if kind == "boolean":
        answer = _BOOLEANS.get(value.casefold())
        if answer is None:
            raise ValueError(f"expected yes/no, true/false or 1/0{_got(value)}")
        return answer
    if kind == "date":
        try:
            valid = bool(_DATE.fullmatch(value)) and bool(date.fromisoformat(value))
        except ValueError:  # such as 2024-02-30
            valid = False
        if not valid:
            raise ValueError("expected a date as YYYY-MM-DD")
        return value
    if kind == "email":
        if len(value) > 254 or not _EMAIL.fullmatch(value):
            raise ValueError("expected an email address such as ann@example.com")
        return value
    if kind == "enum":
        folded = value.casefold()
        for choice in field.choices:
            if choice.strip().casefold() == folded:
                return choice
        raise ValueError(f"expected one of {', '.join(field.choices)}{_got(value)}")
    raise ValueError(f"unknown field type {kind!r}")


# The file.


def _lines(stream: BinaryIO) -> Iterator[str]:
    """The stream's lines as text, checking UTF-8 line by line.

    Splitting bytes before decoding is safe: CR and LF never occur inside a
    multi-byte UTF-8 sequence. It also lets an error name its byte offset.
    """
    pending = b""
    while len(pending) < 4:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        pending += chunk
    offset = 0
    if pending.startswith(_UTF8_BOM):
        pending = pending[len(_UTF8_BOM) :]
        offset = len(_UTF8_BOM)
    elif pending.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CsvFormatError("the file is UTF-16 text; save it as 'CSV UTF-8'")
    line_no = 0
    eof = False
    while not eof:
        chunk = stream.read(_CHUNK)
        eof = not chunk
        pending += chunk
        lines = pending.splitlines(keepends=True)
        # The last piece may be half a line, or a CR whose LF is to come.
        pending = b"" if eof or not lines else lines.pop()
        if len(pending) > _MAX_LINE:
            raise CsvFormatError(f"line {line_no + 1} is longer than 1 MiB")
        for raw in lines:
            line_no += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CsvFormatError(
                    f"the file is not UTF-8 text: invalid byte at offset "
                    f"{offset + exc.start} (line {line_no}); save it as 'CSV UTF-8'"
                ) from exc
            offset += len(raw)
            yield text


def _sniff(line: str) -> str:
    """The delimiter seen most often in `line` outside quotes; ',' on a tie."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _normalize(header: str) -> str:
    """A column name as a field name: ASCII, lower case, words joined by '_'."""
    text = unicodedata.normalize("NFKD", header).encode("ascii", "ignore").decode()
    key = _NOT_WORD.sub("_", text.lower()).strip("_")
    if key[:1].isdigit():
        key = "_" + key
    return key[:64]


@dataclass(frozen=True, slots=True)
class _Column:
    index: int
    header: str
    key: str
    definition: FieldDef | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where each part of a lead is found in a row."""

    width: int
    roles: dict[str, _Column]
    fields: tuple[_Column, ...]
    defaults: dict[str, FieldValue]
    new_fields: list[str]


def _plan(cells: list[str], options: ImportOptions) -> _Plan:
    headers = [cell.strip() for cell in cells]
    while headers and not headers[-1]:
        headers.pop()  # spreadsheets leave empty cells after the last column
    if not headers:
        raise CsvFormatError("the header row is empty")
    definitions: dict[str, FieldDef] = {}
    for definition in options.fields:
        definitions.setdefault(definition.name.casefold(), definition)

    by_key: dict[str, str] = {}
    roles: dict[str, tuple[int, _Column]] = {}
    custom: list[_Column] = []
    for index, header in enumerate(headers):
        if not header:
            raise CsvFormatError(f"column {index + 1} has no name in the header row")
        key = _normalize(header)
        if not key:
            raise CsvFormatError(
                f"column {index + 1} ({header!r}) needs a name with letters or digits"
            )
        if key in by_key:
            raise CsvFormatError(
                f"columns {by_key[key]!r} and {header!r} have the same name ({key})"
            )
        by_key[key] = header
        defined = definitions.get(key)
        column = _Column(index, header, defined.name if defined else key, defined)
        role = None if defined else _ROLES.get(key)
        if role is None:
            custom.append(column)
            continue
        name, rank = role
        held = roles.get(name)
        if held is None or rank < held[0]:
            roles[name] = (rank, column)
            if held is not None:
                custom.append(held[1])
        else:
            custom.append(column)

    if "phone" not in roles:
        raise CsvFormatError(
            "no phone column: name one of " + ", ".join(PHONE_ALIASES[:4]) + ", ..."
        )
    custom.sort(key=lambda column: column.index)
    if len(custom) > MAX_FIELDS:
        raise CsvFormatError(
            f"{len(custom)} custom columns; a campaign has at most {MAX_FIELDS}"
        )
    present = {column.key for column in custom if column.definition}
    defaults: dict[str, FieldValue] = {}
    for definition in definitions.values():
        if definition.name in present:
            continue
        if definition.default is not None:
            defaults[definition.name] = definition.default
        elif definition.required and not definition.extract:
            # Fields filled from the transcript are not expected in a lead list.
            raise CsvFormatError(f"required field {definition.name!r} has no column")
    return _Plan(
        width=len(headers),
        roles={name: column for name, (_, column) in roles.items()},
        fields=tuple(custom),
        defaults=defaults,
        new_fields=[column.key for column in custom if column.definition is None],
    )


def _blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


class LeadCsvReader:
    """Validated leads from a CSV lead list, a batch at a time."""

    def __init__(self, stream: BinaryIO, options: ImportOptions) -> None:
        self.options = options
        lines = _lines(stream)
        head: list[str] = []
        for line in lines:
            head.append(line)
            if line.strip(' \t\r\n"' + _DELIMITERS):
                break
        else:
            raise CsvFormatError("the file is empty: no header row")
        self._records = csv.reader(
            itertools.chain(head, lines), delimiter=_sniff(head[-1]), strict=True
        )
        self._row = 0
        self._done = False
        header = None
        while header is None:
            try:
                cells = next(self._records)
            except csv.Error as exc:
                raise CsvFormatError(f"the header row is not valid CSV: {exc}") from exc
            self._row += 1
            if not _blank(cells):
                header = cells
        self._plan = _plan(header, options)
        self._seen: dict[str, int] = {}
        self.report = ImportReport(new_fields=list(self._plan.new_fields))

    @property
    def new_fields(self) -> list[str]:
        """Columns the campaign does not define; they become string fields."""
        return list(self._plan.new_fields)

    def next_batch(
        self, size: int = 500
    ) -> tuple[list[ParsedLead], list[RowError]] | None:
        """Up to `size` more rows as leads and errors; None once all are read.

        Raises CsvFormatError if the rest of the file turns out not to be UTF-8.
        """
        if size < 1:
            raise ValueError("size must be at least 1")
        leads: list[ParsedLead] = []
        errors: list[RowError] = []
        taken = 0
        while taken < size and not self._done:
            try:
                cells = next(self._records)
            except StopIteration:
                self._done = True
                break
            except csv.Error as exc:
                self._row += 1
                taken += 1
                self.report.rows += 1
                error = RowError(self._row, "bad_row", f"not valid CSV: {exc}")
                errors.append(error)
                self._record(error)
                continue
            self._row += 1
            if _blank(cells):
                continue
            taken += 1
            self.report.rows += 1
            result = self._lead(self._row, cells)
            if isinstance(result, RowError):
                errors.append(result)
                self._record(result)
            else:
                leads.append(result)
                self.report.accepted += 1
        if not taken:
            return None
        return leads, errors

    def reject(self, row: int, code: str, message: str) -> None:
        """Refuse a lead `next_batch` handed out: accepted becomes rejected.

        Call it once per refused lead. `message` goes into the report as is,
        so it must not hold the phone number.
        """
        if self.report.accepted < 1:
            raise ValueError("no accepted lead left to reject")
        self.report.accepted -= 1
        self._record(RowError(row, code, message))

    def _record(self, error: RowError) -> None:
        report = self.report
        report.rejected += 1
        report.by_reason[error.code] = report.by_reason.get(error.code, 0) + 1
        if len(report.errors) < self.options.max_errors_listed:
            report.errors.append(error)
        else:
            report.truncated_errors = True

    def _lead(self, row: int, cells: list[str]) -> ParsedLead | RowError:
        plan = self._plan
        roles = plan.roles
        if len(cells) != plan.width and (
            len(cells) < plan.width or not _blank(cells[plan.width :])
        ):
            message = f"{len(cells)} cells; the header has {plan.width} columns"
            return RowError(row, "bad_row", message)

        # The number: valid, and not seen in an accepted row before.
        phone = roles["phone"]
        try:
            number = _parse_phone(cells[phone.index], self.options.default_region)
            number_type = phonenumbers.number_type(number)
            # number_type() is UNKNOWN exactly when is_valid_number() is false:
            # both match the same patterns, and this spares a second match.
            if number_type == PhoneNumberType.UNKNOWN:
                raise _invalid(number)
        except ValueError as exc:
            return RowError(row, "bad_number", f"column {phone.header!r}: {exc}")
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        first = self._seen.get(e164)
        if first is not None:
            return RowError(row, "duplicate", f"same number as row {first}")

        zone: str | None = None
        zone_column = roles.get("timezone")
        given = cells[zone_column.index].strip() if zone_column else ""
        if zone_column and given:
            zone = _known_zone(given)
            if zone is None:
                message = (
                    f"column {zone_column.header!r}: not an IANA time zone "
                    f"such as America/New_York{_got(given)}"
                )
                return RowError(row, "unknown_timezone", message)

        # Fields: report a missing required one before a bad value.
        values = dict(plan.defaults)
        missing: str | None = None
        bad: str | None = None
        for column in plan.fields:
            raw = cells[column.index].strip()
            definition = column.definition
            if not raw:
                if definition is None:
                    continue
                if definition.default is not None:
                    values[column.key] = definition.default
                elif definition.required and not definition.extract:
                    missing = missing or (
                        f"required field {column.key!r} is empty "
                        f"(column {column.header!r})"
                    )
                continue
            try:
                if definition is None:
                    if len(raw) > MAX_STRING:
                        raise ValueError(f"longer than {MAX_STRING} characters")
                    values[column.key] = raw
                else:
                    values[column.key] = coerce_value(definition, raw)
            except ValueError as exc:
                bad = bad or f"column {column.header!r}: {exc}"
        name = self._name(cells)
        if missing:
            return RowError(row, "missing_required", missing)
        if len(name) > MAX_NAME:
            bad = f"name longer than {MAX_NAME} characters"
        if bad:
            return RowError(row, "bad_value", bad)

        self._seen[e164] = row
        if zone is not None:
            source, note = TimezoneSource.GIVEN, ""
        else:
            zones = _zones(number, number_type)
            zone, source, note = _choose_zone(zones, self.options.campaign_timezone)
        return ParsedLead(row, e164, name, zone, source, note, values)

    def _name(self, cells: list[str]) -> str:
        roles = self._plan.roles
        if "name" in roles:
            text = cells[roles["name"].index]
        else:
            parts = (roles.get("first_name"), roles.get("last_name"))
            text = " ".join(cells[part.index] for part in parts if part)
        # A name is spoken and shown on one line: fold newlines and runs of space.
        return " ".join(text.split())
