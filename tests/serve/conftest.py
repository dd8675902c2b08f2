"""Fixtures shared by the service tests."""
import shutil

import pytest


@pytest.fixture()
def index_copy(digits_index, tmp_path):
    """A private, editable copy of the session's digits index (see tests/conftest.py)."""
    out = tmp_path / "idx"
    shutil.copytree(digits_index, out)
    return out
