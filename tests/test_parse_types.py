"""The parse pass sends each distinct set of column types once per bundle (ParseDicomFn.first_with_its_types)."""

from __future__ import annotations

import pyarrow as pa

from medbeam.transforms.dicom import TYPES_PER_NAMES, ParseDicomFn


def _fn() -> ParseDicomFn:
    fn = ParseDicomFn.__new__(ParseDicomFn)  # only the bundle's memo is exercised: no opener, no renderer
    fn.start_bundle()
    return fn


def test_repeated_types_are_sent_once_and_new_ones_always():
    fn = _fn()
    plain = {"path": pa.string(), "Rows": pa.int64()}
    assert fn.first_with_its_types(plain)
    assert not fn.first_with_its_types(dict(plain))  # equal, other objects
    seq = {"path": pa.string(), "Seq": pa.list_(pa.struct([("CodeValue", pa.string())]))}
    assert fn.first_with_its_types(seq)
    assert not fn.first_with_its_types({"path": pa.string(), "Seq": pa.list_(pa.struct([("CodeValue", pa.string())]))})
    assert fn.first_with_its_types({"path": pa.string(), "Seq": pa.list_(pa.struct([("CodeMeaning", pa.string())]))})
    assert fn.first_with_its_types({"Rows": pa.int64(), "path": pa.string()})  # other order: sent, harmless
    fn.start_bundle()
    assert fn.first_with_its_types(plain)  # a new bundle sends again


def test_past_the_memos_limit_every_new_set_is_still_sent():
    fn = _fn()
    variants = [{"Seq": pa.list_(pa.struct([(f"F{i}", pa.string())]))} for i in range(TYPES_PER_NAMES + 3)]
    assert all(fn.first_with_its_types(types) for types in variants)
    assert not fn.first_with_its_types(dict(variants[0]))
    assert fn.first_with_its_types(dict(variants[-1]))  # not remembered: sent again, the merge takes it
