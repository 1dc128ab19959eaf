"""The micro-world's teacher decodes with the real TAEF2, which lives in ../shared (never committed)."""

import pytest

from npedit_core.assets import taef2_dir


def pytest_collection_modifyitems(config, items):
    if (taef2_dir() / "taef2_decoder.pth").is_file():
        return
    skip = pytest.mark.skip(reason=f"TAEF2 weights not found at {taef2_dir()} (the micro-world teacher's VAE)")
    for item in items:
        if "microworld" in str(item.fspath) and "test_world" not in str(item.fspath):
            item.add_marker(skip)
