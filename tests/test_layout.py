"""The design's boundaries: the core never imports ComfyUI or the CLI; the root package only registers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BLOCK_AND_IMPORT_ALL = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {"comfy", "comfy_api", "folder_paths", "nodes", "server", "train_cli", "comfy_extras"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"npedit_core must not import {name}")
        return None

sys.meta_path.insert(0, Block())
import npedit_core
names = [m.name for m in pkgutil.walk_packages(npedit_core.__path__, "npedit_core.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_core_imports_without_comfyui_or_cli():
    out = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT_ALL], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip().splitlines()[-1]) >= 8  # every core module was imported


def test_core_sources_name_no_comfyui_module():
    for path in (ROOT / "npedit_core").rglob("*.py"):
        text = path.read_text()
        for name in ("import comfy", "from comfy", "import folder_paths", "from train_cli", "import train_cli"):
            assert name not in text, f"{path.relative_to(ROOT)} contains {name!r}"
