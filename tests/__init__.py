import pytest

# Shared fixtures live in tests/conftest.py and the plugins it loads (tests.emulators, tests.orthanc); test
# modules import helpers from those and from tests.helpers, so their asserts are rewritten too.
pytest.register_assert_rewrite("tests.emulators", "tests.orthanc", "tests.helpers")
