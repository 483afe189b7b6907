"""The one deterministic sharded writer behind Parquet tables (io.tables) and TFRecord datasets (io.tfrecord).

    (group, item) → chunks of a bundle's items per group, and each chunk's size ─→ group sizes ─┐
                  → each chunk split by the stable shard of its items' keys ─────────────────┴→ group by
                    (group, shard, shard count) → sort → encode → write → (path, size of the shard)
                  → per group: finish (manifest, stale shards of earlier runs deleted) → its result

Why our own and not Beam's file sinks: those deal elements to shards from a random starting point per bundle
and keep arrival order, so two runs over the same input write different files. Here an item's shard is a
stable hash of its key (`stable_shard`), items are sorted inside their shard, and the shard count follows
the measured size (rows or bytes) or is given, so a rerun writes byte-identical files; each file is
written whole by one worker (and replaced on retry); the finishing step removes what an earlier run left.

Several groups (the tables of one job) share every step: each transform costs the DirectRunner ~20 ms
per run to build and execute, which small runs feel. A group may come from several PCollections (a job's
rejects come from each of its steps): each is chunked where it is made, so no Flatten of its own (a stage
of its own on the local runner) comes before the chunks'. The chunk step also emits each chunk's size on
a side output, read as one multimap side input per chunk step: the items then go from their producers
straight to the shard step, without a measuring step (and another stage) in between.

A group may have a summary that every shard needs, merged from parts that travel among its items as
SummaryPart elements (the metadata table's schema: each parse bundle's column types, sent by the parse
step at the bundle's end). The chunk step passes a part on beside the chunk sizes, the shard step merges
the parts of its group with the sizes (a side input it reads anyway, once per worker) and sends the result
along with the first chunk it gives each shard in a bundle; the writer passes it to the finishing step
beside the shard's path. So a summary costs no combining step, no grouping stage and no side input of
its own: a CombineGlobally and its side input cost the local runner ~20 ms a run (of a one-file
export's ~90), a side input of the parts alone ~9 ms.

Items travel in chunks (a bundle's items of one group, up to CHUNK_ITEMS or CHUNK_BYTES), not one by one:
every step an element takes (measure, shard, shuffle: encoded, grouped, decoded) costs Beam's per-element
path, ~70 µs a row when each row went alone (a table row of `medbeam infer`: ~15 % of a small model's
time per image). A chunk is split by shard before the shuffle, so which shard an item lands in, and so
every file written, is the same as item by item. Chunks are built in a bundle and flushed at its end, a
plain DoFn that every runner runs (on a streaming or small-bundle runner they are only smaller).

A format decides what a chunk is (`pack_chunk`, `chunk_size`, `split_chunk`, `write_chunks`): by default
the list of its items; io.tables compresses a chunk's rows together, because a runner copies every
element several times on its way (the DirectRunner: its buffers, the data plane both ways, the grouping
table; ~6× the encoded bytes at the peak of one stage), so what travels small keeps every stage small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import AsMultiMap, PCollection, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

#: most items in one chunk, and most bytes (by ShardFormat.chunk_bytes) before a chunk is flushed
CHUNK_ITEMS = 256
CHUNK_BYTES = 4 << 20
#: the chunk step's side output: (group, the chunk's contribution to its group's size), one per chunk,
#: and (group, SummaryPart) for each part among the group's items
SIZES = "sizes"
#: where a group's summary (ShardedWrite's `summaries`) reaches the format's write_chunks and finish: `side`
SUMMARY = "summary"


@dataclass(frozen=True)
class SummaryPart:
    """Among a group's items, not an item but a part of the group's summary (ShardedWrite's `summaries`)."""

    value: Any


def stable_shard(key: str, num_shards: int) -> int:
    """Same key, same shard, on every worker and every run (unlike Python's salted hash()).

    A cryptographic digest, not crc32: CRC is linear, so keys that differ in one character (…/1.0.png,
    …/1.1.png) differ by a constant and often land in the same shard modulo a small count.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


class ShardFormat:
    """What a format supplies to ShardedWrite; picklable. `side` holds the extra side inputs, by name, and
    for a group with a summary, that summary under SUMMARY."""

    def pack(self, group: str, item: Any) -> Any:
        """The item as it travels from the Tag step to `write` (a compact form of it, if the format has one)."""
        return item

    def measure(self, item: Any) -> int:
        """This item's contribution to its group's size (1 for a row, its length for a record)."""
        raise NotImplementedError

    def chunk_bytes(self, item: Any) -> int:
        """About how many bytes the (packed) item takes in a chunk: chunks stay under CHUNK_BYTES."""
        return 0

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

    # Chunk-level steps. By default a chunk is the list of its (packed) items; a format whose items are small
    # and alike (table rows) can travel them in a denser form (io.tables compresses a chunk's rows together).

    def pack_chunk(self, group: str, items: list[Any]) -> Any:
        """A full chunk of packed items → what travels (measured, split by shard, shuffled) until `write`."""
        return items

    def chunk_size(self, chunk: Any) -> int:
        """The chunk's contribution to its group's size: the sum of `measure` over its items."""
        return sum(self.measure(item) for item in chunk)

    def split_chunk(self, group: str, chunk: Any, count: int) -> Iterator[tuple[int, Any]]:
        """A chunk → (shard index, chunk of the items that land there), by the stable shard of each key."""
        yield from split_items(self, group, chunk, count)

    def write_chunks(self, group: str, index: int, count: int, chunks: Iterable[Any], side: dict[str, Any]) -> str:
        """Write one shard from every chunk that landed in it; return its path."""
        ordered = sorted((item for chunk in chunks for item in chunk), key=lambda item: self.sort_key(group, item))
        return self.write(group, index, count, ordered, side)

    def finish(self, group: str, shards: list[str], size: int, side: dict[str, Any]) -> Any:
        """After every shard of the group is written: manifest, stale shards removed; the group's result."""
        raise NotImplementedError


def split_items(fmt: ShardFormat, group: str, items: list[Any], count: int) -> Iterator[tuple[int, list[Any]]]:
    """(shard index, items) per shard that `items` land in, in index order; each item keeps its place."""
    if count == 1:
        yield 0, items
        return
    by_shard: dict[int, list[Any]] = {}
    for item in items:
        by_shard.setdefault(stable_shard(fmt.key(group, item), count), []).append(item)
    for index in sorted(by_shard):
        yield index, by_shard[index]


class _Chunk(beam.DoFn):
    """Items (packed here) → (group, chunk) pairs (the format's `pack_chunk`), each of one group and one bundle,
    and on the SIZES output (group, the chunk's size) for each.

    `group=None`: the elements are (group, item) pairs; otherwise they are items of that group."""

    def __init__(self, fmt: ShardFormat, group: str | None = None):
        self._fmt, self._group = fmt, group
        self._pack = type(fmt).pack is not ShardFormat.pack

    def start_bundle(self) -> None:
        self._chunks: dict[str, tuple[list[Any], list[int]]] = {}

    def process(self, element: Any) -> Iterator[tuple[str, Any]]:
        group, item = element if self._group is None else (self._group, element)
        if isinstance(item, SummaryPart):  # passed on with the sizes, to the shard step
            yield TaggedOutput(SIZES, (group, item))
            return
        if self._pack:
            item = self._fmt.pack(group, item)
        items, size = self._chunks.setdefault(group, ([], [0]))
        items.append(item)
        size[0] += self._fmt.chunk_bytes(item)
        if len(items) >= CHUNK_ITEMS or size[0] >= CHUNK_BYTES:
            del self._chunks[group]
            chunk = self._fmt.pack_chunk(group, items)
            yield group, chunk
            yield TaggedOutput(SIZES, (group, self._fmt.chunk_size(chunk)))

    def finish_bundle(self) -> Iterator[Any]:
        for group, (items, _) in sorted(self._chunks.items()):
            chunk = self._fmt.pack_chunk(group, items)
            yield GlobalWindows.windowed_value((group, chunk))
            yield TaggedOutput(SIZES, GlobalWindows.windowed_value((group, self._fmt.chunk_size(chunk))))
        self._chunks = {}


class _GroupSizes:
    """Each group's size: the sum of its chunks' sizes, which arrive as multimap side inputs (one per chunk
    step: group → one size per chunk, and the group's SummaryParts), worked out once per group and DoFn
    instance (a batch side input is final before the step that reads it starts), and its summary: its
    CombineFn over its parts. Multimaps, not a CombinePerKey into a dict: no grouping stage of their own."""

    def __init__(self, combines: dict[str, beam.CombineFn]) -> None:
        self._combines = combines
        self._known: dict[str, tuple[int, Any]] = {}

    def of(self, group: str, chunk_sizes: tuple[Any, ...]) -> tuple[int, Any]:
        """(the group's size, its summary or None)."""
        known = self._known.get(group)
        if known is None:
            combine = self._combines.get(group)
            total, accumulator = 0, combine.create_accumulator() if combine is not None else None
            for sizes in chunk_sizes:
                for size in sizes[group]:
                    if not isinstance(size, SummaryPart):
                        total += size
                    elif combine is not None:
                        accumulator = combine.add_input(accumulator, size.value)
            known = self._known[group] = (total, combine.extract_output(accumulator) if combine else None)
        return known


#: ((group, shard index, shard count), (the group's summary or None, a chunk)): what the shard step emits
_ShardPiece = tuple[tuple[str, int, int], tuple[Any, Any]]


class _AssignShard(beam.DoFn):
    """A chunk → one ((group, shard, shard count), (summary or None, chunk)) per shard its items land in.
    The only step that reads the sizes and the summaries' parts: the count travels in the key and a group's
    summary with the first chunk each shard gets from a bundle, so the writers and the finishing step need
    no side input of their own (each side input costs every run two pickles, and each reader its own read).
    A bundle's outputs are committed together, so every shard written has its summary."""

    def __init__(self, fmt: ShardFormat, combines: dict[str, beam.CombineFn]):
        self._fmt = fmt
        self._sizes = _GroupSizes(combines)

    def start_bundle(self) -> None:
        self._carried: set[tuple[str, int]] = set()

    def process(self, element: tuple[str, Any], *chunk_sizes: Any) -> Iterator[_ShardPiece]:
        group, chunk = element
        size, summary = self._sizes.of(group, chunk_sizes)
        count = self._fmt.shard_count(group, size)
        pieces = [(0, chunk)] if count == 1 else self._fmt.split_chunk(group, chunk, count)
        for index, piece in pieces:
            carries = summary is not None and (group, index) not in self._carried
            if carries:
                self._carried.add((group, index))
            yield (group, index, count), (summary if carries else None, piece)


class _WriteShard(beam.DoFn):
    """A shard's chunks → (group, (the shard's path, its items' size, the group's summary or None)): the
    finishing step sums the sizes and takes the summary from any shard."""

    def __init__(self, fmt: ShardFormat):
        self._fmt = fmt

    # **side is left unannotated: Beam type-checks an annotated **kwargs against each side input.
    def process(self, element: tuple[tuple[str, int, int], Iterable[tuple[Any, Any]]], **side):
        (group, index, count), values = element
        summary, chunks = None, []
        for carried, chunk in values:
            summary = carried if carried is not None else summary
            chunks.append(chunk)
        if summary is not None:
            side = {**side, SUMMARY: summary}
        size = sum(self._fmt.chunk_size(chunk) for chunk in chunks)
        yield group, (self._fmt.write_chunks(group, index, count, chunks, side), size, summary)


class _Finish(beam.DoFn):
    def __init__(self, fmt: ShardFormat, groups: list[str]):
        self._fmt = fmt
        self._groups = groups

    def process(self, _: Any, written: Any, **side) -> Iterator[Any]:
        """`written`: a multimap side input, group → (path, size, summary) of each shard written (none for an
        empty group, whose format then has no summary to go by)."""
        for group in self._groups:
            shards = list(written[group])
            paths = sorted(path for path, _, _ in shards)
            summary = next((s for _, _, s in shards if s is not None), None)
            group_side = side if summary is None else {**side, SUMMARY: summary}
            yield self._fmt.finish(group, paths, sum(size for _, size, _ in shards), group_side)


class TakesListsOfInputs:
    """For a PTransform applied to `{group: PCollection or a list of them}` (ShardedWrite, WriteTables).

    Beam takes a tuple's members as a transform's inputs but a list for a value to Create, which would turn
    a list of PCollections into a PCollection of PCollection objects; this passes lists on as tuples through
    `_extract_input_pvalues`, Beam's hook for multi-input transforms."""

    def _extract_input_pvalues(self, pvalueish: Any) -> Any:
        if isinstance(pvalueish, dict):
            pvalueish = {k: tuple(v) if isinstance(v, list) else v for k, v in pvalueish.items()}
        return super()._extract_input_pvalues(pvalueish)  # type: ignore[misc]


class ShardedWrite(TakesListsOfInputs, beam.PTransform):
    """`{group: items} | ShardedWrite(fmt, side={name: side input})`: one result per group (from `finish`).
    A group's items may be a list of PCollections: each is chunked where it is made (no Flatten first).

    Or `(group, item) pairs | ShardedWrite(fmt, groups=[...])`, for items already tagged with their group
    (one step fewer per group than a dict of PCollections).

    `summaries={group: combine}`: the group's summary is `combine` (a CombineFn) over the values of the
    SummaryParts among its items, handed to the format's write_chunks and finish as side[SUMMARY] (see the
    module's text); a group without parts has the CombineFn's output for none.
    """

    def __init__(
        self,
        fmt: ShardFormat,
        side: dict[str, Any] | None = None,
        groups: list[str] | None = None,
        summaries: dict[str, beam.CombineFn] | None = None,
    ):
        super().__init__()
        self._fmt = fmt
        self._side = dict(side or {})
        self._groups = list(groups) if groups is not None else None
        self._summaries = dict(summaries or {})

    def expand(self, items_by_group: Any) -> PCollection:  # dict of PCollections or one; Beam warns on a dict hint
        fmt = self._fmt
        if isinstance(items_by_group, PCollection):
            if not self._groups:
                raise ValueError("ShardedWrite over (group, item) pairs needs groups=[...]")
            groups, p = self._groups, items_by_group.pipeline
            chunked = [items_by_group | "Chunk" >> beam.ParDo(_Chunk(fmt)).with_outputs(SIZES, main="chunks")]
        else:
            groups = list(items_by_group)
            chunked = []
            for g in groups:
                sources = _sources(g, items_by_group[g])
                for i, source in enumerate(sources):
                    label = f"Chunk {g}" if len(sources) == 1 else f"Chunk {g} {i}"
                    chunked.append(source | label >> beam.ParDo(_Chunk(fmt, g)).with_outputs(SIZES, main="chunks"))
            p = chunked[0].chunks.pipeline
        items = chunked[0].chunks if len(chunked) == 1 else [c.chunks for c in chunked] | "All items" >> beam.Flatten()
        sizes = [AsMultiMap(c[SIZES]) for c in chunked]
        written = (
            items
            | "Shard" >> beam.ParDo(_AssignShard(self._fmt, self._summaries), *sizes)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_WriteShard(self._fmt), **self._side)
        )
        # The written paths reach the finishing step as a multimap side input: no grouping stage of their own
        # (a CombinePerKey into lists cost the local runner one more stage, ~5 ms a run).
        return (
            p
            | f"{'+'.join(groups)}: finish" >> beam.Impulse()
            | "Finish" >> beam.ParDo(_Finish(self._fmt, groups), AsMultiMap(written), **self._side)
        )


def _sources(group: str, items: Any) -> list[PCollection]:
    """A group's items: one PCollection, or a tuple of them."""
    sources = [items] if isinstance(items, PCollection) else list(items) if isinstance(items, tuple) else []
    if not sources or not all(isinstance(s, PCollection) for s in sources):
        raise ValueError(f"ShardedWrite: the items of {group!r} must be a PCollection or a non-empty list of them")
    return sources
