"""`medbeam predictions load`: batch-prediction JSON lines → a table typed from every line.

The pure rules first (Google's flatten names, the agreed layout, line parsing), then the job end to end
on shards named as Cloud ML / Vertex AI name them (`prediction.results-00000-of-00002`), then BigQuery
against the emulator.
"""

from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.io import predictions as pred
from medbeam.io import tables
from medbeam.io.bigquery import null_elements, schema_problems
from medbeam.pipelines.predictions_load import PredictionsLoadConfig, run
from tests.helpers import digests, query, read_rejects


def _layout(lines: list[Any], flatten: bool = False, ragged: bool = False) -> tuple[pred.Layout, list[Any]]:
    parsed = [pred.parse_line(json.dumps(line) if not isinstance(line, str) else line) for line in lines]
    tally = pred.Tally()
    for leaves in parsed:
        tally.add(pred.observations(leaves))
    return pred.agree(tally, flatten, ragged), parsed


def _rows(layout: pred.Layout, parsed: list[Any]) -> list[Any]:
    """Each line's row, or ('reject', stage, message)."""
    out = []
    for number, leaves in enumerate(parsed, 1):
        try:
            out.append(layout.row("f", number, leaves))
        except pred.LineRejected as exc:
            out.append(("reject", exc.stage, str(exc)))
    return out


def _bigquery_valid(schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    assert schema_problems(tables.bigquery_schema(schema)) == []
    assert null_elements(pa.Table.from_pylist(rows, schema=schema)) == []


# ---------------------------------------------------------------------------------------------------
# Google's column rule (load_feature_vectors.py)


def test_flatten_names_follow_googles_rule():
    layout, parsed = _layout(
        [{"of": [[1, 0], [0, 1]], "times": list(range(101)), "feature_vector": [0.5] * 2048,
          "q": [[0.0] * 3 for _ in range(11)], "label": "cat", "score": 0.9}],  # fmt: skip
        flatten=True,
    )
    names = layout.schema().names
    assert names[:2] == ["source", "line"]
    assert names[2:] == sorted(names[2:])
    assert [n for n in names if n.startswith("of_")] == ["of_0_0", "of_0_1", "of_1_0", "of_1_1"]
    times = [n for n in names if n.startswith("times_")]
    assert times[0] == "times_000" and times[-1] == "times_100" and len(times) == 101
    vector = [n for n in names if n.startswith("feature_vector_")]
    assert vector[0] == "feature_vector_0000" and vector[-1] == "feature_vector_2047" and len(vector) == 2048
    q = [n for n in names if n.startswith("q_")]
    assert q[:4] == ["q_00_0", "q_00_1", "q_00_2", "q_01_0"] and q[-1] == "q_10_2" and len(q) == 33
    assert "label" in names and "score" in names  # scalars keep their name
    row = layout.row("f", 1, parsed[0])
    assert (row["of_0_0"], row["of_0_1"], row["of_1_0"], row["of_1_1"]) == (1, 0, 0, 1)
    assert row["times_100"] == 100 and row["label"] == "cat"
    _bigquery_valid(layout.schema(), [row])


def test_typed_list_mode_keeps_tensors_as_lists_and_rank_2_with_its_shape():
    layout, parsed = _layout([{"of": [[1, 0], [0, 1]], "v": [1, 2, 3], "p": [0.5, 1], "s": ["a", "b"]}])
    schema = layout.schema()
    assert schema.field("v").type == pa.list_(pa.int64())
    assert schema.field("p").type == pa.list_(pa.float64())
    assert schema.field("s").type == pa.list_(pa.string())
    assert schema.field("of").type == pa.list_(pa.int64()) and schema.field("of_shape").type == pa.list_(pa.int64())
    row = layout.row("f", 1, parsed[0])
    assert row["of"] == [1, 0, 0, 1] and row["of_shape"] == [2, 2] and row["p"] == [0.5, 1.0]
    assert schema.names == ["source", "line", "of", "of_shape", "p", "s", "v"]
    _bigquery_valid(schema, [row])


# ---------------------------------------------------------------------------------------------------
# The agreed layout


def test_types_widen_and_bool_is_not_an_int_and_nulls_and_missing_keys_are_null():
    lines = [
        {"n": 1, "b": True, "z": None, "v": [1, 2]},
        {"n": 2.5, "b": False, "v": [1.5, 2], "late": "x"},
        {"n": 3, "b": None, "v": [3, 4]},
    ]
    layout, parsed = _layout(lines)
    schema = layout.schema()
    assert schema.field("n").type == pa.float64()  # an int column that also has floats
    assert schema.field("b").type == pa.bool_()
    assert schema.field("v").type == pa.list_(pa.float64())
    assert schema.field("z").type == pa.string()  # null on every line
    assert schema.field("late").type == pa.string()
    rows = _rows(layout, parsed)
    assert rows[0] == {"source": "f", "line": 1, "n": 1.0, "b": True, "v": [1, 2]}
    assert rows[1]["late"] == "x" and rows[2]["n"] == 3.0 and "b" not in rows[2]
    table = pa.Table.from_pylist(rows, schema=schema)
    assert table.column("late").to_pylist() == [None, "x", None]
    assert table.column("b").to_pylist() == [True, False, None]
    _bigquery_valid(schema, rows)


def test_a_bool_where_the_other_lines_have_numbers_is_a_reject():
    layout, parsed = _layout([{"x": 1}, {"x": 2}, {"x": True}, {"x": "s"}])
    rows = _rows(layout, parsed)
    assert layout.schema().field("x").type == pa.int64()
    assert rows[2][:2] == ("reject", "schema") and "key 'x' holds booleans, the table has INT64" in rows[2][2]
    assert rows[3][:2] == ("reject", "schema") and "holds strings" in rows[3][2]
    assert "as 2 of the 4 lines with a value for it have" in rows[3][2]


def test_the_shape_on_most_lines_wins_and_ties_go_to_the_smallest_shape():
    layout, parsed = _layout([{"q": [1, 2, 3]}, {"q": [1, 2]}, {"q": [4, 5, 6]}])
    rows = _rows(layout, parsed)
    assert rows[1] == ("reject", "schema", rows[1][2])
    assert "key 'q' has shape (2,), the table has INT64 tensors of shape (3,)" in rows[1][2]
    assert isinstance(rows[0], dict) and isinstance(rows[2], dict)
    # A tie: one line each; (2,) < (3,), so the 3-vector is the reject, whatever the order of the lines.
    for lines in ([{"q": [1, 2, 3]}, {"q": [1, 2]}], [{"q": [1, 2]}, {"q": [1, 2, 3]}]):
        layout, parsed = _layout(lines)
        assert layout.columns[("q",)].shape == (2,)
    # A scalar and a vector: () is the smallest shape.
    layout, _ = _layout([{"q": [1]}, {"q": 1}])
    assert layout.columns[("q",)].shape == ()


def test_the_layout_is_the_same_whatever_the_order_and_the_merging():
    rng = random.Random(7)
    lines = [{"a": rng.choice([1, 2.5, None, True]), "t": [rng.random()] * rng.choice([2, 3]), "k": str(i)}
             for i in range(60)]  # fmt: skip
    observed = [pred.observations(pred.parse_line(json.dumps(line))) for line in lines]
    layouts = []
    for seed in range(4):
        order = observed[:]
        random.Random(seed).shuffle(order)
        parts = [pred.Tally(), pred.Tally(), pred.Tally()]
        for index, obs in enumerate(order):
            parts[index % 3].add(obs)
        merged = pred.Tally()
        for part in reversed(parts) if seed % 2 else parts:
            merged.merge(part)
        layouts.append(pred.agree(merged))
    assert all(layout == layouts[0] for layout in layouts)
    assert layouts[0].schema() == layouts[-1].schema()


def test_ragged_lists_agree_on_rank_only():
    lines = [{"boxes": [[0, 0, 1, 1]], "ids": [1]}, {"boxes": [[0, 0, 1, 1], [1, 1, 2, 2]], "ids": [1, 2]},
             {"boxes": [], "ids": []}, {"boxes": [1, 2], "ids": [3]}]  # fmt: skip
    layout, parsed = _layout(lines, ragged=True)
    rows = _rows(layout, parsed)
    assert rows[1]["boxes"] == [0, 0, 1, 1, 1, 1, 2, 2] and rows[1]["boxes_shape"] == [2, 4]
    assert rows[1]["ids"] == [1, 2]
    assert rows[2]["boxes"] == [] and rows[2]["boxes_shape"] == [0, 0]  # no detections fits any rank
    assert rows[3][:2] == ("reject", "schema")
    assert "key 'boxes' has rank 1, the table has INT64 tensors of rank 2" in rows[3][2]
    _bigquery_valid(layout.schema(), rows[:3])
    strict, parsed = _layout(lines)  # without ragged every line has some other shape than the agreed one
    assert [r[1] for r in _rows(strict, parsed)] == ["schema"] * 4


def test_column_names_are_bigquery_names_and_clashes_are_rejects():
    lines = [
        {"prediction": {"scores": [0.1, 0.9], "class-id": 3}, "1st": 1, "_TABLE_x": 2, "source": "mine"},
        {"Mode": 1, "mode": 2},
        {"mode": 3},
    ]
    layout, parsed = _layout(lines)
    names = layout.schema().names
    assert {"prediction_scores", "prediction_class_id", "_1st", "x_TABLE_x", "json_source", "mode"} <= set(names)
    assert "Mode" not in names  # BigQuery ignores case: 'mode' is on more lines
    rows = _rows(layout, parsed)
    assert rows[0]["json_source"] == "mine" and rows[0]["source"] == "f"
    assert rows[1][:2] == ("reject", "schema") and "key 'Mode' has no column" in rows[1][2]
    assert rows[2]["mode"] == 3
    _bigquery_valid(layout.schema(), [rows[0], rows[2]])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON"),
        ("[0.1, 0.2]", "not a JSON object but an array"),
        ('{"v": [1, null, 3]}', "key 'v': null at index 1 of a list (BigQuery arrays cannot hold NULL)"),
        ('{"v": [[1, 2], [3]]}', "key 'v': ragged list"),
        ('{"v": [1, "a"]}', "mixed element types in one list (numbers and strings)"),
        ('{"v": [true, 1]}', "mixed element types in one list (booleans and numbers)"),
        ('{"v": [{"a": 1}]}', "a list of objects is not a tensor"),
        ('{"v": 99999999999999999999}', "integer outside the INT64 range"),
        (b'{"v": "\xff"}', "not UTF-8"),
    ],
)
def test_lines_that_cannot_be_rows(line, reason):
    with pytest.raises(pred.LineRejected) as info:
        pred.parse_line(line)
    assert info.value.stage == "parse" and reason in str(info.value)


def test_nan_and_infinity_as_tensorflow_serving_writes_them_are_floats():
    layout, parsed = _layout(['{"p": [NaN, 1.0], "s": Infinity}'])
    row = layout.row("f", 1, parsed[0])
    assert row["p"][0] != row["p"][0] and row["s"] == float("inf")
    assert layout.schema().field("p").type == pa.list_(pa.float64())


def test_lines_of_any_length_across_chunks():
    import io

    data = b'{"a": 1}\n\n' + b'{"v": [' + b"0.5, " * 10_000 + b'1]}\r\n{"tail": true}'
    lines = list(pred.iter_lines(io.BytesIO(data), chunk_size=7))
    assert [n for n, _ in lines] == [1, 2, 3, 4]
    assert lines[1][1] == b"" and lines[3][1] == b'{"tail": true}'
    assert len(pred.parse_line(lines[2][1])[("v",)].value) == 10_001


# ---------------------------------------------------------------------------------------------------
# The job, end to end


def _write_shards(root: Path, shards: list[list[Any]], gzipped: tuple[int, ...] = ()) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, lines in enumerate(shards):
        path = root / f"prediction.results-{index:05d}-of-{len(shards):05d}"
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
        path.write_bytes(gzip.compress(text, mtime=0) if index in gzipped else text)
        paths.append(path)
    return paths


def _vector(seed: int, n: int = 2048) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.random(), 6) for _ in range(n)]


def _table(parquet_dir: Path | str, name: str) -> list[dict[str, Any]]:
    return sorted(tables.read_table(str(parquet_dir), name).to_pylist(), key=lambda r: (r["source"], r["line"]))


def test_shards_into_a_typed_table_with_rejects_counts_duckdb_and_identical_reruns(tmp_path):
    shards = [
        [
            {"feature_vector": _vector(0), "key": "a", "of": [[1, 0], [0, 1]], "ok": True, "score": None},
            {"feature_vector": _vector(1), "key": "b", "of": [[1, 0.5], [0, 1]], "ok": False, "score": 0.25},
            "{not json",
            "",
            {"feature_vector": _vector(2, 10), "key": "short"},  # line 5: another shape
        ],
        [{"feature_vector": _vector(3), "key": "c", "extra": [1, 2]}],  # gzipped, an extra key
        [{"feature_vector": _vector(4), "key": "d", "of": [[1, None], [0, 1]]}],  # a null inside a list
    ]
    paths = _write_shards(tmp_path / "out", shards, gzipped=(1,))
    broken = tmp_path / "out" / "prediction.results-broken.gz"  # its gzip trailer cut off
    broken.write_bytes(gzip.compress(json.dumps({"key": "lost"}).encode() * 3, mtime=0)[:-8])
    config = PredictionsLoadConfig(inputs=[str(tmp_path / "out" / "prediction.results-*")],
                                   duckdb_path=str(tmp_path / "db" / "p.duckdb"), progress=False)  # fmt: skip
    counts = run(config, [])
    assert (counts.files_in, counts.lines_in, counts.rows_written, counts.rejected) == (4, 6, 3, 3)
    assert counts.lines_in == counts.rows_written + counts.rejected
    assert counts.rejected_by_stage == {"parse": 2, "schema": 1} and counts.blank_lines == 1
    assert counts.files_rejected == 1
    assert counts.summary() == (
        "6 lines in, 3 rows written, 3 rejected (4 files in, 9 columns; 2 parse, 1 schema; "
        "1 file unreadable (rejects, stage read); 1 blank line skipped)"
    )

    parquet_dir = tmp_path / "db" / "p_parquet"
    assert config.parquet_dir == str(parquet_dir)
    rows = _table(parquet_dir, "predictions")
    assert [(Path(r["source"]).name, r["line"], r["key"]) for r in rows] == [
        (paths[0].name, 1, "a"), (paths[0].name, 2, "b"), (paths[1].name, 1, "c"),
    ]  # fmt: skip
    assert rows[0]["feature_vector"] == _vector(0) and len(rows[2]["feature_vector"]) == 2048
    assert rows[0]["of"] == [1.0, 0.0, 0.0, 1.0] and rows[0]["of_shape"] == [2, 2] and rows[2]["of"] is None
    assert rows[0]["ok"] is True and rows[1]["ok"] is False and rows[2]["ok"] is None
    assert rows[0]["score"] is None and rows[1]["score"] == 0.25
    assert rows[2]["extra"] == [1, 2] and rows[0]["extra"] is None
    rejects = {r["uri"]: r for r in read_rejects(parquet_dir)}
    assert set(rejects) == {f"{paths[0]}#line 3", f"{paths[0]}#line 5", f"{paths[2]}#line 1", str(broken)}
    assert rejects[f"{paths[0]}#line 3"]["stage"] == "parse"
    assert (rejects[str(broken)]["stage"], rejects[str(broken)]["error_type"]) == ("read", "EOFError")
    assert "key 'feature_vector' has shape (10,), the table has FLOAT64 tensors of shape (2048,)" in \
        rejects[f"{paths[0]}#line 5"]["message"]  # fmt: skip
    assert "null at index 1" in rejects[f"{paths[2]}#line 1"]["message"]

    db = tmp_path / "db" / "p.duckdb"
    assert query(db, "SELECT key, len(feature_vector), of_shape FROM predictions ORDER BY key") == [
        ("a", 2048, [2, 2]), ("b", 2048, [2, 2]), ("c", 2048, None),
    ]  # fmt: skip
    assert query(db, "SELECT count(*) FROM rejects") == [(4,)]
    schema = json.loads((parquet_dir / "predictions.bigquery-schema.json").read_text())
    assert schema_problems(schema) == []
    assert {f["name"]: (f["type"], f["mode"]) for f in schema}["feature_vector"] == ("FLOAT", "REPEATED")

    before = digests(parquet_dir, "**/*.parquet")
    again = run(config, [])
    assert again == counts
    assert digests(parquet_dir, "**/*.parquet") == before


def test_flatten_a_directory_of_shards_with_the_cli(tmp_path):
    shards = [
        [{"q": [[i * 3.0 + j for j in range(3)] for i in range(11)], "times": list(range(101)), "id": "x"}],
        [{"q": [[0.0] * 3] * 11, "times": list(range(101)), "id": "y"}, {"q": [[0.0] * 3] * 10, "id": "z"}],
    ]
    _write_shards(tmp_path / "in", shards, gzipped=(0,))
    db = tmp_path / "p.duckdb"
    result = CliRunner().invoke(app, ["predictions", "load", "-i", str(tmp_path / "in"), "--duckdb", str(db),
                                      "--table", "feature_vectors", "--flatten", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 lines in, 2 rows written, 1 rejected (2 files in, 137 columns; 1 schema)" in result.output
    columns = [c for (c,) in query(db, "SELECT column_name FROM (DESCRIBE feature_vectors)")]
    assert columns[:3] == ["source", "line", "id"]
    assert columns[3] == "q_00_0" and columns[35] == "q_10_2" and columns[36:38] == ["times_000", "times_001"]
    assert columns[-1] == "times_100" and len(columns) == 137
    assert query(db, "SELECT id, q_00_1, q_10_2, times_100 FROM feature_vectors ORDER BY id") == [
        ("x", 1.0, 32.0, 100), ("y", 0.0, 0.0, 100),
    ]  # fmt: skip
    assert query(db, "SELECT stage FROM rejects WHERE uri LIKE '%-00001-of-00002#line 2'") == [("schema",)]


def test_bad_arguments_stop_before_any_work(tmp_path):
    def error(*args: str) -> str:
        result = CliRunner().invoke(app, ["predictions", "load", *args])
        assert result.exit_code == 2, result.output
        return result.output

    (tmp_path / "p.jsonl").write_text('{"a": 1}\n')
    common = ["-i", str(tmp_path / "p.jsonl"), "--duckdb", str(tmp_path / "p.duckdb")]
    assert "--table must be letters, digits and _" in error(*common, "--table", "my-table")
    assert "rejects table" in error(*common, "--table", "rejects")
    assert "--ragged needs typed-list columns" in error(*common, "--flatten", "--ragged")
    assert "nothing to write" in error("-i", str(tmp_path / "p.jsonl"))
    assert "matches no file" in error("-i", str(tmp_path / "missing-*"), "--duckdb", str(tmp_path / "p.duckdb"))
    assert not (tmp_path / "p_parquet").exists()


# ---------------------------------------------------------------------------------------------------
# BigQuery


def test_bigquery_loads_the_table_and_its_rejects(bigquery_emulator, tmp_path):
    lines = [{"feature_vector": [0.5, 0.25, 1.0], "of": [[1, 0], [0, 1]], "label": "cat", "ok": True},
             {"feature_vector": "oops", "label": "dog"}, {"feature_vector": [0.0, 0.0, 0.0], "label": "cow"}]
    _write_shards(tmp_path / "in", [lines])
    dataset = f"predictions_{uuid.uuid4().hex[:10]}"
    project = bigquery_emulator.project
    result = CliRunner().invoke(app, ["predictions", "load", "-i", str(tmp_path / "in"),
                                      "--parquet-dir", str(tmp_path / "t"), "--no-progress",
                                      "--bigquery-dataset", f"{project}:{dataset}",
                                      "--bigquery-endpoint", bigquery_emulator.endpoint])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"BigQuery: {project}.{dataset}.predictions, {project}.{dataset}.rejects" in result.output
    client = bigquery_emulator.client()
    rows = [dict(r) for r in client.query(f"SELECT * FROM `{project}.{dataset}.predictions` ORDER BY line")]
    assert [r["label"] for r in rows] == ["cat", "cow"]
    row = rows[0]
    assert row["line"] == 1 and row["label"] == "cat" and row["ok"] is True
    assert row["feature_vector"] == [0.5, 0.25, 1.0] and row["of"] == [1, 0, 0, 1] and row["of_shape"] == [2, 2]
    rejects = list(client.query(f"SELECT uri, stage FROM `{project}.{dataset}.rejects`"))
    assert [(r[0].rsplit("#", 1)[1], r[1]) for r in rejects] == [("line 2", "schema")]
