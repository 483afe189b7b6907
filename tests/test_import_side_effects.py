"""Importing medbeam changes no global state: a notebook user's pydicom stays as they set it."""

from __future__ import annotations

import subprocess
import sys

_CHECK = """
import logging, pydicom
from pydicom.pixels import get_decoder
from pydicom import uid
before = (pydicom.config.settings.reading_validation_mode, logging.getLogger("pydicom").level,
          sorted(get_decoder(uid.JPEGLossless).available_plugins))
import medbeam.cli, medbeam.demo
import medbeam.pipelines.dicom_export, medbeam.pipelines.dicom_import, medbeam.pipelines.png_to_tfrecord
import medbeam.pipelines.images_to_tfrecord, medbeam.pipelines.untar, medbeam.pipelines.decompress
import medbeam.dicom.metadata, medbeam.dicom.reader, medbeam.dicom.render
after = (pydicom.config.settings.reading_validation_mode, logging.getLogger("pydicom").level,
         sorted(get_decoder(uid.JPEGLossless).available_plugins))
assert before == after, (before, after)
"""


def test_importing_medbeam_leaves_pydicom_and_logging_alone():
    result = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_beam_free_layers_import_no_beam():
    code = (
        "import sys, medbeam.dicom.metadata, medbeam.dicom.render, medbeam.dicom.identity, medbeam.dicom.part10, "
        "medbeam.imaging.codec, medbeam.imaging.resize, medbeam.imaging.encode; "
        "assert 'apache_beam' not in sys.modules, 'Beam imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
