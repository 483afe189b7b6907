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


def test_a_bundle_sends_its_column_types_once_at_its_end_merged(tmp_path):
    """The schema's parts (io.tables.ComputedSchema) are one per bundle: each file's new column types join the
    bundle's, a file that fails to parse adds none, and the merge is that of every file's types."""
    from apache_beam.pvalue import TaggedOutput

    from medbeam.dicom.metadata import instance_row, merge_column_types
    from medbeam.dicom.reader import read_dataset
    from medbeam.io.sharded import SummaryPart
    from medbeam.transforms.dicom import TYPES
    from medbeam.transforms.progress import ProgressTicker
    from tests.helpers import TEST_FILES

    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file" * 20)
    paths = [str(TEST_FILES / "CT_small.dcm"), str(tmp_path / "junk.dcm"), str(TEST_FILES / "MR_small.dcm")]
    fn = ParseDicomFn(False, ProgressTicker(None))
    fn.setup()
    fn.start_bundle()
    outputs = [out for path in paths * 2 for out in fn.process((path, None))]
    assert not any(isinstance(out, TaggedOutput) and out.tag == TYPES for out in outputs)
    assert sum(isinstance(out, dict) for out in outputs) == 4  # rows: CT and MR, twice
    (sent,) = list(fn.finish_bundle())  # among the rows: the table's schema part (io.tables.ComputedSchema)
    assert isinstance(sent.value, SummaryPart)
    expected: dict = {}
    for path in paths[::2]:
        with open(path, "rb") as fp:
            expected = merge_column_types(expected, instance_row(read_dataset(fp), path=path, file_size=1).types)
    assert sent.value.value == expected
    assert list(fn.finish_bundle()) == []  # nothing more until the next bundle's files
