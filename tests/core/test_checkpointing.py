"""Gradient checkpointing changes memory, never gradients: every role, backbone, layout, with accumulation.

Two trainers are built from the same seed, one with `train.gradient_checkpointing=true` (the shipped
default) and one without; each runs the trainer's own update (micro-batches, accumulation, all-reduce)
on the same batches and noise, and the gradients handed to the optimiser must agree.
"""

import random

import pytest
import torch

from npedit_core.trainer import Trainer
from tests.core.test_trainer import config, manifest, quiet  # noqa: F401  (manifest is a fixture)


class Recorder:
    """Stands in for the optimiser: keeps the gradients `Trainer.update` would step with."""

    def __init__(self, params):
        self.params, self.grads = params, None

    def step(self):
        self.grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def gradients(trainer: Trainer, role: str, accum: int) -> list[torch.Tensor]:
    """The gradients of one `update` of `role`, from a fixed data position and fixed random streams."""
    trainer.cfg.train.grad_accum = accum
    params = trainer.editor_params if role == "editor" else trainer.fake_params
    loss_fn = trainer.editor_losses if role == "editor" else trainer.fake_loss
    position = trainer.sampler.state_dict()
    torch.manual_seed(11)
    random.seed(11)
    recorder = Recorder(params)
    logs = trainer.update(recorder, params, loss_fn, "")
    assert "skipped" not in logs
    trainer.sampler.load_state_dict(position)
    return recorder.grads


def build(tmp_path, manifest, backbone, layout, checkpointing):  # noqa: F811
    trainer = Trainer(config(
        tmp_path / f"{backbone}-{layout}-{checkpointing}", manifest, f"model.backbone={backbone}",
        f"lora.enabled={layout == 'lora'}", f"train.gradient_checkpointing={checkpointing}", "optim.grad_clip=1e9",
        "loss.do_nothing_prob=0.3",
    ), log=quiet)
    # LoRA starts with B = 0, where A gets no gradient at all: move every trainable weight off its init.
    torch.manual_seed(3)
    with torch.no_grad():
        for p in trainer.editor_params + trainer.fake_params:
            p.add_(0.02 * torch.randn_like(p))
    return trainer


@pytest.mark.parametrize("layout", ["lora", "full"])
@pytest.mark.parametrize("backbone", ["flux2_klein", "z_image"])
def test_gradients_are_equal_with_checkpointing_on_and_off(tmp_path, manifest, backbone, layout):  # noqa: F811
    off = build(tmp_path, manifest, backbone, layout, "false")
    on = build(tmp_path, manifest, backbone, layout, "true")
    assert on.backbone.transformer.is_gradient_checkpointing and not off.backbone.transformer.is_gradient_checkpointing
    if layout == "full":
        assert all(t.is_gradient_checkpointing for t in on.roles.transformers())
    assert on.judge.model.training  # HF models checkpoint only in train() mode
    for role in ("editor", "fake"):
        for accum in (1, 2):
            expected, got = gradients(off, role, accum), gradients(on, role, accum)
            assert sum(g.abs().sum() for g in expected) > 0, (role, accum)
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7, msg=lambda m: f"{role}, accum {accum}: {m}")
