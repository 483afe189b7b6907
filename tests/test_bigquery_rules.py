"""What real BigQuery is strict about, and how medbeam keeps to it (medbeam.io.bigquery's docstring has the
rules): no NULL elements in arrays, valid column names, at most 15 levels of nested RECORD. Each rule is
checked before a load (one clear line naming the column, shards left in place), and medbeam's own tables keep
to it."""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medbeam.dicom.metadata import MAX_SEQUENCE_LEVEL, instance_row, table_schema
from medbeam.io import tables
from medbeam.io.bigquery import (
    MAX_RECORD_LEVELS,
    BigQueryLoadError,
    BigQueryTarget,
    load_table,
    null_elements,
    schema_problems,
)


def _write_table(table_dir, name: str, schema: pa.Schema, rows: list[dict]) -> None:
    with beam.Pipeline() as p:
        _ = p | beam.Create(rows) | tables.WriteTable(str(table_dir), name, schema, (schema.names[0],))


def _levels(field: dict, level: int = 1) -> int:
    if field["type"] != "RECORD":
        return level - 1
    return max([level, *(_levels(f, level + 1) for f in field["fields"])])


def _target(emulator, dataset: str) -> BigQueryTarget:
    return BigQueryTarget(emulator.project, dataset, endpoint=emulator.endpoint)


# ---------------------------------------------------------------------------------------------------
# Arrays cannot hold NULL elements


def test_null_array_elements_are_found_at_any_depth():
    item = pa.struct([("codes", pa.list_(pa.string()))])
    table = pa.Table.from_pylist(
        [
            {"id": "1", "xs": [1.0, None], "seq": [{"codes": ["a"]}], "ok": None},
            {"id": "2", "xs": None, "seq": [{"codes": ["b", None]}], "ok": [1]},
        ],
        schema=pa.schema([("id", pa.string()), ("xs", pa.list_(pa.float64())), ("seq", pa.list_(item)),
                          ("ok", pa.list_(pa.int64()))]),
    )  # fmt: skip
    assert null_elements(table) == ["seq.codes", "xs"]  # a NULL array ("ok", "xs" of row 2) is fine


def test_a_null_array_element_fails_the_load_in_one_line_naming_the_column(bigquery_emulator, tmp_path):
    schema = pa.schema([("id", pa.string()), ("values", pa.list_(pa.float64()))])
    _write_table(tmp_path, "holes", schema, [{"id": "a", "values": [1.0, None, 3.0]}])
    client = bigquery_emulator.client()
    target = _target(bigquery_emulator, "rules_nulls")
    client.create_dataset(target.dataset, exists_ok=True)
    with pytest.raises(BigQueryLoadError, match=r"column 'values' has a NULL inside an array"):
        load_table(client, target, str(tmp_path), "holes")
    assert tables.read_table(str(tmp_path), "holes").num_rows == 1  # the shards stay


def test_dicom_metadata_keeps_empty_positions_without_nulls():
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.PixelSpacing = ["0.5", ""]
    ds.OtherPatientNames = ["Doe^J", ""]
    row = instance_row(ds, path="x.dcm", file_size=1)
    table = pa.Table.from_pylist([row.values], schema=table_schema(row.types))
    assert null_elements(table) == []
    assert table.column("ImageType").to_pylist() == [["ORIGINAL", "", "AXIAL"]]


# ---------------------------------------------------------------------------------------------------
# Column names must be valid identifiers


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("PatientName", True),
        ("OverlayData_6002", True),
        ("_private", True),
        ("x" * 300, True),
        ("No Finding", False),  # CheXpert's label names must be mapped (e.g. No_Finding) before a load
        ("Pleural-Effusion", False),
        ("1st", False),
        ("x" * 301, False),
        ("_TABLE_SUFFIX", False),
        ("_partitiontime", False),
    ],
)
def test_column_names(name, ok):
    assert (schema_problems([{"name": name, "type": "STRING"}]) == []) is ok


def test_names_that_differ_only_in_case_are_one_column():
    problems = schema_problems([{"name": "Rows", "type": "INTEGER"}, {"name": "rows", "type": "INTEGER"}])
    assert problems == ["columns 'Rows' and 'rows' differ only in case: one column to BigQuery"]


def test_an_invalid_name_fails_before_anything_is_sent(tmp_path):
    _write_table(tmp_path, "labels", pa.schema([("path", pa.string()), ("No Finding", pa.float64())]),
                 [{"path": "a.jpg", "No Finding": 1.0}])  # fmt: skip
    target = BigQueryTarget("p", "d", endpoint="http://127.0.0.1:9")  # nothing listens: never contacted
    with pytest.raises(BigQueryLoadError, match=r"loading p\.d\.labels .*column 'No Finding' is not a valid"):
        load_table(target.client(), target, str(tmp_path), "labels")


def test_dicom_metadata_column_names_are_valid():
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.add_new(0x60020010, "US", 512)  # OverlayRows of the second overlay group
    ds.add_new(0x00091001, "LO", "private")
    row = instance_row(ds, path="x.dcm", file_size=1)
    schema = tables.bigquery_schema(table_schema(row.types))
    assert "OverlayRows_6002" in [f["name"] for f in schema]
    assert schema_problems(schema) == []


# ---------------------------------------------------------------------------------------------------
# At most 15 levels of nested RECORD


def _nested_sr(levels: int) -> Dataset:
    """An SR-like content tree: `levels` ContentSequences, a person name in the innermost item."""
    item = Dataset()
    item.ValueType = "PNAME"
    item.PersonName = "Doe^Jane"
    for _ in range(levels):
        parent = Dataset()
        parent.ValueType = "CONTAINER"
        parent.ContentSequence = Sequence([item])
        item = parent
    item.SOPInstanceUID = "1.2.3.4"
    return item


def _record(level: int) -> dict:
    field = {"name": "leaf", "type": "STRING"}
    for _ in range(level):
        field = {"name": "r", "type": "RECORD", "fields": [field]}
    return field


def test_record_depth_limit():
    assert schema_problems([_record(MAX_RECORD_LEVELS)]) == []
    assert schema_problems([_record(MAX_RECORD_LEVELS + 1)]) == [
        "column 'r.r.r.r.r.r.r.r.r.r.r.r.r.r.r.r' is RECORD level 16: BigQuery allows 15"
    ]
    assert schema_problems([{"name": "empty", "type": "RECORD", "fields": []}]) == [
        "RECORD column 'empty' has no fields: BigQuery refuses it"
    ]


def test_deep_sequences_stop_at_14_levels_and_keep_the_rest_as_dicom_json(bigquery_emulator, tmp_path):
    row = instance_row(_nested_sr(20), path="sr.dcm", file_size=1)
    schema = table_schema(row.types)
    fields = tables.bigquery_schema(schema)
    assert max(_levels(f) for f in fields) == MAX_SEQUENCE_LEVEL <= MAX_RECORD_LEVELS - 1
    assert schema_problems(fields) == []
    item = row.values
    for _ in range(MAX_SEQUENCE_LEVEL):
        item = item["ContentSequence"][0]
    rest = json.loads(item["ContentSequence"])  # level 15 and below: DICOM JSON text
    for _ in range(20 - MAX_SEQUENCE_LEVEL - 1):
        rest = rest[0]["0040A730"]["Value"]  # (0040,A730) ContentSequence
    assert rest[0]["0040A123"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}

    # The deep tree loads into BigQuery as it is; a shallow one keeps its person name as a record.
    shallow = instance_row(_nested_sr(3), path="sr3.dcm", file_size=1)
    _write_table(tmp_path, "sr", schema, [row.values])
    client = bigquery_emulator.client()
    target = _target(bigquery_emulator, "rules_depth")
    client.create_dataset(target.dataset, exists_ok=True)
    assert load_table(client, target, str(tmp_path), "sr") == 1
    sql = f"SELECT c1.ValueType FROM `{target.table_id('sr')}`, UNNEST(ContentSequence) AS c1"
    assert [r[0] for r in client.query(sql)] == ["CONTAINER"]
    shallow_schema = tables.bigquery_schema(table_schema(shallow.types))
    assert max(_levels(f) for f in shallow_schema) == 4  # 3 sequences + the person name record
