"""Checkpoint-loading helpers shared by the backbone families (never downloads anything).

Every failure a user can cause (a wrong path, a truncated download, a file of another model) becomes a
`CheckpointError` whose message names the file and, for a key mismatch, lists some of the keys, so
the nodes and the CLI can show one line instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

#: How many key names a mismatch message lists per kind (missing / unexpected).
_KEYS_SHOWN = 8


def require_path(path: str | Path, what: str, kind: str = "any") -> Path:
    """Return `path` as a Path if it exists (as a file for kind="file", a folder for kind="dir").

    Raises `CheckpointError` naming `what` and the path otherwise.
    """
    if path is None or str(path).strip() == "":
        raise CheckpointError(f"{what}: no path given")
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{what}: {p} does not exist")
    if kind == "file" and not p.is_file():
        raise CheckpointError(f"{what}: {p} is not a file")
    if kind == "dir" and not p.is_dir():
        raise CheckpointError(f"{what}: {p} is not a folder")
    return p


def load_safetensors(path: str | Path, what: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a single-file safetensors state dict; missing, truncated or foreign files raise `CheckpointError`."""
    p = require_path(path, what, kind="file")
    if p.suffix.lower() == ".gguf":
        raise CheckpointError(f"{what}: {p} is a GGUF file; only .safetensors checkpoints are supported")
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device=str(device))
    except Exception as err:  # SafetensorError, OSError: the file is cut short or not safetensors at all
        raise CheckpointError(
            f"{what}: {p} is not a readable .safetensors file ({err}); the download may be incomplete"
        ) from err


def strip_prefix(state_dict: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Drop the first of `prefixes` that every key starting with it shares (e.g. ComfyUI's 'model.diffusion_model.')."""
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in state_dict):
            return {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict


def describe_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], limit: int = _KEYS_SHOWN) -> str:
    """'N missing keys (a, b, ...); M unexpected keys (c, ...)' for an error message."""
    parts = []
    for label, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
            parts.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''} ({shown})")
    return "; ".join(parts)


def load_state_dict_checked(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    what: str,
    allow_missing: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """`module.load_state_dict(state_dict)` that names the file on any key or shape mismatch.

    `allow_missing` lists keys that may be absent (e.g. a tied lm_head, a BatchNorm's
    num_batches_tracked); everything else must match exactly. With `assign=True` the tensors are
    adopted as they are (use it with modules built by `empty_weights`).
    """
    expected = module.state_dict()
    allowed = set(allow_missing)
    missing = [k for k in expected if k not in state_dict and k not in allowed]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{what}: {path} does not fit the model: {describe_key_mismatch(missing, unexpected)}")
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        shown = ", ".join(wrong[:_KEYS_SHOWN]) + (", ..." if len(wrong) > _KEYS_SHOWN else "")
        raise CheckpointError(f"{what}: {path} has {len(wrong)} tensors of the wrong shape (file vs model: {shown})")
    module.load_state_dict(state_dict, strict=False, assign=assign)


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with parameters on the meta device (no memory, no random init); buffers stay real.

    Load the real tensors afterwards with `load_state_dict_checked(..., assign=True)`. Buffers are
    kept on the CPU because some are computed, not stored (e.g. rotary `inv_freq`).
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def check_no_meta(module: nn.Module, path: str | Path, what: str) -> None:
    """After an `assign` load, every parameter and buffer must be real; name the ones the file did not provide."""
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: {path} does not fit the model: {describe_key_mismatch(left, [])}")
