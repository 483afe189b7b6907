"""`make demo`: export a real, varied DICOM corpus that ships on PyPI, then summarise it from DuckDB.

The corpus is read straight from the installed packages' folders; pydicom's data manager is never
called, because it would try to download missing files.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import typer

from medbeam.transforms.outputs import previous_outputs


def demo_corpus_dirs() -> list[Path]:
    """pydicom's own test files (incl. charset files) and the PyPI `pydicom-data` files."""
    import pydicom

    dirs = [
        Path(pydicom.__file__).parent / "data" / "test_files",
        Path(pydicom.__file__).parent / "data" / "charset_files",
    ]
    try:
        import data_store  # the import name of PyPI's pydicom-data

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        typer.secho("pydicom-data is not installed: using pydicom's test files only", err=True)
    return [d for d in dirs if d.is_dir()]


def run_demo(out: Path, progress: bool = True) -> None:
    from medbeam.pipelines.dicom_export import ExportConfig, run

    out.mkdir(parents=True, exist_ok=True)
    inputs = [str(d) for d in demo_corpus_dirs()]
    config = ExportConfig(
        inputs=inputs,
        png_dir=str(out / "png"),
        duckdb_path=str(out / "medbeam.duckdb"),
        tfrecord_prefix=str(out / "tfrecords" / "dicom"),
        progress=progress,
    )
    typer.echo("exporting " + ", ".join(inputs))
    counts = run(config)
    typer.echo("")
    typer.echo(counts.summary())
    with duckdb.connect(config.duckdb_path, read_only=True) as con:
        con.register("png_files", pa.table({"path": previous_outputs(config.png_dir)}))
        _print_query(
            con,
            "Instances per modality (files: one metadata row each; rendered: SOP instances with PNGs)",
            """WITH rendered AS (
                   SELECT regexp_replace(split_part(path, '/', 3), '[.]png$', '') AS sop, count(*) AS pngs
                   FROM png_files GROUP BY 1),
               rows AS (
                   SELECT coalesce(Modality, '(none)') AS kind, SOPInstanceUID AS sop, TransferSyntaxUID,
                          -- instances without a SOP Instance UID render under a placeholder named by the file
                          coalesce(SOPInstanceUID, '_file-' || left(sha1(path), 20)) AS png_key
                   FROM dicom_metadata),
               images AS (
                   SELECT kind, count(r.sop) AS rendered, coalesce(sum(r.pngs), 0) AS pngs
                   FROM (SELECT DISTINCT kind, png_key FROM rows) LEFT JOIN rendered r ON r.sop = png_key
                   GROUP BY 1)
               SELECT kind AS modality, count(*) AS files, count(DISTINCT png_key) AS instances,
                      any_value(i.rendered) AS rendered, any_value(i.pngs) AS pngs,
                      count(DISTINCT TransferSyntaxUID) AS transfer_syntaxes
               FROM rows JOIN images i USING (kind)
               GROUP BY 1 ORDER BY 2 DESC, 1""",
        )
        _print_query(
            con,
            "Instances rendered from a later copy, because the preferred copy's pixels do not render",
            """SELECT regexp_extract(uri, '[^/]*$') AS copy_not_rendering,
                      regexp_extract(message, ' as [^ ]*/([^/ ,]*),', 1) AS rendered_from,
                      regexp_extract(message, 'same instance ([^ ]*)', 1) AS instance
               FROM rejects WHERE stage = 'duplicate' AND message LIKE '%tried first and does not render%'
               ORDER BY 1""",
        )
        _print_query(
            con,
            "Rejects by stage and reason",
            """SELECT stage, error_type, count(*) AS files, min(regexp_replace(message, '/[^ ]*/', '')) AS example
               FROM rejects GROUP BY 1, 2 ORDER BY 1, 3 DESC""",
        )
        _print_query(
            con,
            "Values kept raw because they do not parse for their VR",
            """SELECT e.VR, count(*) AS values, min(e.Path) AS example
               FROM (SELECT unnest(value_errors) AS e FROM dicom_metadata) GROUP BY 1 ORDER BY 2 DESC""",
        )
    png_count = sum(1 for _ in (out / "png").rglob("*.png")) if (out / "png").exists() else 0
    typer.echo(f"\n{png_count} PNG files under {out / 'png'}/{{study}}/{{series}}/{{instance}}.png")
    query = f"import duckdb; duckdb.connect('{config.duckdb_path}', read_only=True).sql('SELECT * FROM rejects').show()"
    typer.echo(f"DuckDB: {config.duckdb_path} — try: {_python()} -c \"{query}\"")
    _print_tfrecords(config.tfrecord_prefix)


def run_cxr_demo(out: Path, progress: bool = True) -> None:
    """`cxr prepare` on a generated sample in the 2019 MIMIC-CXR layout (tars + gzipped label CSVs, a few
    bad cases included), then the counts and the label distribution per view from the labels table."""
    from medbeam.datasets import cxr
    from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019
    from medbeam.pipelines.cxr_prepare import CxrConfig, run

    sample_dir = out / "cxr-sample"
    bad = ["missing_image", "unlabelled_image", "not_jpeg", "invalid_label"]
    write_mimic_cxr_2019(sample_dir, patients=12, studies_per_patient=2, bad_cases=bad)
    config = CxrConfig(
        layout=cxr.MIMIC_2019,
        input_dir=str(sample_dir),
        output_jpg_dir=str(out / "cxr" / "jpg"),
        output_tfrecord_dir=str(out / "cxr" / "tfrecords"),
        duckdb_path=str(out / "cxr" / "cxr.duckdb"),
        image_shape=(320, 320),
        progress=progress,
    )
    typer.echo(f"\nchest X-rays: medbeam cxr prepare --layout mimic-cxr-2019 --input-dir {sample_dir} (generated)")
    counts = run(config)
    typer.echo(counts.summary())
    typer.echo(f"TFRecords: {config.output_tfrecord_dir}/{{frontal,lateral,other}}-*.tfrecord")
    typer.echo(f"JPGs: {config.output_jpg_dir}; tables: {config.duckdb_path} (labels, rejects)")
    labels = ", ".join(cxr.LABEL_COLUMNS)
    per_view = ", ".join(
        f"count(*) FILTER (view_name = '{v}' AND code = 3) || ' / ' || "
        f"count(*) FILTER (view_name = '{v}' AND code = 2) AS \"{v} pos / unc\""
        for v in cxr.VIEW_NAMES
    )
    with duckdb.connect(config.duckdb_path, read_only=True) as con:
        per_view_sql = "SELECT view_name AS view, count(*) AS images FROM labels GROUP BY 1 ORDER BY 1"
        _print_query(con, "Images per view", per_view_sql)
        _print_query(
            con,
            "Label distribution per view, positive / uncertain (Cardiomegaly, Pleural Effusion: drawn into the pixels)",
            f"WITH long AS (UNPIVOT labels ON {labels} INTO NAME label VALUE code) "
            f"SELECT label, {per_view} FROM long GROUP BY 1 ORDER BY 1",
        )
        _print_query(
            con,
            "Rejects",
            "SELECT stage, error_type, count(*) AS n, min(regexp_replace(message, '[^ ]*/', '', 'g')) AS example "
            "FROM rejects GROUP BY 1, 2 ORDER BY 1, 2",
        )


def _python() -> str:
    """This environment's interpreter, as a command a user can paste (the duckdb CLI is not installed)."""
    import os
    import sys

    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


def _print_tfrecords(prefix: str) -> None:
    """The TFRecords written from the same rendered PNGs: record count, shards and feature spec."""
    from medbeam.io.tfrecord import read_description

    doc = read_description(prefix)
    typer.echo(f"\n{doc['records']} tf.train.Example records in {len(doc['files'])} shard(s): {prefix}-*-of-*.tfrecord")
    typer.echo("Feature spec (from " + prefix + ".features.json):")
    for feature in doc["features"]:
        shape = "varlen" if feature.get("varlen") else feature.get("shape")
        typer.echo(f"  {feature['name']:<10} {feature['dtype']:<7} {shape}  {feature.get('description', '')}")


def _print_query(con: duckdb.DuckDBPyConnection, title: str, sql: str) -> None:
    typer.echo(f"\n{title}:")
    result = con.sql(sql)
    widths = [len(c) for c in result.columns]
    rows = [[("" if v is None else str(v))[:70] for v in row] for row in result.fetchall()]
    for row in rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    typer.echo("  " + "  ".join(c.ljust(w) for c, w in zip(result.columns, widths)))
    for row in rows:
        typer.echo("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))
