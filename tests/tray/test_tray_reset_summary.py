"""The reset confirmation lists exactly what the engine's df says will be deleted (EngineUsage, the
same counts `pinnace reset` prints)."""

from __future__ import annotations

from app.tray.reset_summary import KEPT, UNAVAILABLE, summary_text
from hypervisor.engine import EngineUsage

GIB = 1024**3

DF = {
    "LayersSize": 2 * GIB,
    "Images": [
        {"Id": "sha256:a", "Size": GIB, "SharedSize": 0, "Containers": 1},
        {"Id": "sha256:b", "Size": GIB, "SharedSize": 0, "Containers": 0},
        {"Id": "sha256:c", "Size": 5, "SharedSize": -1, "Containers": 0},
    ],
    "Containers": [
        {"Id": "1", "State": "running", "SizeRw": 512 * 1024**2},
        {"Id": "2", "State": "exited", "SizeRw": -1},
    ],
    "Volumes": [
        {"Name": "data", "UsageData": {"Size": 512 * 1024**2, "RefCount": 1}},
        {"Name": "unsized", "UsageData": {"Size": -1, "RefCount": 0}},
    ],
    "BuildCache": [{"ID": "x", "Size": GIB, "Shared": False}, {"ID": "y", "Size": GIB, "Shared": True}],
}


def test_counts_from_df() -> None:
    s = EngineUsage.from_df(DF)
    assert (s.containers, s.running, s.images, s.volumes, s.build_cache) == (2, 1, 3, 2, 2)
    assert s.disk_bytes == 2 * GIB + 512 * 1024**2 + 512 * 1024**2 + GIB  # -1 sizes count as 0


def test_text_lists_deleted_and_kept() -> None:
    text = summary_text(EngineUsage.from_df(DF))
    assert "  • 2 containers (1 running)" in text
    assert "  • 3 images" in text
    assert "  • 2 volumes" in text
    assert "  • 2 build cache entries" in text
    assert "  • 4.0 GiB of disk usage" in text
    assert KEPT in text


def test_singular_and_empty_engine() -> None:
    text = summary_text(EngineUsage.from_df({"Images": [{"Size": 10}], "Containers": [], "Volumes": None}))
    assert "  • 0 containers" in text and "  • 1 image\n" in text and "  • 0 volumes" in text


def test_engine_not_running() -> None:
    text = summary_text(None)
    assert UNAVAILABLE in text
    assert KEPT in text
