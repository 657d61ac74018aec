"""The ``project`` fixture; test modules load it with ``pytest_plugins``."""

from __future__ import annotations

import pytest

from tests.plugin_support.project import FakeProject


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> FakeProject:
    """A pytester directory wired to the fake stage runner."""
    return FakeProject(pytester, monkeypatch)
