"""Judge gradients reach the editor through unroll -> decode -> judge preprocessing -> judge.

Every backbone x judge pair, tiny random models of the real classes. The judge gets no gradient.
"""

from functools import lru_cache

import pytest
import torch

from npedit_core.backbones import backbone_class
from npedit_core.judges import judge_class
from npedit_core.objective import judge_loss
from npedit_core.sampler import edit_schedule, unroll


@lru_cache(maxsize=None)
def judge(family):
    return judge_class(family).tiny(seed=0)


@pytest.mark.parametrize("backbone_family", ["flux2_klein", "z_image"])
@pytest.mark.parametrize("judge_family", ["qwen2_5_vl", "qwen3_vl", "internvl"])
def test_judge_loss_reaches_every_editor_parameter(backbone_family, judge_family):
    torch.manual_seed(0)
    backbone = backbone_class(backbone_family).tiny(seed=0)
    backbone.freeze_frozen_parts()
    backbone.transformer.requires_grad_(True)
    vlm = judge(judge_family)
    images = torch.rand(2, 3, 32, 48)
    reference = backbone.encode_images(images)
    text = backbone.encode_text(["make the ball red", "remove the cup"])
    x0 = unroll(backbone, torch.randn_like(reference), text, reference, edit_schedule(4, 6.0), k=2)
    edited = backbone.decode_latents(x0)
    loss, logs = judge_loss(vlm, images, edited, ["make the ball red", "remove the cup"], ["color", "remove"], [None, "cup"])
    loss.backward()

    no_grad = [n for n, p in backbone.transformer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"editor parameters without gradient: {no_grad}"
    assert all(p.grad is None for p in vlm.parameters())
    assert all(p.grad is None for p in backbone.vae.parameters())
    assert 0 < logs["p_yes_edit"] < 1 and 0 < logs["p_yes_identity"] < 1
