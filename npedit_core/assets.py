"""Where the offline test assets live (the project never commits copies of them).

`NPEDIT_SHARED` names the shared folder; by default it is `../shared` beside the project root.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path:
    env = os.environ.get("NPEDIT_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def qwen_tokenizer_dir() -> Path:
    """The real Qwen2/2.5/3(-VL) tokenizer folder (loads with AutoTokenizer.from_pretrained)."""
    return shared_dir() / "fixtures" / "qwen-tokenizer"


def taef2_dir() -> Path:
    """The real TAEF2 encoder/decoder state dicts."""
    return shared_dir() / "weights" / "taef2"
