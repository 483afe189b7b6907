"""MatchFiles: a job's input listing, in 2 steps for one pattern and spread over workers for several."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from medbeam.io import files
from medbeam.transforms.inputs import MatchFiles
from tests.helpers import transform_labels


def _expected(root):
    return [(str(root / "a" / "one.dcm"), 1), (str(root / "a" / "two.dcm"), 2), (str(root / "b.dcm"), 3)]


def _tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.dcm").write_bytes(b"1")
    (tmp_path / "a" / "two.dcm").write_bytes(b"22")
    (tmp_path / "b.dcm").write_bytes(b"333")
    return tmp_path


def test_one_pattern_is_listed_in_two_steps_with_sizes_and_no_folders(tmp_path):
    root = _tree(tmp_path)
    with beam.Pipeline() as p:
        found = p | "Match" >> MatchFiles([files.input_pattern(str(root))])
        assert_that(found, equal_to(_expected(root)))
        steps = sorted(label for label in transform_labels(p) if label.startswith("Match/"))
        assert steps == ["Match/Match", "Match/Start"]


def test_several_patterns_each_list_their_files(tmp_path):
    root = _tree(tmp_path)
    patterns = [str(root / "a" / "*.dcm"), str(root / "b.dcm"), str(root / "none*.dcm")]
    with beam.Pipeline() as p:
        found = p | MatchFiles(patterns)
        assert_that(found, equal_to(_expected(root)))


def test_a_pattern_without_a_wildcard_that_matches_nothing_is_an_error(tmp_path):
    assert list(files.matched_files(str(tmp_path / "none*.dcm"))) == []
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list(files.matched_files(str(tmp_path / "missing.dcm")))
