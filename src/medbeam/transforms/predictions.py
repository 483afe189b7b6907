"""`predictions load` steps, thin over medbeam.io.predictions: read a file's lines, agree on the layout
from all of them (a CombineFn), turn each line into a row against that layout (a side input)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import TaggedOutput

from medbeam.io import archives, files
from medbeam.io import predictions as pred
from medbeam.transforms import metrics
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = "medbeam.predictions"
REJECTS = "rejects"
_BOM = b"\xef\xbb\xbf"


def count(name: str, value: int = 1) -> None:
    metrics.inc(NAMESPACE, name, value)


def line_uri(path: str, number: int) -> str:
    return f"{path}#line {number}"


_ERROR_TYPES = {"parse": "ParseError", "schema": "SchemaMismatch"}


def line_reject(path: str, number: int, exc: pred.LineRejected) -> dict[str, str]:
    count("rejected")
    count(f"rejected.{exc.stage}")
    return reject(line_uri(path, number), exc.stage, str(exc), _ERROR_TYPES.get(exc.stage))


class ReadLinesFn(beam.DoFn):
    """(path, size) → (path, line number, parsed values) per line, streamed (gzip, bzip2, xz and zstd by
    their magic bytes, bomb-guarded); a line that is no JSON object, or holds a value no column can hold,
    is a `parse` reject; a file that cannot be read (on) is a `read` reject (the lines before the point
    where it broke are kept)."""

    def __init__(self, limits: archives.Limits, storage: files.Storage, ticker: ProgressTicker | None = None):
        self._limits = limits
        self._storage = storage
        self._ticker = ticker or ProgressTicker(None)

    def process(self, element: tuple[str, int]) -> Iterator[Any]:
        path, size = element
        count("files_in")
        self._ticker.tick()
        number = 0
        try:
            raw = self._storage.open(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is its own reject
            yield self._file_reject(path, exc, number)
            return
        try:
            try:
                fmt, stream = archives.open_decompressed(raw)
            except Exception as exc:  # noqa: BLE001
                yield self._file_reject(path, exc, number)
                return
            lines = pred.iter_lines(stream)
            expanded = 0
            while True:
                try:
                    number, data = next(lines)
                    if fmt is not None:
                        expanded += len(data) + 1
                        self._limits.check(expanded, size)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - corrupt, truncated, a bomb: one reject, the run goes on
                    yield self._file_reject(path, exc, number)
                    return
                yield from self._line(path, number, data)
        finally:
            raw.close()

    def _line(self, path: str, number: int, data: bytes) -> Iterator[Any]:
        if number == 1 and data.startswith(_BOM):
            data = data[len(_BOM) :]
        if pred.is_blank(data):
            count("blank_lines")
            return
        count("lines_in")
        try:
            yield path, number, pred.parse_line(data)
        except pred.LineRejected as exc:
            yield TaggedOutput(REJECTS, line_reject(path, number, exc))

    @staticmethod
    def _file_reject(path: str, exc: BaseException, lines_read: int) -> Any:
        count("files_rejected")
        kept = f" (after line {lines_read}: the lines before it were read)" if lines_read else ""
        message = f"{str(exc) or repr(exc)}{kept}"
        return TaggedOutput(REJECTS, reject(path, "read", message, type(exc).__name__))


def observations(element: tuple[str, int, dict[pred.Path, pred.Leaf]]) -> dict[pred.Path, Any]:
    return pred.observations(element[2])


class AgreeLayoutFn(beam.CombineFn):
    """Every line's observations → the table's Layout (medbeam.io.predictions.agree); order-independent."""

    def __init__(self, flatten: bool, ragged: bool):
        self._flatten = flatten
        self._ragged = ragged

    def create_accumulator(self) -> pred.Tally:
        return pred.Tally()

    def add_input(self, tally: pred.Tally, observed: dict[pred.Path, Any]) -> pred.Tally:
        return tally.add(observed)

    def merge_accumulators(self, tallies: Iterable[pred.Tally]) -> pred.Tally:
        merged = pred.Tally()
        for tally in tallies:
            merged.merge(tally)
        return merged

    def extract_output(self, tally: pred.Tally) -> pred.Layout:
        return pred.agree(tally, self._flatten, self._ragged)


def table_schema(layout: pred.Layout) -> pa.Schema:
    schema = layout.schema()
    count("columns", len(schema))
    return schema


class ToRowFn(beam.DoFn):
    """(path, line, parsed values) + the Layout → the table's row, or a `schema` reject."""

    def process(self, element: tuple[str, int, dict[pred.Path, pred.Leaf]], layout: pred.Layout) -> Iterator[Any]:
        path, number, leaves = element
        try:
            row = layout.row(path, number, leaves)
        except pred.LineRejected as exc:
            yield TaggedOutput(REJECTS, line_reject(path, number, exc))
            return
        count("rows_written")
        yield row
