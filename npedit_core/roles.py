"""The three transformers NP-Edit needs: editor, fake score, teacher (method.md 2.1-2.3).

Two layouts behind one interface:
- `SharedLoRARoles` (one GPU): ONE frozen base transformer; the editor is LoRA adapter "editor", the
  fake score is LoRA adapter "fake", the teacher is the base with adapters disabled. Both adapters
  start at zero, so the fake score starts equal to the teacher (as DMD2 initialises it).
- `SeparateRoles` (full fine-tune, several GPUs): three copies; the editor and the fake score train
  every weight, the teacher stays frozen.
Each role is a velocity callable in the backbone's convention (v = eps - x0, t = 1 noise).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from .backbones.base import Backbone, TextEmbeds
from .checkpointing import set_gradient_checkpointing
from .errors import NPEditError

EDITOR, FAKE = "editor", "fake"


class Roles:
    """Editor, fake score and teacher as velocity functions over one backbone's encoders."""

    backbone: Backbone

    def editor(self, x_t, t, text: TextEmbeds, reference: torch.Tensor | None):
        raise NotImplementedError

    def fake(self, x_t, t, text: TextEmbeds):
        raise NotImplementedError

    def teacher(self, x_t, t, text: TextEmbeds):
        raise NotImplementedError

    def editor_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def fake_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def editor_state_dict(self) -> dict[str, torch.Tensor]:
        """The editor's trainable weights (LoRA factors or the full transformer), for checkpoints and export."""
        raise NotImplementedError

    def fake_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state(self, editor: dict, fake: dict) -> None:
        raise NotImplementedError

    def editor_backbone(self) -> Backbone:
        """A Backbone whose velocity is the editor's (for the sampler and the unroll)."""
        return _VelocityBackbone(self.backbone, self.editor)

    def transformers(self) -> list[nn.Module]:
        """Every transformer the roles run (one shared base, or editor, fake score and teacher)."""
        return [self.backbone.transformer]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Checkpoint every role's blocks; a recomputation runs with the adapter of its forward (checkpointing.py)."""
        for transformer in self.transformers():
            set_gradient_checkpointing(transformer, enabled)


class SharedLoRARoles(Roles):
    def __init__(self, backbone: Backbone, rank: int = 32, alpha: float = 32.0, dropout: float = 0.0):
        from peft import LoraConfig

        self.backbone = backbone
        transformer = backbone.transformer
        transformer.requires_grad_(False)
        targets = backbone.lora_target_modules()
        with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the design
            warnings.simplefilter("ignore", UserWarning)
            for name in (EDITOR, FAKE):
                config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
                transformer.add_adapter(config, adapter_name=name)
        self._switch(EDITOR)
        if getattr(transformer, "is_gradient_checkpointing", False):  # switched on before the roles existed:
            self.set_gradient_checkpointing(True)  # re-install it with the adapter replay (checkpointing.py)

    def _switch(self, name: str | None) -> None:
        """Make adapter `name` the active one (None: the bare base, i.e. the teacher).

        TRAP: the switch back to "editor" happens right after a role's forward, BEFORE its backward.
        Under gradient checkpointing the backward recomputes each block, so the blocks must recompute
        with the adapter of their forward: `Roles.set_gradient_checkpointing` installs
        checkpointing.checkpoint_block, which replays it. Enable checkpointing through it, never with
        the transformer's own `enable_gradient_checkpointing()`.

        peft's set_adapter/disable_adapters also flip requires_grad of the adapters' weights, and
        autograd drops gradients of leaves that no longer require grad when backward runs. So both
        adapters are made trainable again after every switch: an inactive adapter is not in the
        forward pass, so it still gets no gradient from it.
        """
        transformer = self.backbone.transformer
        if name is None:
            transformer.disable_adapters()
        else:
            transformer.enable_adapters()
            transformer.set_adapter(name)
        for param in self.editor_parameters() + self.fake_parameters():
            param.requires_grad_(True)

    @contextmanager
    def _role(self, name: str | None):
        self._switch(name)
        try:
            yield
        finally:
            self._switch(EDITOR)

    def editor(self, x_t, t, text, reference):
        return self.backbone.velocity(x_t, t, text, reference)

    def fake(self, x_t, t, text):
        with self._role(FAKE):
            return self.backbone.velocity(x_t, t, text, None)

    def teacher(self, x_t, t, text):
        with self._role(None):
            return self.backbone.velocity(x_t, t, text, None)

    def _adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.backbone.transformer.named_parameters() if f".{name}." in n}

    def editor_parameters(self):
        return list(self._adapter_params(EDITOR).values())

    def fake_parameters(self):
        return list(self._adapter_params(FAKE).values())

    def editor_state_dict(self):
        return {n: p.detach().clone() for n, p in self._adapter_params(EDITOR).items()}

    def fake_state_dict(self):
        return {n: p.detach().clone() for n, p in self._adapter_params(FAKE).items()}

    def load_state(self, editor, fake):
        for name, state in ((EDITOR, editor), (FAKE, fake)):
            params = self._adapter_params(name)
            if set(params) != set(state):
                missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
                raise NPEditError(f"{name} adapter state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
            for n, p in params.items():
                if p.shape != state[n].shape:
                    raise NPEditError(f"{name} adapter state does not fit: {n} is {tuple(state[n].shape)}, "
                                      f"the model has {tuple(p.shape)} (another LoRA rank?)")
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(state[n])


class SeparateRoles(Roles):
    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.editor_transformer = backbone.transformer
        self.editor_transformer.requires_grad_(True)
        self.teacher_transformer = copy.deepcopy(self.editor_transformer).requires_grad_(False)
        self.fake_transformer = copy.deepcopy(self.editor_transformer).requires_grad_(True)
        self._teacher = with_transformer(backbone, self.teacher_transformer)
        self._fake = with_transformer(backbone, self.fake_transformer)
        self.sharded = False

    def shard(self) -> None:
        """FSDP2-shard the three transformers across the process group (see fsdp.py)."""
        from .fsdp import shard_transformer

        for module in (self.editor_transformer, self.fake_transformer, self.teacher_transformer):
            shard_transformer(module)
        self.sharded = True

    def _state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        if self.sharded:
            from .fsdp import full_state_dict

            return full_state_dict(module)  # collective: every rank calls it
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def transformers(self):
        return [self.editor_transformer, self.fake_transformer, self.teacher_transformer]

    def editor(self, x_t, t, text, reference):
        return self.backbone.velocity(x_t, t, text, reference)

    def fake(self, x_t, t, text):
        return self._fake.velocity(x_t, t, text, None)

    def teacher(self, x_t, t, text):
        return self._teacher.velocity(x_t, t, text, None)

    def editor_parameters(self):
        return list(self.editor_transformer.parameters())

    def fake_parameters(self):
        return list(self.fake_transformer.parameters())

    def editor_state_dict(self):
        return self._state(self.editor_transformer)

    def fake_state_dict(self):
        return self._state(self.fake_transformer)

    def load_state(self, editor, fake):
        for module, state, name in ((self.editor_transformer, editor, EDITOR), (self.fake_transformer, fake, FAKE)):
            expected = set(module.state_dict())  # FSDP2 keeps the names (the values become DTensors)
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise NPEditError(f"{name} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
            if self.sharded:
                from .fsdp import load_full_state_dict

                load_full_state_dict(module, state)  # collective
            else:
                module.load_state_dict(state)


def make_roles(backbone: Backbone, lora: bool = True, rank: int = 32, alpha: float = 32.0, dropout: float = 0.0) -> Roles:
    return SharedLoRARoles(backbone, rank, alpha, dropout) if lora else SeparateRoles(backbone)


def with_transformer(backbone: Backbone, transformer: nn.Module) -> Backbone:
    """A shallow copy of `backbone` that shares its encoders but runs `transformer`."""
    clone = copy.copy(backbone)
    clone._modules = dict(backbone._modules)
    clone._modules["transformer"] = transformer
    return clone


class _VelocityBackbone:
    """Presents a role's velocity through the Backbone interface the sampler uses."""

    def __init__(self, backbone: Backbone, velocity):
        self._backbone, self._velocity = backbone, velocity

    def velocity(self, x_t, t, text, reference=None):
        return self._velocity(x_t, t, text, reference)

    def __getattr__(self, name):
        return getattr(self._backbone, name)
