"""medbeam: Apache Beam pipelines for medical imaging data."""

__version__ = "0.1.0"
