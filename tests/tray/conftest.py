"""Tray tests run Qt offscreen (no display needed); VM flows reuse the shared `vm_instance`."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists

import pytest  # noqa: E402

from tests.tray.helpers import hold_spare_references  # noqa: E402

hold_spare_references()


@pytest.fixture
def tray_vm(request: pytest.FixtureRequest):
    """The integrator's running instance, or a clean skip where that fixture is not provided."""
    try:
        return request.getfixturevalue("vm_instance")
    except pytest.FixtureLookupError:
        pytest.skip("no vm_instance fixture (tests/conftest.py) in this checkout")
