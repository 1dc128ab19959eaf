"""Gradient checkpointing that recomputes a block with the LoRA adapters that ran its forward (style rule 11).

Checkpointing keeps no activations of a block: backward runs the block's forward again. With one base
transformer serving several roles (roles.SharedLoRARoles: adapter "editor", adapter "fake", adapters
off for the teacher), the adapter that is active when backward runs is not necessarily the one that
ran the forward. The fake-score update is the case that bit: its forward runs with "fake", the role
switches back to "editor", then backward recomputes every block with the editor's adapter, so the
fake score was trained on gradients of the wrong network (cosine 0.18 against the exact ones on the
tiny FLUX.2 klein; tests/core/test_checkpointing.py).

`checkpoint_block` snapshots, at forward time, which adapter each LoRA layer of the block runs (and
whether adapters are disabled) and puts exactly that state back around the recomputation, then
restores whatever is active at that moment. The state is peft's per-layer `_active_adapter` and
`_disable_adapters`, written directly: peft's `set_adapter` would also flip `requires_grad` of the
adapter weights, and autograd drops the gradient of a leaf that no longer requires grad by the time
backward reaches it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from torch import nn
from torch.utils.checkpoint import checkpoint


def _adapter_layers(block: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in block.modules() if isinstance(m, BaseTunerLayer)]


def _snapshot(layers: list[nn.Module]) -> list[tuple]:
    return [(layer, layer._active_adapter, layer._disable_adapters) for layer in layers]


def _restore(state: list[tuple]) -> None:
    for layer, active, disabled in state:
        layer._active_adapter, layer._disable_adapters = active, disabled


@contextmanager
def _adapters_as(state: list[tuple]):
    """Run the body with each layer's adapter state as in `state`, then put back the current one."""
    current = _snapshot([layer for layer, _, _ in state])
    try:
        _restore(state)
        yield
    finally:
        _restore(current)


@contextmanager
def adapters_restored(module: nn.Module):
    """Run the body (which may switch adapters), then put every LoRA layer of `module` back as it was."""
    state = _snapshot(_adapter_layers(module))
    try:
        yield
    finally:
        _restore(state)


def checkpoint_block(block: nn.Module, *args):
    """diffusers' `_gradient_checkpointing_func(block, *args)`: non-reentrant checkpoint, adapters replayed."""
    state = _snapshot(_adapter_layers(block))
    if not state:  # no LoRA in this block (full fine-tunes): plain non-reentrant checkpointing
        return checkpoint(block.__call__, *args, use_reentrant=False)
    # context_fn: (context of the first forward, context of the recomputation in backward).
    return checkpoint(block.__call__, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), _adapters_as(state)))


def set_gradient_checkpointing(transformer: nn.Module, enabled: bool) -> None:
    """Turn checkpointing of a diffusers transformer's blocks on (with `checkpoint_block`) or off."""
    if not getattr(transformer, "_supports_gradient_checkpointing", False):
        if enabled:
            raise ValueError(f"{type(transformer).__name__} does not support gradient checkpointing")
        return
    if enabled:
        transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_block)
    else:
        transformer.disable_gradient_checkpointing()

