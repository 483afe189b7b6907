"""DICOM dataset → one typed table row, mirroring the Cloud Healthcare API's BigQuery export.

Each standard top-level attribute becomes a column named by its keyword, typed from the data dictionary's
VR and VM (so a column's type never depends on which file came first): DA → date, TM → time, DT → UTC
timestamp, PN → struct(Alphabetic, Ideographic, Phonetic), integer VRs → int64, DS/FL/FD → float64, text
VRs → string, small binary → bytes; VM > 1 → list; SQ → list of structs, recursively. Private and
unknown attributes go to one ``OtherElements`` column. A value that does not parse for its VR leaves the
typed column NULL and is kept, raw, in ``value_errors`` with the reason: a bad value never fails a row.

Multi-valued attributes keep every position, empty ones included (position carries meaning: the first
SpecificCharacterSet value is the default repertoire, ImageType value 3 is a defined term). BigQuery
arrays refuse NULL elements, so an empty value at position k is: '' for text VRs, NaN for DS/FL/FD, a
person name whose three components are NULL for PN. Integer, date and time VRs (IS, DA, TM, DT) have no
such value that cannot be mistaken for a real one: there the column is NULL and the raw value, positions
intact, is kept in ``value_errors``. Padding spaces that PS3.5 §6.2 calls insignificant are removed:
leading and trailing for AE, AS, CS, DA, DS, DT, IS, LO, SH, TM, UI; trailing only for LT, ST, UT, UC,
UR (their leading spaces are significant).

BigQuery allows at most 15 levels of nested RECORDs. A top-level sequence is level 1, a sequence in its
items level 2, and a person name or OtherElements inside the items of a level-k sequence is level k+1; so
sequences are expanded into records down to level MAX_SEQUENCE_LEVEL (14), and a sequence nested deeper
(deep SR content trees) is kept whole as its DICOM JSON (PS3.18 F.2) text in a STRING field, binary values
over BULK_DATA_THRESHOLD left out. The type of a field never depends on the file: its level is its path.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import math
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydicom.datadict import (
    dictionary_VM,
    dictionary_VR,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import DA, DT, TM, PersonName

#: Binary values longer than this many bytes (pixel data, overlays, LUTs, waveforms…) are left out.
BULK_DATA_THRESHOLD = 1024
#: Deepest sequence expanded into records (BigQuery: 15 levels of RECORD, one kept for PN inside the items).
MAX_SEQUENCE_LEVEL = 14
#: Raw text kept for an unparseable value is cut to this many characters.
RAW_TEXT_LIMIT = 1024

PERSON_NAME_TYPE = pa.struct(
    [("Alphabetic", pa.string()), ("Ideographic", pa.string()), ("Phonetic", pa.string())]
)
OTHER_ELEMENT_TYPE = pa.struct(
    [("Tag", pa.string()), ("VR", pa.string()), ("Data", pa.list_(pa.string()))]
)
VALUE_ERROR_TYPE = pa.struct(
    [
        ("Path", pa.string()),
        ("Tag", pa.string()),
        ("VR", pa.string()),
        ("RawValue", pa.string()),
        ("Error", pa.string()),
    ]
)

#: Columns medbeam adds to every row (not DICOM keywords, hence lower case), in table order.
SOURCE_COLUMNS: dict[str, pa.DataType] = {
    "path": pa.string(),
    "file_size": pa.int64(),
    "TransferSyntaxUID": pa.string(),
}
OTHER_ELEMENTS_COLUMN = "OtherElements"
VALUE_ERRORS_COLUMN = "value_errors"
TRAILING_COLUMNS: dict[str, pa.DataType] = {
    OTHER_ELEMENTS_COLUMN: pa.list_(OTHER_ELEMENT_TYPE),
    VALUE_ERRORS_COLUMN: pa.list_(VALUE_ERROR_TYPE),
}

_STRING_VRS = {"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UI", "UR", "UT", "AT"}
_INT_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_ASCII_PARSED_VRS = {"IS", "DS", "DA", "TM", "DT"}
#: Text VRs pydicom decodes with its default encoding whatever SpecificCharacterSet says.
_DEFAULT_ENCODED_VRS = {"AE", "AS", "CS", "UI"}
#: struct codes of the binary number VRs, whose raw bytes are unpacked here as pydicom's convert_numbers does
_BINARY_NUMBER_CODES = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
#: Text VRs whose trailing spaces only are insignificant (PS3.5 Table 6.2-1); other text VRs lose both.
_TRAILING_ONLY_VRS = {"LT", "ST", "UT", "UC", "UR", "PN"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Never read into a row, whatever their size: they are the image itself.
_BULK_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010, 0xFFFAFFFA, 0xFFFCFFFC}


class ValueParseError(ValueError):
    """A value that does not fit its VR."""


@dataclass
class InstanceRow:
    """A row and the Arrow type of each of its columns (columns present in this dataset only)."""

    values: dict[str, Any]
    types: dict[str, pa.DataType]
    value_errors: list[dict[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Types from the data dictionary


def _vr_kind(vr: str) -> str:
    """Collapse a dictionary VR (possibly ambiguous, like 'US or SS') to the kind of column it makes."""
    options = {v.strip() for v in vr.split(" or ")}
    if options <= _INT_VRS:
        return "int"
    if options & _BINARY_VRS:
        return "bytes"
    if len(options) == 1:
        (single,) = options
        if single in _FLOAT_VRS:
            return "float"
        return {"DA": "date", "TM": "time", "DT": "timestamp", "PN": "pn", "SQ": "seq"}.get(
            single, "str"
        )
    return "str"


_KIND_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "pn": PERSON_NAME_TYPE,
    "bytes": pa.binary(),
}


#: The list type of each kind's column type, built once (pa.list_ makes a new object per call).
_KIND_LIST_TYPES: dict[str, pa.DataType] = {kind: pa.list_(column_type) for kind, column_type in _KIND_TYPES.items()}


def _is_multi_valued(vm: str) -> bool:
    return vm.strip() != "1"


def column_name(tag: BaseTag) -> str | None:
    """The column for a public tag: its keyword; repeating groups (50xx, 60xx) other than the first get a suffix."""
    keyword = keyword_for_tag(tag)
    if not keyword:
        return None
    group = tag.group
    if 0x5000 <= group <= 0x60FF and group & 0xFF00 in (0x5000, 0x6000) and group & 0x00FF:
        return f"{keyword}_{group:04X}"
    return keyword


@functools.lru_cache(maxsize=8192)
def _column_plan(tag: int) -> tuple[str, str, str, bool] | None:
    """(column name, dictionary VR, kind, multi-valued?) of a public tag, None for private and unknown ones.

    A pure function of the data dictionary, asked for every element of every file: remembered per tag
    (about a fifth of a header's row time).
    """
    tag_ = Tag(tag)
    name = None if tag_.is_private else column_name(tag_)
    if name is None:
        return None
    dict_vr = dictionary_VR(tag_)
    return name, dict_vr, _vr_kind(dict_vr), _is_multi_valued(dictionary_VM(tag_))


def _column_sort_key(name: str) -> tuple[int, str]:
    base, _, suffix = name.partition("_")
    try:
        tag = tag_for_keyword(base)
    except Exception:  # noqa: BLE001 - not a keyword: sort last, by name
        tag = None
    if tag is None:
        return (1 << 33, name)
    if suffix:
        tag = (int(suffix, 16) << 16) | (tag & 0xFFFF)
    return (tag, name)


# ---------------------------------------------------------------------------------------------------
# Values


def _strip(text: str) -> str:
    return text.strip(" \x00")


def _raw_text(raw: RawDataElement | DataElement | None) -> str:
    if raw is None:
        return ""
    numbers = _raw_numbers(raw)  # a binary number element's numbers, not its bytes as text
    value = raw.value if numbers is None else numbers
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
    else:
        text = str(value)
    return _strip(text)[:RAW_TEXT_LIMIT]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _parse_int(value: Any) -> int:
    if isinstance(value, str):
        value = _strip(value)
        number = float(value)
        if not number.is_integer():
            raise ValueParseError(f"{value!r} is not an integer")
        value = int(number)
    value = int(value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueParseError(f"{value} does not fit in a 64-bit integer")
    return value


def _parse_date(value: Any) -> dt.date:
    parsed = DA(_strip(str(value)))
    if parsed is None:
        raise ValueParseError("empty date")
    return dt.date(parsed.year, parsed.month, parsed.day)


def _parse_time(value: Any) -> dt.time:
    text = _strip(str(value))
    if ":" in text and len(text) >= 5:  # ACR-NEMA 'HH:MM:SS', which PS3.5 still asks readers to accept
        text = text.replace(":", "")
    parsed = TM(text)
    if parsed is None:
        raise ValueParseError("empty time")
    return dt.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)


def _parse_timestamp(value: Any) -> dt.datetime:
    parsed = DT(_strip(str(value)))
    if parsed is None:
        raise ValueParseError("empty date-time")
    plain = dt.datetime(
        parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second,
        parsed.microsecond, tzinfo=parsed.tzinfo,
    )
    if plain.tzinfo is None:  # no offset in the value: taken as UTC, as BigQuery does
        return plain.replace(tzinfo=dt.timezone.utc)
    return plain.astimezone(dt.timezone.utc)


def _parse_person_name(value: Any) -> dict[str, str | None]:
    if not isinstance(value, PersonName):
        value = PersonName(str(value))
    return {
        "Alphabetic": value.alphabetic or None,
        "Ideographic": value.ideographic or None,
        "Phonetic": value.phonetic or None,
    }


def _parse_string(value: Any) -> str:
    if isinstance(value, BaseTag):
        return f"{int(value):08X}"
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


_PARSERS = {
    "int": _parse_int,
    "float": lambda v: float(_strip(v)) if isinstance(v, str) else float(v),
    "str": _parse_string,
    "date": _parse_date,
    "time": _parse_time,
    "timestamp": _parse_timestamp,
    "pn": _parse_person_name,
}


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, MultiValue | list | bytes) and len(value) == 0)


def _binary_value(value: Any, vr: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, MultiValue | list | int):  # an 'US or OW' element read as US
        ints = _as_list(value)
        width = 2 if vr in {"US", "SS", "OW"} else 4
        return b"".join(int(v).to_bytes(width, "little", signed=int(v) < 0) for v in ints)
    raise ValueParseError(f"{type(value).__name__} is not binary")


#: What an empty value at one position of a multi-valued attribute becomes (BigQuery arrays hold no NULL).
_EMPTY_ITEMS: dict[str, Any] = {
    "str": "",
    "float": math.nan,
    "pn": {"Alphabetic": None, "Ideographic": None, "Phonetic": None},
}


def _convert(value: Any, kind: str, multi: bool, vr: str = "") -> Any:
    """Convert a pydicom value to the column's Python value; raise on a value that does not fit its VR."""
    if kind == "str":
        trailing_only = vr in _TRAILING_ONLY_VRS  # the padding PS3.5 calls insignificant (module docstring)

        def parse(v: Any) -> str:
            text = _parse_string(v)
            return text.rstrip(" \x00") if trailing_only else text.strip(" \x00")

    else:
        parse = _PARSERS[kind]
    items = _as_list(value)
    if all(_is_empty(v) for v in items):
        return None
    if multi:
        converted = []
        for position, item in enumerate(items, start=1):
            if not _is_empty(item):
                converted.append(parse(item))
            elif kind in _EMPTY_ITEMS:
                converted.append(_EMPTY_ITEMS[kind])
            else:
                raise ValueParseError(
                    f"value {position} of {len(items)} is empty, and a BigQuery {kind} array cannot hold it in place"
                )
        return converted
    if kind == "str":
        return "\\".join(parse(v) for v in items)
    items = [v for v in items if not _is_empty(v)]
    if len(items) > 1:
        raise ValueParseError(f"{len(items)} values where the dictionary allows one")
    return parse(items[0])


# ---------------------------------------------------------------------------------------------------
# Datasets


def _other_element(tag: BaseTag, elem: RawDataElement | DataElement, vr: str) -> dict[str, Any]:
    """A private or unknown element as {Tag, VR, Data}: text values as strings, small binary as base64."""
    data: list[str] | None
    if vr == "SQ":
        data = None
    elif vr in _BINARY_VRS or isinstance(elem.value, bytes | bytearray):
        length = getattr(elem, "length", None)
        raw = elem.value
        if raw is None or (length is not None and length > BULK_DATA_THRESHOLD):
            data = None
        else:
            data = [base64.b64encode(bytes(raw)).decode("ascii")] if len(raw) <= BULK_DATA_THRESHOLD else None
    else:
        values = _as_list(elem.value)
        data = [] if all(_is_empty(v) for v in values) else ["" if _is_empty(v) else _parse_string(v) for v in values]
    return {"Tag": f"{int(tag):08X}", "VR": vr, "Data": data}


def _element_vr(raw: RawDataElement | DataElement | None, fallback: str) -> str:
    vr = getattr(raw, "VR", None)
    return vr if vr else fallback


def dataset_to_row(
    ds: Dataset, _path: str = "", _errors: list[dict[str, str]] | None = None, _level: int = 0
) -> InstanceRow:
    """Turn every top-level element of `ds` into a typed column value (sequences recurse; `_level` is the
    number of sequences `ds` is nested in)."""
    errors: list[dict[str, str]] = [] if _errors is None else _errors
    values: dict[str, Any] = {}
    types: dict[str, pa.DataType] = {}
    others: list[dict[str, Any]] = []

    for tag in list(ds.keys()):
        itag = int(tag)
        if not itag & 0xFFFF or itag >> 16 in (0x0000, 0x0002) or itag in _BULK_TAGS:
            continue  # group lengths, command and file-meta groups, pixel data
        raw = ds.get_item(tag, keep_deferred=True)
        plan = _column_plan(itag)
        if plan is None:
            try:
                elem = ds[tag] if getattr(raw, "value", None) is not None or raw.VR == "SQ" else raw
                others.append(_other_element(tag, elem, _element_vr(raw, "UN")))
            except Exception:  # noqa: BLE001 - undecodable private data: record its tag only
                others.append({"Tag": f"{itag:08X}", "VR": _element_vr(raw, "UN"), "Data": None})
            continue

        name, dict_vr, kind, multi = plan

        if kind == "bytes":
            types[name] = pa.binary()
            length = getattr(raw, "length", None)
            if length is not None and length > BULK_DATA_THRESHOLD:
                continue  # bulk binary (deferred or not): left out, never read
            try:
                value = _binary_value(ds[tag].value, _element_vr(raw, dict_vr))
                values[name] = value if value is not None and len(value) <= BULK_DATA_THRESHOLD else None
            except Exception as exc:  # noqa: BLE001
                errors.append(_value_error(f"{_path}{name}", tag, dict_vr, raw, exc))
            continue

        if kind == "seq":
            where = f"{_path}{name}"
            try:
                items = ds[tag].value
            except Exception as exc:  # noqa: BLE001
                errors.append(_value_error(where, tag, dict_vr, raw, exc))
                types[name] = pa.list_(pa.struct([]))
                continue
            if _level + 1 > MAX_SEQUENCE_LEVEL:
                types[name] = pa.string()
                values[name] = _sequence_json(items) if items else None
                continue
            item_rows = [
                dataset_to_row(item, f"{where}[{i}].", errors, _level + 1) for i, item in enumerate(items or [])
            ]
            item_type = pa.struct([])
            for item_row in item_rows:
                item_type = merge_types(item_type, pa.struct(list(item_row.types.items())))
            types[name] = pa.list_(item_type)
            values[name] = [item_row.values for item_row in item_rows] or None
            continue

        types[name] = _KIND_LIST_TYPES[kind] if multi else _KIND_TYPES[kind]
        raw_vr = getattr(raw, "VR", None)
        vr = raw_vr if raw_vr else dict_vr
        try:
            values[name] = _convert(_text_or_value(ds, tag, raw, raw_vr), kind, multi, vr)
        except Exception as exc:  # noqa: BLE001 - keep the raw text, never fail the row
            values[name] = None
            errors.append(_value_error(f"{_path}{name}", tag, vr, raw, exc))

    if others:
        values[OTHER_ELEMENTS_COLUMN] = others
        types[OTHER_ELEMENTS_COLUMN] = TRAILING_COLUMNS[OTHER_ELEMENTS_COLUMN]
    return InstanceRow(values=values, types=types, value_errors=errors)


def _sequence_json(items: Any) -> str:
    """A sequence too deep for records, as the DICOM JSON of its items (bulk binary left out)."""
    return json.dumps(
        [item.to_json_dict(BULK_DATA_THRESHOLD, lambda _elem: "") for item in items],
        ensure_ascii=False,
        sort_keys=True,
    )


def _text_or_value(ds: Dataset, tag: BaseTag, raw: RawDataElement | DataElement, raw_vr: str | None) -> Any:
    """An element's value, read from its raw bytes where pydicom's conversion is ours to do exactly.

    ASCII number/date VRs are parsed from their raw text by us: pydicom would silently truncate '1.5' to 1.
    AE, AS, CS and UI are decoded as pydicom decodes them (its default encoding whatever the character set,
    trailing spaces and NULs dropped, split at backslashes; values.convert_string, convert_UI and
    convert_AE_string), and US, SS, UL, SL, FL, FD, SV and UV are unpacked from their bytes in the element's
    byte order (values.convert_numbers), without building and storing a DataElement per element (~25 µs
    each); every other VR, and any element pydicom has already converted, is pydicom's value.
    """
    if raw_vr and isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        if raw_vr in _ASCII_PARSED_VRS:
            text = raw.value.decode("latin-1")
            return [_strip(part) for part in text.split("\\")]
        if raw_vr in _DEFAULT_ENCODED_VRS:
            parts = raw.value.decode("latin-1").rstrip(" \x00").split("\\")
            return parts[0] if len(parts) == 1 else parts
        numbers = _raw_numbers(raw)
        if numbers is not None:
            return numbers
    return ds[tag].value


def _raw_numbers(raw: RawDataElement | DataElement | None) -> Any:
    """A raw binary number element's value (one number, or a list) unpacked from its bytes in its byte order;
    None for any other element, and where pydicom should judge (empty, or not a whole number of values)."""
    code = _BINARY_NUMBER_CODES.get(getattr(raw, "VR", None) or "")
    if code is None or not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
        return None
    width = struct.calcsize("<" + code)  # the standard sizes (native "L" is 8 bytes here)
    count, leftover = divmod(len(raw.value), width)
    if not count or leftover:
        return None
    numbers = struct.unpack(f"{'<' if raw.is_little_endian else '>'}{count}{code}", raw.value)
    return numbers[0] if count == 1 else list(numbers)


def _value_error(
    where: str, tag: BaseTag, vr: str, raw: RawDataElement | DataElement | None, exc: Exception
) -> dict[str, str]:
    return {
        "Path": where,
        "Tag": f"{int(tag):08X}",
        "VR": vr,
        "RawValue": _raw_text(raw),
        "Error": f"{type(exc).__name__}: {exc}"[:RAW_TEXT_LIMIT],
    }


def instance_row(ds: Dataset, *, path: str, file_size: int | None) -> InstanceRow:
    """The full table row of one file: source columns, the dataset's columns, OtherElements, value_errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = dataset_to_row(ds)
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    values = {"path": path, "file_size": file_size, "TransferSyntaxUID": transfer_syntax or None}
    values.update(row.values)
    types = dict(SOURCE_COLUMNS)
    types.update(row.types)
    if row.value_errors:
        values[VALUE_ERRORS_COLUMN] = row.value_errors
    types[VALUE_ERRORS_COLUMN] = TRAILING_COLUMNS[VALUE_ERRORS_COLUMN]
    return InstanceRow(values=values, types=types, value_errors=row.value_errors)


# ---------------------------------------------------------------------------------------------------
# Schemas


def merge_types(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The union of two column types: structs merge field by field, lists by their items."""
    if a.equals(b):
        return a
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fields = {f.name: f.type for f in a}
        for f in b:
            fields[f.name] = merge_types(fields[f.name], f.type) if f.name in fields else f.type
        return pa.struct(list(fields.items()))
    if pa.types.is_list(a) and pa.types.is_list(b):
        return pa.list_(merge_types(a.value_type, b.value_type))
    raise TypeError(f"cannot merge column types {a} and {b}")


def merge_column_types(
    a: dict[str, pa.DataType], b: dict[str, pa.DataType]
) -> dict[str, pa.DataType]:
    merged = dict(a)
    for name, column_type in b.items():
        merged[name] = merge_types(merged[name], column_type) if name in merged else column_type
    return merged


def _finalize_type(column_type: pa.DataType) -> pa.DataType | None:
    """Sort struct fields in tag order and drop structs that ended up with no field (Parquet has none)."""
    if pa.types.is_struct(column_type):
        if column_type.equals(PERSON_NAME_TYPE) or column_type.equals(OTHER_ELEMENT_TYPE):
            return column_type
        if column_type.equals(VALUE_ERROR_TYPE):
            return column_type
        fields = []
        for f in sorted(column_type, key=lambda f: _column_sort_key(f.name)):
            final = _finalize_type(f.type)
            if final is not None:
                fields.append((f.name, final))
        return pa.struct(fields) if fields else None
    if pa.types.is_list(column_type):
        item = _finalize_type(column_type.value_type)
        return pa.list_(item) if item is not None else None
    return column_type


def table_schema(column_types: dict[str, pa.DataType]) -> pa.Schema:
    """The metadata table's schema: source columns, keywords in tag order, then OtherElements, value_errors."""
    columns = dict(SOURCE_COLUMNS)
    keyword_columns = [
        n for n in column_types if n not in SOURCE_COLUMNS and n not in TRAILING_COLUMNS
    ]
    for name in sorted(keyword_columns, key=_column_sort_key):
        final = _finalize_type(column_types[name])
        if final is not None:
            columns[name] = final
    columns.update(TRAILING_COLUMNS)
    return pa.schema(list(columns.items()))
