"""The one deterministic sharded writer behind Parquet tables (io.tables) and TFRecord datasets (io.tfrecord).

    (group, item) → measure per group ─→ shard count ─┐
                  → stable shard of the item's key ───┴→ group by (group, shard) → sort → encode → write
                  → per group: finish (manifest, stale shards of earlier runs deleted) → its result

Why our own and not Beam's file sinks: those deal elements to shards from a random starting point per bundle
and keep arrival order, so two runs over the same input write different files. Here an item's shard is a
stable hash of its key (`stable_shard`), items are sorted inside their shard, and the shard count follows
the measured size (rows or bytes) or is given, so a rerun writes byte-identical files; each file is
written whole by one worker (and replaced on retry); the finishing step removes what an earlier run left.

Several groups (the tables of one job) share every step: each transform costs the DirectRunner ~20 ms
per run to build and execute, which small runs feel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import AsDict, PCollection


def stable_shard(key: str, num_shards: int) -> int:
    """Same key, same shard, on every worker and every run (unlike Python's salted hash()).

    A cryptographic digest, not crc32: CRC is linear, so keys that differ in one character (…/1.0.png,
    …/1.1.png) differ by a constant and often land in the same shard modulo a small count.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


class ShardFormat:
    """What a format supplies to ShardedWrite; picklable. `side` holds the extra side inputs, by name."""

    def pack(self, group: str, item: Any) -> Any:
        """The item as it travels from the Tag step to `write` (a compact form of it, if the format has one)."""
        return item

    def measure(self, item: Any) -> int:
        """This item's contribution to its group's size (1 for a row, its length for a record)."""
        raise NotImplementedError

    def shard_count(self, group: str, size: int) -> int:
        raise NotImplementedError

    def key(self, group: str, item: Any) -> str:
        """What the shard is a hash of."""
        raise NotImplementedError

    def sort_key(self, group: str, item: Any) -> Any:
        raise NotImplementedError

    def write(self, group: str, index: int, count: int, items: list[Any], side: dict[str, Any]) -> str:
        """Write one shard (items sorted); return its path."""
        raise NotImplementedError

    def finish(self, group: str, shards: list[str], size: int, side: dict[str, Any]) -> Any:
        """After every shard of the group is written: manifest, stale shards removed; the group's result."""
        raise NotImplementedError


class _Measure(beam.CombineFn):
    def __init__(self, fmt: ShardFormat):
        self._fmt = fmt

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, total: int, item: Any) -> int:
        return total + self._fmt.measure(item)

    def merge_accumulators(self, totals: Iterable[int]) -> int:
        return sum(totals)

    def extract_output(self, total: int) -> int:
        return total


class _AssignShard(beam.DoFn):
    def __init__(self, fmt: ShardFormat):
        self._fmt = fmt

    def process(self, element: tuple[str, Any], sizes: dict[str, int]) -> Iterator[tuple[tuple[str, int], Any]]:
        group, item = element
        count = self._fmt.shard_count(group, sizes[group])
        yield (group, stable_shard(self._fmt.key(group, item), count)), item


class _WriteShard(beam.DoFn):
    def __init__(self, fmt: ShardFormat):
        self._fmt = fmt

    # **side is left unannotated: Beam type-checks an annotated **kwargs against each side input.
    def process(self, element: tuple[tuple[str, int], Iterable[Any]], sizes: dict[str, int], **side):
        (group, index), items = element
        ordered = sorted(items, key=lambda item: self._fmt.sort_key(group, item))
        count = self._fmt.shard_count(group, sizes[group])
        yield group, self._fmt.write(group, index, count, ordered, side)


class _Finish(beam.DoFn):
    def __init__(self, fmt: ShardFormat, groups: list[str]):
        self._fmt = fmt
        self._groups = groups

    def process(self, _: Any, written: dict[str, list[str]], sizes: dict[str, int], **side) -> Iterator[Any]:
        for group in self._groups:
            yield self._fmt.finish(group, sorted(written.get(group, [])), sizes.get(group, 0), side)


class ShardedWrite(beam.PTransform):
    """`{group: items} | ShardedWrite(fmt, side={name: side input})`: one result per group (from `finish`).

    Or `(group, item) pairs | ShardedWrite(fmt, groups=[...])`, for items already tagged with their group
    (one step fewer per group than a dict of PCollections).
    """

    def __init__(self, fmt: ShardFormat, side: dict[str, Any] | None = None, groups: list[str] | None = None):
        super().__init__()
        self._fmt = fmt
        self._side = dict(side or {})
        self._groups = list(groups) if groups is not None else None

    def expand(self, items_by_group: dict[str, PCollection] | PCollection) -> PCollection:
        fmt = self._fmt
        if isinstance(items_by_group, PCollection):
            if not self._groups:
                raise ValueError("ShardedWrite over (group, item) pairs needs groups=[...]")
            groups, p, items = self._groups, items_by_group.pipeline, items_by_group
            if type(fmt).pack is not ShardFormat.pack:
                items = items | "Pack" >> beam.MapTuple(lambda g, item: (g, fmt.pack(g, item)))
        else:
            groups = list(items_by_group)
            p = next(iter(items_by_group.values())).pipeline
            tagged = [
                items_by_group[g] | f"Tag {g}" >> beam.Map(lambda item, g=g: (g, fmt.pack(g, item))) for g in groups
            ]
            items = tagged[0] if len(tagged) == 1 else tagged | "All items" >> beam.Flatten()
        sizes = AsDict(items | "Measure" >> beam.CombinePerKey(_Measure(self._fmt)))
        written = (
            items
            | "Shard" >> beam.ParDo(_AssignShard(self._fmt), sizes)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShard(self._fmt), sizes, **self._side)
        )
        collected = written | "Collect" >> beam.CombinePerKey(beam.combiners.ToListCombineFn())
        return (
            p
            | f"{'+'.join(groups)}: finish" >> beam.Impulse()
            | "Finish" >> beam.ParDo(_Finish(self._fmt, groups), AsDict(collected), sizes, **self._side)
        )
