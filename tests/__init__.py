import pytest

# Shared fixtures live in tests.emulators (a plugin via `pytest_plugins`, and imported for its helpers).
pytest.register_assert_rewrite("tests.emulators")
