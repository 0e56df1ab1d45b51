"""Reading lead lists from CSV: parsing, validation and the rejection report."""

from __future__ import annotations

import io
import re
from typing import Any

import phonenumbers
import pytest

from campaign_store.csv_import import (
    CsvFormatError,
    ImportOptions,
    ImportReport,
    LeadCsvReader,
    ParsedLead,
    RowError,
    coerce_value,
    infer_timezone,
    normalize_phone,
)
from campaign_store.models import FieldDef, TimezoneSource

AREA_CODES = (212, 312, 415, 617, 713)


def reader(data: bytes | str, **options: Any) -> LeadCsvReader:
    if isinstance(data, str):
        data = data.encode()
    options.setdefault("campaign_timezone", "America/Chicago")
    return LeadCsvReader(io.BytesIO(data), ImportOptions(**options))


def read(
    data: bytes | str, size: int = 500, **options: Any
) -> tuple[list[ParsedLead], list[RowError], ImportReport]:
    """Every lead and error in the file, read in batches of `size`."""
    csv_reader = reader(data, **options)
    leads: list[ParsedLead] = []
    errors: list[RowError] = []
    while (batch := csv_reader.next_batch(size)) is not None:
        leads += batch[0]
        errors += batch[1]
    return leads, errors, csv_reader.report


def only_error(data: bytes | str, **options: Any) -> RowError:
    leads, errors, _ = read(data, **options)
    assert leads == [] and len(errors) == 1
    return errors[0]


def us_number(i: int) -> str:
    """The i-th of 50,000 distinct valid US numbers, as a person writes them."""
    area = AREA_CODES[i % len(AREA_CODES)]
    i //= len(AREA_CODES)
    return f"+1 {area} {200 + i // 10000} {i % 10000:04d}"


# Encoding and CSV dialects.


def test_byte_order_mark_is_ignored():
    """A UTF-8 BOM (Excel's 'CSV UTF-8') does not stick to the first column."""
    leads, _, _ = read(b"\xef\xbb\xbfphone,name\n+12125550123,Zo\xc3\xab\n")
    assert [(lead.phone, lead.name) for lead in leads] == [("+12125550123", "Zoë")]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter_is_sniffed_from_the_header(delimiter: str):
    """Semicolon, tab and pipe files read like comma files."""
    d = delimiter
    text = f"phone{d}name{d}city\n+12125550123{d}Ann, Jr{d}NYC\n"
    leads, _, report = read(text)
    assert leads[0].name == "Ann, Jr"
    assert leads[0].fields == {"city": "NYC"}
    assert report.new_fields == ["city"]


def test_delimiter_inside_quotes_does_not_count():
    """Quoted semicolons in a comma header do not make it a semicolon file."""
    leads, _, _ = read('"a;b;c",phone\nx,+12125550123\n')
    assert leads[0].fields == {"a_b_c": "x"}


def test_quoted_commas_newlines_and_doubled_quotes():
    """Standard CSV quoting works; a name's line breaks become spaces."""
    text = (
        'phone,name,notes\n+12125550123,"Smith, John","line one\nline two"\n'
        '+12125550124,"Ann ""Nan""\nLee",\n+12125550125,Bo,x\n'
    )
    leads, errors, _ = read(text)
    assert errors == []
    assert [lead.name for lead in leads] == ["Smith, John", 'Ann "Nan" Lee', "Bo"]
    assert leads[0].fields == {"notes": "line one\nline two"}
    assert [lead.row for lead in leads] == [2, 3, 4]


def test_bad_quoting_rejects_the_row_and_reading_goes_on():
    """A stray quote after a closing quote is a bad_row, not a whole-file failure."""
    leads, errors, _ = read('phone,name\n+12125550123,"Ann"x\n+12125550124,Bo\n')
    assert [lead.name for lead in leads] == ["Bo"]
    assert [(e.row, e.code) for e in errors] == [(2, "bad_row")]


def test_carriage_return_line_endings():
    """Old Mac files, CR only, split into rows too."""
    leads, _, _ = read("phone,name\r+12125550123,Ann\r+12125550124,Bo\r")
    assert [lead.name for lead in leads] == ["Ann", "Bo"]


def test_not_utf8_in_the_header_is_a_format_error():
    """Latin-1 text is refused up front with the offending byte's offset."""
    with pytest.raises(CsvFormatError, match=r"not UTF-8.*offset 12 \(line 1\)"):
        reader("phone,nom,pr\xe9nom\n".encode("latin-1"))


def test_not_utf8_further_down_is_a_format_error_from_next_batch():
    """A bad byte after the header surfaces when its batch is read."""
    csv_reader = reader(b"phone,name\n+12125550123,Ann\n+12125550124,Jos\xe9\n")
    with pytest.raises(CsvFormatError, match=r"not UTF-8.*line 3"):
        csv_reader.next_batch()


def test_utf16_is_named():
    """Excel's 'Unicode text' is recognised and the fix suggested."""
    with pytest.raises(CsvFormatError, match="UTF-16"):
        reader("phone\n+12125550123\n".encode("utf-16"))


# The header.


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("name,email\n", "no phone column"),
        ("phone,Email,E-Mail,email\n", "same name"),
        ("phone,,name\n", "column 2 has no name"),
    ],
)
def test_header_problems_are_format_errors(header: str, message: str):
    """A file without a usable header is refused, saying what is wrong."""
    with pytest.raises(CsvFormatError, match=message):
        reader(header)


def test_header_names_are_normalized_and_aliases_understood():
    """Case, spaces and dashes do not matter; phone and name have aliases."""
    text = (
        "Mobile Number;Contact-Name;Time Zone;Company Name\n+12125550123;Ann;UTC;Acme\n"
    )
    leads, _, report = read(text)
    lead = leads[0]
    assert (lead.phone, lead.name, lead.timezone) == ("+12125550123", "Ann", "UTC")
    assert lead.fields == {"company_name": "Acme"}
    assert report.new_fields == ["company_name"]


def test_first_and_last_name_make_the_name():
    """Without a name column, first_name and last_name are joined."""
    leads, _, report = read(
        "phone,First Name,Last Name\n+12125550123,Ann,Lee\n+12125550124,,Bo\n"
    )
    assert [lead.name for lead in leads] == ["Ann Lee", "Bo"]
    assert leads[0].fields == {}
    assert report.new_fields == []


def test_second_phone_column_becomes_a_field():
    """With both phone and mobile, phone is dialled and mobile is kept."""
    leads, _, report = read("mobile,phone\n+12125550199,+12125550123\n")
    assert leads[0].phone == "+12125550123"
    assert leads[0].fields == {"mobile": "+12125550199"}
    assert report.new_fields == ["mobile"]


def test_campaign_fields_match_columns_and_others_are_new():
    """Defined fields are typed; undefined columns are listed as new string fields."""
    fields = [
        FieldDef(name="Age", type="integer"),
        FieldDef(name="vip", type="boolean"),
    ]
    csv_reader = reader(
        "phone,AGE,VIP,Shoe Size\n+12125550123,40,yes,9\n", fields=fields
    )
    assert csv_reader.new_fields == ["shoe_size"]
    batch = csv_reader.next_batch()
    assert batch is not None
    assert batch[0][0].fields == {"Age": 40, "vip": True, "shoe_size": "9"}


def test_required_field_without_column_is_a_format_error():
    """A required field the file cannot fill refuses the whole file."""
    fields = [FieldDef(name="plan", required=True)]
    with pytest.raises(CsvFormatError, match="required field 'plan' has no column"):
        reader("phone\n+12125550123\n", fields=fields)


def test_defaults_fill_missing_columns_and_empty_cells():
    """A field with a default gets it from an empty cell or a missing column."""
    fields = [
        FieldDef(name="plan", required=True, default="basic"),
        FieldDef(name="score", type="integer", default=0),
        FieldDef(name="note"),
    ]
    leads, _, _ = read(
        "phone,score,note\n+12125550123,,\n+12125550124,7,hi\n", fields=fields
    )
    assert [lead.fields for lead in leads] == [
        {"plan": "basic", "score": 0},
        {"plan": "basic", "score": 7, "note": "hi"},
    ]


def test_required_field_empty_is_rejected():
    """An empty required cell without a default is missing_required, naming it."""
    fields = [FieldDef(name="plan", required=True)]
    error = only_error("phone,Plan\n+12125550123, \n", fields=fields)
    assert (error.row, error.code) == (2, "missing_required")
    assert "'plan'" in error.message


def test_fields_filled_from_the_transcript_are_not_required_at_import():
    """A required extract field may be absent from the lead list."""
    fields = [FieldDef(name="budget", type="number", required=True, extract=True)]
    leads, _, _ = read("phone\n+12125550123\n", fields=fields)
    assert leads[0].fields == {}


# Rows.


def test_ragged_rows():
    """Short rows and rows with extra content are bad_row; empty extra cells pass."""
    text = (
        "phone,name,city\n"
        "+12125550123,Ann\n+12125550124,Bo,NYC,,\n+12125550125,Cy,LA,x\n"
    )
    leads, errors, _ = read(text)
    assert [lead.name for lead in leads] == ["Bo"]
    assert [(e.row, e.code) for e in errors] == [(2, "bad_row"), (4, "bad_row")]
    assert "2 cells; the header has 3 columns" in errors[0].message


def test_empty_lines_are_skipped_but_keep_their_row_number():
    """Blank rows are not counted, and later rows keep their spreadsheet number."""
    text = "\nphone,name\n\n+12125550123,Ann\n,\n   \n+12125550124,Bo\n\n"
    leads, errors, report = read(text)
    assert [(lead.row, lead.name) for lead in leads] == [(4, "Ann"), (7, "Bo")]
    assert (report.rows, report.accepted, errors) == (2, 2, [])


def test_batches_are_limited_and_none_marks_the_end():
    """next_batch returns at most `size` rows and then None, again and again."""
    text = "phone\n" + "".join(f"{us_number(i)}\n" for i in range(5))
    csv_reader = reader(text)
    sizes = []
    while (batch := csv_reader.next_batch(2)) is not None:
        sizes.append(len(batch[0]))
    assert sizes == [2, 2, 1]
    assert csv_reader.next_batch() is None


def test_first_problem_in_order_is_reported():
    """A row with several problems gets one error: the first in documented order."""
    fields = [
        FieldDef(name="age", type="integer"),
        FieldDef(name="plan", required=True),
    ]
    text = (
        "phone,tz,age,plan\nabc,Mars/Base,x,\n+12125550123,Mars/Base,x,\n"
        "+12125550124,,x,\n+12125550125,,x,pro\n"
    )
    _, errors, _ = read(text, fields=fields)
    assert [e.code for e in errors] == [
        "bad_number",
        "unknown_timezone",
        "missing_required",
        "bad_value",
    ]


def test_name_too_long_is_a_bad_value():
    """Names are capped at 200 characters."""
    error = only_error(f"phone,name\n+12125550123,{'a' * 201}\n")
    assert error.code == "bad_value" and "name" in error.message


def test_new_field_value_too_long_is_a_bad_value():
    """Values of columns the campaign did not define are capped at 1000 characters."""
    error = only_error(f"phone,notes\n+12125550123,{'a' * 1001}\n")
    assert (error.code, error.message) == (
        "bad_value",
        "column 'notes': longer than 1000 characters",
    )


# Phone numbers.


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (212) 555-0123", None, "+12125550123"),
        ("+1.212.555.0123", None, "+12125550123"),
        ("0044 20 7946 0958", None, "+442079460958"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("(212) 555-0123", "US", "+12125550123"),
        ("1-212-555-0123", "US", "+12125550123"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("07911 123456", "GB", "+447911123456"),
    ],
)
def test_normalize_phone(raw: str, region: str | None, e164: str):
    """International, 00-prefixed and national numbers become E.164."""
    assert normalize_phone(raw, region) == e164


@pytest.mark.parametrize(
    ("raw", "region", "message"),
    [
        ("(212) 555-0123", None, "needs a default region"),
        ("+1 000 000 0000", None, "not a valid number"),
        ("+1 212 555 01", None, "too short"),
        ("abc", "US", "not a phone number"),
        ("212-555-0123 x12", "US", "not a phone number"),
        ("", "US", "empty"),
        ("+999 1234 5678", None, "country code"),
    ],
)
def test_normalize_phone_refuses(raw: str, region: str | None, message: str):
    """Invalid numbers raise ValueError saying why (possible is not enough)."""
    with pytest.raises(ValueError, match=message):
        normalize_phone(raw, region)


def test_national_numbers_in_a_file_use_the_default_region():
    """A file of national numbers reads with default_region, and not without."""
    text = "phone\n(212) 555-0123\n"
    leads, _, _ = read(text, default_region="US")
    assert leads[0].phone == "+12125550123"
    leads, _, _ = read("phone\n020 7946 0958\n", default_region="gb")
    assert leads[0].phone == "+442079460958"
    error = only_error(text)
    assert error.code == "bad_number"
    assert "default region" in error.message and "'phone'" in error.message


@pytest.mark.parametrize("raw", ["+1 000 000 0000", "abc", "+1 212 555", "", "555"])
def test_bad_numbers_in_a_file(raw: str):
    """Invalid, partial, empty and non-numbers are bad_number."""
    assert only_error(f"phone,name\n{raw},Ann\n").code == "bad_number"


def test_reader_agrees_with_normalize_phone():
    """The reader's one-pass validation accepts exactly what is_valid_number does."""
    samples = [
        "+12125550123",
        "+12120000000",
        "+18005550100",
        "+442079460958",
        "+447700900123",
        "+4420794609",
        "+33612345678",
        "+3361234567",
        "+74951234567",
        "+8613800138000",
        "+61491570156",
        "+6149157015",
    ]
    text = "phone\n" + "\n".join(samples) + "\n"
    leads, _, _ = read(text)
    expected = []
    for sample in samples:
        number = phonenumbers.parse(sample)
        if phonenumbers.is_valid_number(number):
            expected.append(sample)
    assert [lead.phone for lead in leads] == expected
    assert 0 < len(expected) < len(samples)


def test_duplicates_name_the_first_row():
    """The same number in another format is a duplicate of the earlier row."""
    text = "phone\n+1 212 555 0123\n+12125550124\n(212) 555-0123\n001-212-555-0124\n"
    leads, errors, report = read(text, default_region="US")
    assert [lead.row for lead in leads] == [2, 3]
    assert [(e.row, e.code, e.message) for e in errors] == [
        (4, "duplicate", "same number as row 2"),
        (5, "duplicate", "same number as row 3"),
    ]
    assert report.by_reason == {"duplicate": 2}


def test_rejected_row_does_not_claim_its_number():
    """A number first seen in a rejected row is accepted later in the file."""
    fields = [FieldDef(name="age", type="integer")]
    leads, errors, _ = read(
        "phone,age\n+12125550123,x\n+12125550123,3\n", fields=fields
    )
    assert [lead.row for lead in leads] == [3]
    assert [e.code for e in errors] == ["bad_value"]


# Time zones.


def test_infer_timezone():
    """One zone comes from the number; several or none fall back to the campaign's."""
    assert infer_timezone("+12125550123", "UTC") == (
        "America/New_York",
        TimezoneSource.NUMBER,
        "",
    )
    assert infer_timezone("+442079460958", "UTC")[:2] == (
        "Europe/London",
        TimezoneSource.NUMBER,
    )
    zone, source, note = infer_timezone("+18005550100", "America/Denver")
    assert (zone, source) == ("America/Denver", TimezoneSource.CAMPAIGN)
    assert re.fullmatch(r"number spans \d+ zones; using the campaign zone", note)


def test_timezones_in_a_file():
    """Given zones win (any case); empty cells are inferred; unknown ones rejected."""
    text = (
        "phone,timezone\n+12125550123,europe/paris\n+12125550124,\n"
        "+18005550100,\n+442079460958,\n+12125550125,Eastern\n"
    )
    leads, errors, _ = read(text, campaign_timezone="America/Denver")
    assert [
        (lead.timezone, lead.timezone_source, bool(lead.timezone_note))
        for lead in leads
    ] == [
        ("Europe/Paris", TimezoneSource.GIVEN, False),
        ("America/New_York", TimezoneSource.NUMBER, False),
        ("America/Denver", TimezoneSource.CAMPAIGN, True),
        ("Europe/London", TimezoneSource.NUMBER, False),
    ]
    assert [(e.row, e.code) for e in errors] == [(6, "unknown_timezone")]
    assert "'timezone'" in errors[0].message and "'Eastern'" in errors[0].message


def test_options_are_checked():
    """An unknown campaign zone or region is a ValueError up front."""
    with pytest.raises(ValueError, match="time zone"):
        ImportOptions(campaign_timezone="Mars/Base")
    with pytest.raises(ValueError, match="region"):
        ImportOptions(campaign_timezone="UTC", default_region="XX")


# Field values.


@pytest.mark.parametrize(
    ("field", "raw", "value"),
    [
        (FieldDef(name="f"), "  hello  ", "hello"),
        (FieldDef(name="f", type="integer"), "-42", -42),
        (FieldDef(name="f", type="integer"), "+7", 7),
        (FieldDef(name="f", type="number"), "12.5", 12.5),
        (FieldDef(name="f", type="number"), "3", 3.0),
        (FieldDef(name="f", type="number"), "-.5e2", -50.0),
        (FieldDef(name="f", type="boolean"), "YES", True),
        (FieldDef(name="f", type="boolean"), "false", False),
        (FieldDef(name="f", type="boolean"), "0", False),
        (FieldDef(name="f", type="date"), "2024-02-29", "2024-02-29"),
        (
            FieldDef(name="f", type="email"),
            "ann.lee+x@mail.example.com",
            "ann.lee+x@mail.example.com",
        ),
        (FieldDef(name="f", type="enum", choices=["Basic", "Pro"]), "pro", "Pro"),
    ],
)
def test_coerce_value(field: FieldDef, raw: str, value: object):
    """Each field type accepts its usual spellings."""
    result = coerce_value(field, raw)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        (FieldDef(name="f"), "a" * 1001, "longer than 1000"),
        (FieldDef(name="f", type="integer"), "4.5", "whole number"),
        (FieldDef(name="f", type="integer"), "1,000", "whole number"),
        (FieldDef(name="f", type="integer"), "9" * 30, "out of range"),
        (FieldDef(name="f", type="number"), "1,5", "number such as 12.5"),
        (FieldDef(name="f", type="number"), "nan", "number such as 12.5"),
        (FieldDef(name="f", type="number"), "1e999", "out of range"),
        (FieldDef(name="f", type="boolean"), "maybe", "yes/no"),
        (FieldDef(name="f", type="date"), "2023-02-29", "YYYY-MM-DD"),
        (FieldDef(name="f", type="date"), "03/04/2024", "YYYY-MM-DD"),
        (FieldDef(name="f", type="email"), "ann@", "email address"),
        (FieldDef(name="f", type="email"), "ann@example", "email address"),
        (
            FieldDef(name="f", type="enum", choices=["Basic", "Pro"]),
            "gold",
            "one of Basic, Pro",
        ),
    ],
)
def test_coerce_value_refuses(field: FieldDef, raw: str, message: str):
    """Values that do not fit the type raise ValueError saying what was expected."""
    with pytest.raises(ValueError, match=message):
        coerce_value(field, raw)


def test_bad_value_names_the_column():
    """A value that does not fit its field is bad_value, naming the column."""
    fields = [FieldDef(name="plan", type="enum", choices=["basic", "pro"])]
    error = only_error("phone,Plan\n+12125550123,gold\n", fields=fields)
    assert (error.code, error.message) == (
        "bad_value",
        "column 'Plan': expected one of basic, pro, got 'gold'",
    )


# The report.


def test_reject_moves_a_lead_from_accepted_to_rejected():
    """The caller refuses a returned lead; the counts stay consistent."""
    csv_reader = reader("phone\n+12125550123\n+12125550124\n")
    batch = csv_reader.next_batch()
    assert batch is not None
    csv_reader.reject(batch[0][1].row, "duplicate", "already in the campaign")
    assert csv_reader.report.to_dict() == {
        "rows": 2,
        "accepted": 1,
        "rejected": 1,
        "by_reason": {"duplicate": 1},
        "errors": [
            {"row": 3, "code": "duplicate", "message": "already in the campaign"}
        ],
        "new_fields": [],
        "truncated_errors": False,
    }
    csv_reader.reject(2, "duplicate", "already in the campaign")
    with pytest.raises(ValueError, match="no accepted lead"):
        csv_reader.reject(2, "duplicate", "again")


def test_messages_never_show_a_full_number():
    """No message carries more than four digits of any number in the file."""
    fields = [FieldDef(name="alt", type="integer"), FieldDef(name="day", type="date")]
    numbers = ["+1 212 555 0123", "+1 000 000 0000", "212 555 0124"]
    text = (
        "phone,alt,day,tz\n"
        f"{numbers[0]},,,\n{numbers[1]},,,\n{numbers[2]},,,\n{numbers[0]},,,\n"
        f"+12125550125,{numbers[0]},,\n+12125550126,,{numbers[0]},\n"
        f"+12125550127,,,{numbers[0]}\n+12125550128,1,2,3,{numbers[0]}\n"
    )
    _, errors, report = read(text, fields=fields)
    assert report.rejected == len(errors) == 7
    for error in errors:
        digits = re.findall(r"\d", re.sub(r"row \d+", "", error.message))
        assert len(digits) <= 4, error.message


def test_fifty_thousand_rows():
    """A large valid file is read in batches with every lead accepted."""
    text = "phone,name\n" + "".join(f"{us_number(i)},Lead {i}\n" for i in range(50_000))
    leads, errors, report = read(text.encode(), size=1000)
    assert (report.rows, report.accepted, report.rejected) == (50_000, 50_000, 0)
    assert errors == [] and len(leads) == 50_000
    assert len({lead.phone for lead in leads}) == 50_000
    assert leads[-1].row == 50_001
    assert {lead.timezone_source for lead in leads} == {TimezoneSource.NUMBER}


def test_error_list_is_capped():
    """Beyond max_errors_listed, errors are counted but not listed."""
    good = "".join(f"{us_number(i)}\n" for i in range(100))
    text = "phone\n" + "+1 000 000 0000\n" * 1500 + good + "abc\n" * 500
    _, errors, report = read(text, max_errors_listed=1000)
    assert (report.rows, report.accepted, report.rejected) == (2100, 100, 2000)
    assert report.by_reason == {"bad_number": 2000}
    assert len(report.errors) == 1000 and report.truncated_errors
    assert len(errors) == 2000  # each batch still hands back all of its errors
    assert report.errors[-1].row == 1001
