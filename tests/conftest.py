"""Shared fixtures: the real offline assets (skipped, never failed, when absent) and real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npedit_core.assets import qwen_tokenizer_dir, taef2_dir


@pytest.fixture(scope="session")
def qwen_tokenizer_path() -> str:
    path = qwen_tokenizer_dir()
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"real Qwen tokenizer not found at {path}")
    return str(path)


@pytest.fixture(scope="session")
def taef2_path() -> str:
    path = taef2_dir()
    if not (path / "taef2_decoder.pth").is_file():
        pytest.skip(f"TAEF2 weights not found at {path}")
    return str(path)


def photo(name: str) -> torch.Tensor:
    """A real scikit-image photo as a float (1, 3, H, W) tensor in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    arr = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return torch.from_numpy(arr[..., :3]).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="session")
def photos():
    return photo


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, qwen_tokenizer_path):
    """A ComfyUI-style models folder of tiny random models (tests/tiny_models.py): (path, names shown by the loaders)."""
    from tests.tiny_models import write_models

    root = tmp_path_factory.mktemp("comfyui") / "models"
    return root, write_models(root)
