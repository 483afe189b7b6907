"""An output directory that matches the run that wrote it: a manifest of written files, stale ones removed.

Every job that writes files into a directory (dicom export's --png-dir, files untar/decompress's
--output-dir) records what it wrote in ``{dir}/_medbeam/outputs/`` (a Parquet table of paths relative to
the directory, through the same deterministic writer as every table). A rerun deletes the files the
previous run's manifest lists and this run did not write, so the directory never mixes two runs. Files
medbeam did not write (not in any manifest) are never touched; a directory written before manifests
existed keeps its old files.

Order on any runner, without driver-side steps: one GroupByKey of the previous manifest's paths with
this run's written paths feeds both the stale-file removal and the new manifest, and a (batch) group only
emits once all its inputs are complete: every file of this run is written and the old manifest is read
before anything is deleted or the manifest is replaced. The grouping also lists a path written twice once.

Into a folder with no manifest yet (a first run, the common case) there is nothing to read or delete, so
the pipeline leaves out the old side and its co-group (whether a manifest exists is asked once, as the
pipeline is built); a job whose written paths are unique by construction (`unique_paths`) then needs no
grouping at all: its manifest rows come straight from the written paths. That is 3 of the 11 stages of a
local `dicom export`, each a bundle of fixed cost on every run.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection

from medbeam.io import files, tables

#: (output path relative to its folder, written by this run?): what the co-group of old and new outputs keys.
MARKED_PATH = Tuple[Any, bool]  # noqa: UP006 - Beam's type hints take typing's Tuple

#: medbeam's own folder inside an output directory (manifest, and for some jobs the rejects table).
OWN_SUBDIR = "_medbeam"
OUTPUTS_TABLE = "outputs"
OUTPUTS_SCHEMA = pa.schema([("path", pa.string())])


def own_dir(output_dir: str) -> str:
    return files.join(output_dir, OWN_SUBDIR)


def relative_to(output_dir: str, path: str) -> str:
    """`path` relative to `output_dir`; ValueError for a path outside it (never recorded, never deleted)."""
    base = output_dir.rstrip("/") + "/"
    if not path.startswith(base):
        raise ValueError(f"{path} is not under {output_dir}")
    return path[len(base) :]


def has_manifest(output_dir: str) -> bool:
    """Whether a manifested run has written into `output_dir`."""
    return bool(files.list_files(tables.manifest_path(own_dir(output_dir), OUTPUTS_TABLE)))


def previous_outputs(output_dir: str) -> list[str]:
    """Relative paths the last manifested run wrote into `output_dir` ([] when there is no manifest)."""
    table_dir = own_dir(output_dir)
    if not has_manifest(output_dir):
        return []
    paths: list[str] = []
    for shard in tables.read_manifest(table_dir, OUTPUTS_TABLE)["files"]:
        paths += pq.read_table(io.BytesIO(files.read_bytes(shard))).column("path").to_pylist()
    return paths


class _ManifestOrRemoveFn(beam.DoFn):
    """(relative path, [written by this run?, …]) → a manifest row if this run wrote it, else delete the file."""

    def __init__(self, output_dir: str, namespace: str):
        self._output_dir = output_dir
        self._removed = Metrics.counter(namespace, "stale_outputs_removed")

    def process(self, element: tuple[str, Iterable[bool]]) -> Iterator[dict[str, str]]:
        relative, written_now = element
        if any(written_now):
            yield {"path": relative}
            return
        path = files.join(self._output_dir, relative)
        if files.delete_if_exists(path):
            files.remove_empty_parents(path, self._output_dir)
            self._removed.inc()


def outputs_table(output_dir: str) -> tables.TableSpec:
    """The manifest's table, for the job's own WriteTables (sharing its steps costs fewer transforms)."""
    return tables.TableSpec(OUTPUTS_TABLE, OUTPUTS_SCHEMA, ("path",), table_dir=own_dir(output_dir))


class ReplaceOutputs(beam.PTransform):
    """`written_paths | ReplaceOutputs(output_dir, namespace)`: drop the last run's other files; manifest rows out.

    Input: full paths of the files this run wrote under `output_dir`. Output: this run's manifest rows,
    for `outputs_table(output_dir)` in the job's WriteTables. Counter `stale_outputs_removed` in
    `namespace` says how many files of the previous run went.
    """

    def __init__(self, output_dir: str, namespace: str, unique_paths: bool = False):
        """`unique_paths`: the job writes each path at most once (its writes follow its own grouping by
        output), so the manifest of a first run needs no grouping to list each path once."""
        super().__init__()
        self._output_dir = output_dir.rstrip("/") if files.has_scheme(output_dir) else output_dir
        self._namespace = namespace
        self._unique_paths = unique_paths

    def expand(self, written: PCollection) -> PCollection:
        p = written.pipeline
        output_dir = self._output_dir
        first_run = not has_manifest(output_dir)  # then nothing to remove (see the module's doc)
        if first_run and self._unique_paths:
            return written | "Manifest rows" >> beam.Map(
                lambda path: {"path": relative_to(output_dir, path)}
            ).with_output_types(dict[str, str])  # as _ManifestOrRemoveFn's rows: the same coder
        # Declared, the type Beam infers anyway (Tuple[Any, bool]: the same coders): its inference walks
        # the lambdas' bytecode and what they call, ~25 ms of every run's construction for these two.
        marked = written | "Relative" >> beam.Map(lambda path: (relative_to(output_dir, path), True)).with_output_types(
            MARKED_PATH
        )
        if not first_run:
            # A hand-made co-group (Flatten + GroupByKey): CoGroupByKey's extra steps cost the DirectRunner
            # ~25 ms each per run, which a one-file export feels.
            old = (
                p
                | "Previous manifest" >> beam.Impulse()
                | "Read it"
                >> beam.FlatMap(
                    lambda _: ((relative, False) for relative in previous_outputs(output_dir))
                ).with_output_types(MARKED_PATH)
            )
            marked = (old, marked) | "Old and new" >> beam.Flatten()
        return (
            marked
            | "By path" >> beam.GroupByKey()
            | "Manifest or remove" >> beam.ParDo(_ManifestOrRemoveFn(output_dir, self._namespace))
        )
