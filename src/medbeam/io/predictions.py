"""Batch-prediction JSON lines → table rows (`medbeam predictions load`): pure functions, no Beam.

Cloud ML Engine and Vertex AI batch prediction write one JSON object per line (`prediction.results-00000-
of-00003`, …). Google's load_feature_vectors.py typed the table from the first line only and made one
column per tensor element. Here the table's layout is agreed from every line, and a line that does not fit
it is a reject naming its file and line, never a crash.

**Columns.** Each key of a line's object is a column; a nested object's keys become columns named by their
path (`{"prediction": {"scores": […]}}` → `prediction_scores`). Names are made BigQuery-valid: every
character other than ASCII letters, digits and `_` becomes `_`, a name starting with a digit gets a
leading `_`, one starting with a reserved prefix (`_TABLE_`, …) a leading `x`; a key named like the
provenance columns (`source`, `line`, any case) is stored as `json_source` / `json_line`. Every row also
has `source` (the file's URI) and `line` (1-based, counting every line of the file) first; the other
columns follow sorted by name.

**Values.** JSON true/false → BOOLEAN (never an integer), integers → INT64 (outside INT64's range: a
reject), numbers → FLOAT64 (a column of integers that also holds floats is FLOAT64), strings → STRING,
null → NULL, a key missing from a line → NULL (so a key found on only some lines is a column that is NULL
elsewhere). A list is a tensor: rectangular, of one kind (numbers, booleans or strings). A tensor that is
ragged (`[[1, 2], [3]]`), mixes kinds (`[1, "a"]`, `[true, 1]`), holds objects, or holds a null (BigQuery
arrays cannot hold NULL) makes its line a reject, in both modes (so both accept the same lines). NaN and
Infinity, which TensorFlow Serving writes, are FLOAT64 values.

**Typed-list mode (the default).** A rank-1 tensor is a REPEATED column (list<int64>, list<float64>, …).
A tensor of rank ≥ 2 is stored flattened, row-major, as one REPEATED column plus `{name}_shape`
(REPEATED INT64: its dimensions), because BigQuery arrays cannot hold arrays. The other choice, a list of
structs per dimension (`[{values: […]}, …]`), keeps the nesting but makes every read a nested unnest
(`q[OFFSET(i)].values[OFFSET(j)]` instead of `q[OFFSET(i * 3 + j)]`) and a different schema per rank;
flat values are what array code wants anyway (`np.reshape(row.q, row.q_shape)`), they are one plain Arrow
list (cheap to write and scan), and the shape column keeps each row self-describing when `ragged` lets
shapes vary.

**Flatten mode (`flatten`) is Google's column rule:** each element is its own scalar column
`{name}_{i}_{j}…`, each index zero-padded to the number of digits of its dimension's size:
`feature_vector_0000 … feature_vector_2047` for 2048 values, `q_00_0 … q_10_2` for shape (11, 3),
`times_000 … times_100` for 101 values; scalars keep their name. A key's shape is then part of the
schema, so it cannot be `ragged`; a null tensor is NULL in all its columns.

**The agreed layout, per key** (deterministic, whatever the order lines arrive in):
1. Shape: over the lines where the key has a value (not null), the shape seen on the most lines wins; a
   tie goes to the smallest shape (tuple order: () < (2,) < (2, 2) < (3,)). With `ragged` (typed-list
   mode only) the rank is agreed instead (ties to the smallest), lengths may vary from line to line, and
   an empty list fits any rank ≥ 1 (no detections: `[]` where others have `[[x, y, w, h], …]`; its
   `_shape` is all zeros).
2. Kind: over the lines with that shape, the kind group seen on the most lines wins (numbers, booleans,
   strings; an empty tensor votes for none), ties in that order; numbers are FLOAT64 if any such line
   has a float, else INT64. A key that is null on every line is a STRING column; a tensor that is empty
   on every line is FLOAT64.
3. Names: keys claim their columns in order of the lines they appear on (most first; ties by key); a key
   one of whose columns is already taken (BigQuery names ignore case) or is not a valid BigQuery name
   (longer than 300 characters) gets no column.
A line whose value for a key has another shape (or rank), another kind group, or a key that got no column,
is a reject (stage `schema`) saying which key, what it has, and what the table has; a null is never one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

import pyarrow as pa

from medbeam.io.bigquery import schema_problems

#: A key's place in a line's object: ("prediction", "scores") for {"prediction": {"scores": …}}.
Path = tuple[str, ...]
Shape = tuple[int, ...]
EMPTY: Shape = (0,)
SOURCE, LINE = "source", "line"
PROVENANCE = (SOURCE, LINE)
KINDS = ("bool", "int", "float", "string")
_GROUPS = {"bool": "booleans", "int": "numbers", "float": "numbers", "string": "strings"}
_GROUP_ORDER = ("numbers", "booleans", "strings")
_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_BIGQUERY = {"bool": "BOOLEAN", "int": "INT64", "float": "FLOAT64", "string": "STRING"}
_SCALAR_KINDS = {bool: "bool", int: "int", float: "float", str: "string"}
_INT64 = (-(2**63), 2**63 - 1)
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")
READ_CHUNK = 1 << 20
MAX_NAME = 300


class LineRejected(ValueError):
    """A line that cannot be a row: `stage` is `parse` (not a JSON object, or a value no column can hold)
    or `schema` (a value that disagrees with the agreed layout)."""

    def __init__(self, message: str, stage: str = "parse"):
        super().__init__(message)
        self.stage = stage


class Leaf(NamedTuple):
    """One value of a line: `kind` one of KINDS (None for null or an empty tensor), `shape` () for a
    scalar (None for null)."""

    value: Any
    kind: str | None
    shape: Shape | None


def key_text(path: Path) -> str:
    return ".".join(path)


def shape_text(shape: Shape) -> str:
    return "scalar" if not shape else f"shape ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


# ---------------------------------------------------------------------------------------------------
# Reading and parsing lines


def iter_lines(stream: BinaryIO, chunk_size: int = READ_CHUNK) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, bytes without its end of line) of every line, however long: a line that spans
    chunks is joined once, not re-copied per chunk. A last line without a newline counts too."""
    pending: list[bytes] = []
    number = 0
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if start < len(chunk):
                    pending.append(chunk[start:])
                break
            number += 1
            piece = chunk[start:end]
            if pending:
                piece = b"".join([*pending, piece])
                pending = []
            yield number, piece.removesuffix(b"\r")
            start = end + 1
    if pending:
        yield number + 1, b"".join(pending).removesuffix(b"\r")


def is_blank(data: bytes) -> bool:
    return not data.strip()


def parse_line(data: bytes | str) -> dict[Path, Leaf]:
    """A line's JSON object → its values by key path, each typed; LineRejected (stage parse) otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise LineRejected(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise LineRejected("JSON nested too deeply") from None
    except ValueError as exc:
        raise LineRejected(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineRejected(f"not a JSON object but {_json_type(obj)}: each line must be an object of named outputs")
    found: dict[Path, Leaf] = {}
    for path, value in _leaves(obj, ()):
        if value is None:
            found[path] = Leaf(None, None, None)
            continue
        try:
            kind, shape = inspect_value(value)
        except RecursionError:
            raise LineRejected(f"key {key_text(path)!r}: a list nested too deeply") from None
        except ValueError as exc:
            raise LineRejected(f"key {key_text(path)!r}: {exc}") from None
        found[path] = Leaf(value, kind, shape)
    return found


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string"}.get(type(value), "a number")


def _leaves(obj: Mapping[str, Any], prefix: Path) -> Iterator[tuple[Path, Any]]:
    for key, value in obj.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            yield from _leaves(value, path)
        else:
            yield path, value


def inspect_value(value: Any) -> tuple[str | None, Shape]:
    """(kind, shape) of a non-null JSON value; ValueError saying why it is no tensor."""
    kind = _SCALAR_KINDS.get(type(value))
    if kind is not None:
        if kind == "int":
            _check_int64([value])
        return kind, ()
    if isinstance(value, list):
        return _tensor(value)
    raise ValueError(f"an object inside a list is not a tensor ({type(value).__name__})")


def _tensor(values: list[Any]) -> tuple[str | None, Shape]:
    if not values:
        return None, (0,)
    types = {type(v) for v in values}
    if list in types:
        if len(types) > 1:
            raise ValueError("ragged list: it mixes lists and single values")
        kind: str | None = None
        inner: Shape | None = None
        for index, sub in enumerate(values):
            sub_kind, sub_shape = _tensor(sub)
            if inner is None:
                inner = sub_shape
            elif sub_shape != inner:
                first, other = shape_text(inner), shape_text(sub_shape)
                raise ValueError(f"ragged list: element 0 has {first}, element {index} {other}")
            kind = _join_kinds(kind, sub_kind)
        return kind, (len(values), *(inner or ()))
    if type(None) in types:
        raise ValueError(f"null at index {values.index(None)} of a list (BigQuery arrays cannot hold NULL)")
    kinds = {_SCALAR_KINDS.get(t) for t in types}
    if None in kinds:
        raise ValueError("a list of objects is not a tensor")
    kind = None
    for k in sorted(kinds):
        kind = _join_kinds(kind, k)
    if "int" in kinds:
        _check_int64([v for v in values if type(v) is int])
    return kind, (len(values),)


def _join_kinds(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    raise ValueError(f"mixed element types in one list ({_GROUPS[a]} and {_GROUPS[b]})")


def _check_int64(values: list[int]) -> None:
    if values and (min(values) < _INT64[0] or max(values) > _INT64[1]):
        raise ValueError("integer outside the INT64 range")


def observations(leaves: Mapping[Path, Leaf]) -> dict[Path, tuple[str | None, Shape] | None]:
    """What the layout is agreed from: each key's (kind, shape), None for a null."""
    return {path: None if leaf.shape is None else (leaf.kind, leaf.shape) for path, leaf in leaves.items()}


# ---------------------------------------------------------------------------------------------------
# Agreeing on the layout


@dataclass
class Tally:
    """Per key: the lines it appears on, and the lines per (shape, kind) of its values; merged across
    workers in any order with the same result."""

    present: Counter = field(default_factory=Counter)
    typed: Counter = field(default_factory=Counter)

    def add(self, observed: Mapping[Path, tuple[str | None, Shape] | None]) -> Tally:
        for path, seen in observed.items():
            self.present[path] += 1
            if seen is not None:
                self.typed[(path, seen[1], seen[0])] += 1
        return self

    def merge(self, other: Tally) -> Tally:
        self.present.update(other.present)
        self.typed.update(other.typed)
        return self


@dataclass(frozen=True)
class ColumnPlan:
    """How one key becomes columns. `lines`: the lines it is on (null or not), `valued`: those where it is
    not null, `agreeing`: those that fit. `shape`: the agreed shape (None: only the rank is agreed, `ragged`);
    `names`: its columns in order (typed-list: the values, then `_shape` for rank ≥ 2; flatten: one per
    element, row-major); `refused`: why the key got no column."""

    path: Path
    kind: str
    rank: int
    shape: Shape | None
    lines: int
    valued: int
    agreeing: int
    base: str
    names: tuple[str, ...]
    refused: str | None = None

    def agreed(self) -> str:
        return f"rank {self.rank}" if self.shape is None else shape_text(self.shape)


def _vote(counts: Mapping[Any, int], order: Any = None) -> Any:
    """The entry seen most often; ties to the smallest (by `order`, else natural order)."""
    return min(counts, key=lambda k: (-counts[k], k if order is None else order(k)))


def column_base(path: Path) -> str:
    """A key path's column name (before any element suffix), valid for BigQuery where its length allows."""
    name = "_".join(_NOT_NAME.sub("_", part) for part in path)
    if not name or name[0].isdigit():
        name = "_" + name
    if len(name) <= MAX_NAME and schema_problems([{"name": name}]):  # a reserved prefix
        name = "x" + name
    if name.casefold() in PROVENANCE:
        name = "json_" + name
    return name


def element_names(base: str, shape: Shape) -> list[str]:
    """Google's flatten rule: `{base}_{i}_{j}…`, each index padded to its dimension's digit count."""
    if not shape:
        return [base]
    widths = [len(str(d)) for d in shape]
    return [
        f"{base}_" + "_".join(f"{i:0{w}d}" for i, w in zip(index, widths, strict=True))
        for index in itertools.product(*(range(d) for d in shape))
    ]


def agree(tally: Tally, flatten: bool = False, ragged: bool = False) -> Layout:
    """The table's layout from every line's observations (see the module docstring for the rules)."""
    if flatten and ragged:
        raise ValueError("ragged shapes need typed-list columns, not flatten")
    by_path: dict[Path, Counter] = {}
    for (path, shape, kind), n in tally.typed.items():
        by_path.setdefault(path, Counter())[(shape, kind)] += n
    plans: list[ColumnPlan] = []
    for path, lines in tally.present.items():
        seen = by_path.get(path, Counter())
        plans.append(_plan(path, lines, seen, flatten, ragged))
    plans = _claim_names(plans)
    return Layout({p.path: p for p in plans}, flatten, ragged)


def _plan(path: Path, lines: int, seen: Counter, flatten: bool, ragged: bool) -> ColumnPlan:
    base = column_base(path)
    if not seen:  # null on every line
        return ColumnPlan(path, "string", 0, (), lines, 0, 0, base, (base,))
    by_signature: Counter = Counter()
    for (shape, _kind), n in seen.items():
        if not (ragged and shape == EMPTY):  # with ragged, [] fits any rank: it does not vote
            by_signature[len(shape) if ragged else shape] += n
    agreed = _vote(by_signature) if by_signature else 1

    def fits(shape: Shape) -> bool:
        return (len(shape) == agreed or (shape == EMPTY and agreed >= 1)) if ragged else shape == agreed

    groups: Counter = Counter()
    floats = False
    for (shape, kind), n in seen.items():
        if fits(shape) and kind is not None:
            groups[_GROUPS[kind]] += n
            floats = floats or kind == "float"
    group = _vote(groups, _GROUP_ORDER.index) if groups else None
    if group is None:
        kind = "float"  # empty tensors only
    else:
        kind = {"booleans": "bool", "strings": "string"}.get(group) or ("float" if floats else "int")
    agreeing = sum(
        n for (shape, k), n in seen.items() if fits(shape) and (k is None or _GROUPS[k] == group)
    )
    rank = agreed if ragged else len(agreed)
    shape = None if ragged else agreed
    if flatten:
        names = tuple(element_names(base, shape))
    else:
        names = (base, f"{base}_shape") if rank >= 2 else (base,)
    return ColumnPlan(path, kind, rank, shape, lines, sum(seen.values()), agreeing, base, names)


def _claim_names(plans: list[ColumnPlan]) -> list[ColumnPlan]:
    taken: dict[str, Path] = {name: () for name in PROVENANCE}
    claimed = []
    for plan in sorted(plans, key=lambda p: (-p.lines, p.path)):
        refused = None
        long = next((n for n in plan.names if len(n) > MAX_NAME), None)
        if long is not None:
            refused = f"column name {long[:40]}… is longer than BigQuery's {MAX_NAME} characters"
        else:
            clash = next((n for n in plan.names if n.casefold() in taken), None)
            if clash is not None:
                other = taken[clash.casefold()]
                owner = f"key {key_text(other)!r}'s (on as many lines or more)" if other else "a provenance column"
                refused = f"its column {clash!r} is already {owner}; BigQuery column names ignore case"
        if refused is None:
            taken.update({n.casefold(): plan.path for n in plan.names})
        else:
            plan = dataclasses.replace(plan, refused=refused)
        claimed.append(plan)
    return claimed


# ---------------------------------------------------------------------------------------------------
# The layout: schema and rows


@dataclass(frozen=True)
class Layout:
    """The agreed columns of a predictions table (a Beam side input: picklable)."""

    columns: dict[Path, ColumnPlan]
    flatten: bool = False
    ragged: bool = False

    def fields(self) -> list[tuple[str, pa.DataType]]:
        out: list[tuple[str, pa.DataType]] = []
        for plan in self.columns.values():
            if plan.refused is not None:
                continue
            scalar = _ARROW[plan.kind]
            if self.flatten or plan.rank == 0:
                out += [(name, scalar) for name in plan.names]
            else:
                out.append((plan.names[0], pa.list_(scalar)))
                if plan.rank >= 2:
                    out.append((plan.names[1], pa.list_(pa.int64())))
        return sorted(out, key=lambda f: f[0])

    def schema(self) -> pa.Schema:
        return pa.schema([(SOURCE, pa.string()), (LINE, pa.int64()), *self.fields()])

    def describe(self, path: Path) -> str:
        plan = self.columns[path]
        what = _BIGQUERY[plan.kind] if plan.rank == 0 else f"{_BIGQUERY[plan.kind]} tensors of {plan.agreed()}"
        return f"{what} (as {plan.agreeing} of the {plan.valued} lines with a value for it have)"

    def row(self, source: str, line: int, leaves: Mapping[Path, Leaf]) -> dict[str, Any]:
        """The line's row; LineRejected (stage schema) when a value disagrees with the layout."""
        row: dict[str, Any] = {SOURCE: source, LINE: line}
        problems = []
        for path, leaf in leaves.items():
            if leaf.shape is None:
                continue  # null: NULL in every column of the key
            plan = self.columns.get(path)
            if plan is None:  # cannot happen with the layout of these lines; said clearly if it does
                problems.append(f"key {key_text(path)!r} is not in the table's layout")
                continue
            problem = self._disagreement(plan, leaf)
            if problem is not None:
                problems.append(problem)
                continue
            self._put(row, plan, leaf.value)
        if problems:
            raise LineRejected("; ".join(problems), "schema")
        return row

    def _disagreement(self, plan: ColumnPlan, leaf: Leaf) -> str | None:
        key = key_text(plan.path)
        if plan.refused is not None:
            return f"key {key!r} has no column: {plan.refused}"
        shape = leaf.shape or ()
        if plan.shape is None:
            fits = len(shape) == plan.rank or (shape == EMPTY and plan.rank >= 1)
        else:
            fits = shape == plan.shape
        if not fits:
            has = f"rank {len(shape)}" if plan.shape is None else shape_text(shape)
            return f"key {key!r} has {has}, the table has {self.describe(plan.path)}"
        if leaf.kind is not None and _GROUPS[leaf.kind] != _GROUPS[plan.kind]:
            return f"key {key!r} holds {_GROUPS[leaf.kind]}, the table has {self.describe(plan.path)}"
        return None

    def _put(self, row: dict[str, Any], plan: ColumnPlan, value: Any) -> None:
        if plan.rank == 0:
            row[plan.names[0]] = float(value) if plan.kind == "float" else value
            return
        flat = _flat(value, plan.rank)
        if plan.kind == "float" and int in set(map(type, flat)):  # Arrow refuses ints past 2**53 as doubles
            flat = [float(v) for v in flat]
        if self.flatten:
            row.update(zip(plan.names, flat, strict=True))
            return
        row[plan.names[0]] = flat
        if plan.rank >= 2:
            row[plan.names[1]] = list(_shape_of(value, plan.rank))  # [] (ragged): [0, 0, …]


def _flat(value: list[Any], rank: int) -> list[Any]:
    for _ in range(rank - 1):
        value = list(itertools.chain.from_iterable(value))
    return value


def _shape_of(value: list[Any], rank: int) -> Iterable[int]:
    for _ in range(rank):
        yield len(value)
        value = value[0] if value else []

