"""The shipped micro-world parts load through the ordinary config paths and behave (fast)."""

from __future__ import annotations

import json

import pytest
import torch

from npedit_core.config import load_config
from npedit_core.errors import CheckpointError
from npedit_core.judges.prompts import edit_questions
from npedit_core.microworld.editor import JUDGE_DIR, SETTINGS, TEACHER_DIR
from npedit_core.microworld.world import render_batch, sample_example
from npedit_core.models import build_backbone, build_judge

pytestmark = pytest.mark.skipif(not (TEACHER_DIR.is_dir() and JUDGE_DIR.is_dir()), reason="micro-world weights not shipped")


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, SETTINGS)


def test_teacher_is_a_flux2_klein_folder_with_taef2(cfg):
    backbone = build_backbone(cfg.model)
    images = render_batch([sample_example(i)[0] for i in range(4)])
    latents = backbone.encode_images(images)
    assert latents.shape == (4, 128, 4, 4)
    back = backbone.decode_latents(latents)
    psnr = 10 * torch.log10(1 / torch.mean((back - images) ** 2))
    assert psnr > 25, f"TAEF2 round trip {psnr:.1f} dB"
    a, b = backbone.encode_text(["make the red circle blue", "make the red circle green"]).embeds
    assert a.shape[0] == json.loads((TEACHER_DIR / "npedit_backbone.json").read_text())["max_sequence_length"]
    assert not torch.allclose(a, b)  # the colour word is inside max_sequence_length
    longest = max((sample_example(i)[1].target.caption() for i in range(500)), key=len)
    chat = backbone.tokenizer.apply_chat_template([{"role": "user", "content": longest}], tokenize=False,
                                                  add_generation_prompt=True)
    assert len(backbone.tokenizer(chat)["input_ids"]) <= backbone.max_sequence_length, "captions are truncated"


def test_judge_loads_and_passes_gradients_to_the_image(cfg):
    judge = build_judge(cfg.judge)
    scene, edit = sample_example(3)
    ref, out = render_batch([scene, edit.target])
    out = out.clone().requires_grad_(True)
    logits = judge.answer_logits(edit_questions(ref, out, edit.instruction, edit.edit_type, edit.object))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    (logits[:, 0] - logits[:, 1]).sum().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_backbone_options_file_is_checked(tmp_path):
    from npedit_core.backbones.flux2_klein import BACKBONE_OPTIONS_FILE, _backbone_options

    (tmp_path / BACKBONE_OPTIONS_FILE).write_text(json.dumps({"max_sequence_length": 8, "colour": 1}))
    with pytest.raises(CheckpointError, match="colour"):
        _backbone_options(tmp_path)
