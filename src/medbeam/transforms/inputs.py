"""Listing a job's inputs: the first step of every job that reads files.

Its own small module: the export imports it, and must not pay for the archive code of transforms.files.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from medbeam.io import files


class MatchFiles(beam.PTransform):
    """`p | MatchFiles(patterns)`: (path, size) of every file the patterns match (folders left out; a file
    that two patterns match comes twice: add a Distinct where patterns may overlap).

    One pattern (the usual `--input`) is listed in one step after an Impulse: 2 steps instead of Beam's
    Create → MatchAll → a FlatMap to (path, size) (5), each step costing every local run ~0.5-1 ms. Several
    patterns stay a Create, which spreads them over the workers, each listing its own.
    """

    def __init__(self, patterns: list[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, p: beam.pvalue.PBegin) -> beam.PCollection:
        if len(self._patterns) == 1:
            return p | "Start" >> beam.Impulse() | "Match" >> beam.FlatMap(_match_one, self._patterns[0])
        return p | "Patterns" >> beam.Create(self._patterns) | "Match" >> beam.FlatMap(files.matched_files)


def _match_one(_: bytes, pattern: str) -> Iterator[tuple[str, int]]:
    """The Impulse's one element → the files of the one pattern (typed: Beam need not infer it)."""
    return files.matched_files(pattern)
