"""Output naming and the choice of the file that renders an instance."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from medbeam.dicom.identity import (
    InstanceIdentityError,
    RenderSource,
    instance_key,
    is_lossy,
    png_paths,
)


def _ds(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_key_is_the_three_uids():
    ds = _ds(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", SOPInstanceUID="1.2.3.4")
    assert instance_key(ds, "a.dcm") == ("1.2", "1.2.3", "1.2.3.4")


def test_missing_uids_get_stable_placeholders_that_no_real_uid_can_take():
    ds = _ds(SeriesInstanceUID="1.2.3")
    study, series, sop = instance_key(ds, "gs://b/x.dcm")
    assert (study, series) == ("_no-study-uid", "1.2.3")
    assert sop.startswith("_file-") and sop == instance_key(ds, "gs://b/x.dcm")[2]
    assert sop != instance_key(ds, "gs://b/y.dcm")[2]


@pytest.mark.parametrize("bad", ["../../etc", "1.2/3", "..", "1.2\\3", "/abs"])
def test_uids_that_could_escape_the_output_directory_are_refused(bad):
    with pytest.raises(InstanceIdentityError):
        instance_key(_ds(StudyInstanceUID=bad, SeriesInstanceUID="1", SOPInstanceUID="2"), "x")


def test_png_paths_single_and_multi_frame():
    assert png_paths("gs://b/png/", ("s", "e", "i"), 1) == ["gs://b/png/s/e/i.png"]
    assert png_paths("out", ("s", "e", "i"), 3) == ["out/s/e/i/0001.png", "out/s/e/i/0002.png", "out/s/e/i/0003.png"]


def test_lossless_copy_renders_before_lossy_then_smallest_path():
    sources = [RenderSource(True, "a.dcm"), RenderSource(False, "z.dcm"), RenderSource(False, "m.dcm")]
    assert sorted(sources)[0] == RenderSource(False, "m.dcm")


def test_lossy_from_transfer_syntax_or_header():
    ds = _ds()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert not is_lossy(ds)
    ds.LossyImageCompression = "01"
    assert is_lossy(ds)
    del ds.LossyImageCompression
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    assert is_lossy(ds)
