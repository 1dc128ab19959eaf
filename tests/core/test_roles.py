"""Editor / fake score / teacher over one shared base (LoRA) and as separate copies."""

import pytest
import torch

from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.errors import NPEditError
from npedit_core.losses import fake_score_loss
from npedit_core.roles import SeparateRoles, SharedLoRARoles


@pytest.fixture(scope="module")
def inputs():
    bb = ZImageBackbone.tiny(seed=0)
    text = bb.encode_text(["a red cube"])
    ref = bb.encode_images(torch.rand(1, 3, 32, 32))
    return text, ref


def _nudge(params):
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("layout", ["lora", "separate"])
def test_roles_start_equal_then_diverge_only_where_trained(inputs, layout):
    text, ref = inputs
    bb = ZImageBackbone.tiny(seed=0)
    roles = SharedLoRARoles(bb, rank=4, alpha=4) if layout == "lora" else SeparateRoles(bb)
    x, t = torch.randn_like(ref), torch.tensor([0.7])
    teacher0 = roles.teacher(x, t, text)
    # Zero-initialised adapters / exact copies: the fake score starts as the teacher (DMD2's init).
    assert torch.allclose(roles.fake(x, t, text), teacher0, atol=1e-6)
    _nudge(roles.editor_parameters())
    assert torch.allclose(roles.teacher(x, t, text), teacher0, atol=1e-6)  # the teacher never moves
    assert torch.allclose(roles.fake(x, t, text), teacher0, atol=1e-6)  # editor weights are not the fake's
    _nudge(roles.fake_parameters())
    assert not torch.allclose(roles.fake(x, t, text), teacher0, atol=1e-4)
    assert torch.allclose(roles.teacher(x, t, text), teacher0, atol=1e-6)


def adapter_alone(roles, name):
    """A fresh base with only adapter `name` (same weights, same targets): the network that role must be."""
    from peft import LoraConfig

    backbone = ZImageBackbone.tiny(seed=0)
    backbone.transformer.requires_grad_(False)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=backbone.lora_target_modules())
    backbone.transformer.add_adapter(config, adapter_name=name)
    params = dict(backbone.transformer.named_parameters())
    state = roles.editor_state_dict() if name == "editor" else roles.fake_state_dict()
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)
            params[key].requires_grad_(True)
    return backbone, {k: params[k] for k in state}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_lora_gradients_equal_those_of_each_adapter_alone(inputs, checkpointing):
    """Each role's gradients, with the other adapter present and switched around it, equal that adapter's alone.

    Checkpointing is switched on the way the trainer once did, on the bare transformer before the roles
    are made; its backward then recomputed the fake score's blocks with the editor's adapter.
    """
    text, ref = inputs
    backbone = ZImageBackbone.tiny(seed=0)
    if checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    roles = SharedLoRARoles(backbone, rank=4, alpha=4)
    _nudge(roles.editor_parameters() + roles.fake_parameters())  # B != 0 so every LoRA factor gets gradient
    x, t = torch.randn_like(ref), torch.tensor([0.6])

    # Fake-score update: gradients on every fake weight, none on the editor or the base.
    loss, _ = fake_score_loss(roles.fake, ref, text, generator=torch.Generator().manual_seed(0))
    loss.backward()
    alone, params = adapter_alone(roles, "fake")
    fake_score_loss(lambda *a: alone.velocity(*a, None), ref, text, generator=torch.Generator().manual_seed(0))[0].backward()
    fake = roles._adapter_params("fake")
    for key, p in params.items():
        torch.testing.assert_close(fake[key].grad, p.grad, rtol=1e-5, atol=1e-8, msg=lambda m: f"fake {key}: {m}")
    assert all(p.grad is None for p in roles.editor_parameters())
    base = [p for n, p in roles.backbone.transformer.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in base)

    # Editor pass followed by teacher and fake passes (as in a DMD step): gradients stay the editor's.
    for p in roles.fake_parameters():
        p.grad = None
    v = roles.editor(x, t, text, ref)
    with torch.no_grad():
        roles.teacher(ref, torch.tensor([0.5]), text)
        roles.fake(ref, torch.tensor([0.5]), text)
    v.square().mean().backward()
    alone, params = adapter_alone(roles, "editor")
    alone.velocity(x, t, text, ref).square().mean().backward()
    editor = roles._adapter_params("editor")
    for key, p in params.items():
        torch.testing.assert_close(editor[key].grad, p.grad, rtol=1e-5, atol=1e-8, msg=lambda m: f"editor {key}: {m}")
    assert all(p.grad is None for p in roles.fake_parameters())


def test_state_round_trip_and_mismatch_error(inputs):
    roles = SharedLoRARoles(ZImageBackbone.tiny(seed=0), rank=4, alpha=4)
    _nudge(roles.editor_parameters())
    editor, fake = roles.editor_state_dict(), roles.fake_state_dict()
    other = SharedLoRARoles(ZImageBackbone.tiny(seed=0), rank=4, alpha=4)
    other.load_state(editor, fake)
    assert all(torch.equal(a, b) for a, b in zip(other.editor_parameters(), roles.editor_parameters()))
    wrong_rank = SharedLoRARoles(ZImageBackbone.tiny(seed=0), rank=2, alpha=2)
    with pytest.raises(NPEditError, match=r"editor adapter state does not fit: .*lora_A.* is \(4, .*another LoRA rank"):
        wrong_rank.load_state(editor, fake)
