"""FSDP2 sharding of full fine-tunes (`lora.enabled=false`, `train.fsdp=true`, several processes).

Each transformer block becomes a `fully_shard` unit: every rank keeps 1/world of the blocks' weights,
gradients and AdamW state, and gathers a block's weights only while running it; FSDP reduce-scatters
their gradients itself. The transformer's root (embedders, final layer: a few percent of the weights)
stays replicated and is averaged by the trainer's all-reduce, because some backbones (Z-Image's
reference path) call the root's submodules directly rather than through its forward, which would
skip a root unit's gather hooks.
Checkpoints hold full (unsharded) state dicts, gathered collectively: every rank must call these
functions together, in the same order.
"""

from __future__ import annotations

import torch
from torch import nn


def shard_transformer(transformer: nn.Module) -> nn.Module:
    """Shard each block of the transformer's own block lists (in place); the root stays replicated.

    Only ModuleLists that are direct children (FLUX.2's transformer_blocks / single_transformer_blocks,
    Z-Image's layers / noise_refiner / context_refiner): nested lists such as an attention's
    `to_out` = [Linear, Dropout] live inside a block's unit already.
    """
    from torch.distributed.fsdp import fully_shard

    for child in transformer.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                if any(True for _ in block.parameters()):
                    fully_shard(block)
    return transformer


def is_sharded(param: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(param, DTensor)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU, on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_options(cpu_offload=False))
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights into a sharded module (a collective; every rank passes the same dict)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options())


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=False))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options())


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` over a mix of sharded (DTensor) and replicated gradients.

    The total norm is sqrt(sum of squared per-tensor norms); a sharded tensor's norm is reduced across
    ranks (full_tensor) so every rank sees the same total and scales its gradients alike.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.zeros((), dtype=torch.float32)
    for grad in grads:
        norm = grad.detach().float().norm()
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        squares = squares + norm.cpu() ** 2
    total = squares.sqrt()
    coef = min(1.0, max_norm / (total.item() + 1e-6))
    if coef < 1.0:
        for grad in grads:
            grad.mul_(coef)
    return total
