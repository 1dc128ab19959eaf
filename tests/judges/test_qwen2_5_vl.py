"""Qwen2.5-VL judge: preprocessing against the HF Pil processor, prompts and logits against Qwen2_5_VLProcessor."""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.judges import qwen_checks
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.judges.base import Question
from npedit_core.judges.prompts import edit_questions
from npedit_core.judges.qwen2_5_vl import SPEC, Qwen25VLJudge, preprocess

PIL = pytest.importorskip("PIL.Image")

# The real Qwen2.5-VL-Instruct chat template (chat_template.json), as HF renders it.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def judge(qwen_tokenizer_path):
    return Qwen25VLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)


def quantised(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, so our float image and the uint8 one given to HF are the same picture."""
    return (x * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, the form the HF processor converts everything to."""
    return (x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def hf_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil()  # the class defaults are Qwen2.5-VL's (patch 14, CLIP mean/std)


def hf_inputs(tokenizer, question: Question) -> dict:
    """The same question the HF way: the real chat template, Qwen2_5_VLProcessor and its Pil image processor."""
    from transformers import Qwen2_5_VLProcessor

    class PilProcessor(Qwen2_5_VLProcessor):
        # Without torchvision the video processor cannot be built; images need none.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    proc = PilProcessor(hf_image_processor(), tokenizer, chat_template=CHAT_TEMPLATE)
    content = [{"type": "image"}] * len(question.images) + [{"type": "text", "text": question.text}]
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    return proc(images=[to_uint8(x) for x in question.images], text=[text], return_tensors="pt")


# --- preprocessing ---------------------------------------------------------------------------------
def test_spec_is_the_pil_processor_default():
    ip = hf_image_processor()
    assert (SPEC.patch_size, SPEC.merge_size, SPEC.temporal_patch_size) == (
        ip.patch_size, ip.merge_size, ip.temporal_patch_size
    )
    assert (SPEC.min_pixels, SPEC.max_pixels) == (ip.size.shortest_edge, ip.size.longest_edge)
    assert np.allclose(SPEC.mean, ip.image_mean) and np.allclose(SPEC.std, ip.image_std)


def test_spec_reads_a_checkpoint_preprocessor_config(tmp_path):
    # Qwen2.5-VL-7B-Instruct's preprocessor_config.json: only max_pixels differs from the class default.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }))
    assert SPEC.updated_from(tmp_path) == replace(SPEC, max_pixels=12845056)
    assert SPEC.updated_from(tmp_path / "missing") == SPEC


@pytest.mark.parametrize("name,crop", [("astronaut", (448, 448)), ("coffee", (224, 448))])
def test_preprocess_is_exact_without_resize(photos, name, crop):
    image = quantised(photos(name)[:, :, : crop[0], : crop[1]])
    ours = preprocess(image)
    ref = hf_image_processor()(images=[to_uint8(image[0])], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])  # rocket: Pillow 13 resizes it vertically first
def test_preprocess_within_two_levels_with_resize(photos, name):
    image = quantised(photos(name))
    ours = preprocess(image)
    ref = hf_image_processor()(images=[to_uint8(image[0])], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert tuple(image.shape[-2:]) != tuple(int(g) * 14 for g in ref["image_grid_thw"][0, 1:])  # a resize happened
    # Back to pixel units: each row is (C=3, T=2, 14, 14) flattened, channel-major.
    std = torch.tensor(SPEC.std).repeat_interleave(2 * 14 * 14)
    diff = ((ours["pixel_values"] - ref["pixel_values"]) * std).abs()
    assert diff.max() <= 2 / 255
    assert diff.mean() <= 0.5 / 255


def test_preprocess_is_differentiable(photos):
    image = photos("chelsea").requires_grad_(True)
    out = preprocess(image)
    out["pixel_values"].square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0 and torch.isfinite(image.grad).all()


def test_preprocess_keeps_no_reference_to_its_inputs():
    """Nothing is cached per call: a training loop must not keep every step's images and graphs alive."""
    image = torch.rand(1, 3, 56, 56, requires_grad=True)
    out = preprocess(image * 1.0)
    alive = weakref.ref(out["pixel_values"])
    del out
    gc.collect()
    assert alive() is None


def test_preprocess_rejects_wrong_shape():
    with pytest.raises(NPEditError, match="B, 3, H, W"):
        preprocess(torch.rand(3, 64, 64))


# --- the judge ---------------------------------------------------------------------------------------
def test_yes_no_are_the_real_token_ids(judge):
    assert (judge.yes_id, judge.no_id) == (9454, 2753)
    assert judge.family == "qwen2_5_vl"


def test_prompt_layout_is_the_real_template(judge):
    for n in (1, 2):
        ours = judge.render_prompt("Is it red? Answer Yes or No.", n)
        content = [{"type": "image"}] * n + [{"type": "text", "text": "Is it red? Answer Yes or No."}]
        ref = judge.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=CHAT_TEMPLATE,
            add_generation_prompt=True, tokenize=False,
        )
        assert ours == ref
        assert ours.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def _questions(photos, resized: bool) -> list[Question]:
    if resized:  # sides that need a resize: chelsea 300x451, coffee 400x600
        a, b, c = photos("chelsea")[0], photos("coffee")[0], photos("rocket")[0]
    else:  # sides that are multiples of 28 (and of 224): no resize
        a = photos("astronaut")[0, :, :448, :448]
        b, c = photos("coffee")[0, :, :224, :448], photos("chelsea")[0, :, :224, :224]
    a, b, c = (quantised(x) for x in (a, b, c))
    return [
        Question("The first image is the original, the second the edit. Was the sky made red? Answer Yes or No.",
                 [a, b]),
        Question("Does this image contain a cat? Answer Yes or No.", [c], desired="No"),
    ]


@pytest.mark.parametrize("resized,tol", [(False, 1e-4), (True, 2e-3)])
def test_logits_match_the_model_on_its_own_processor_output(judge, photos, resized, tol):
    qwen_checks.logits_match_processor(judge, _questions(photos, resized), hf_inputs, tol)


def test_gradients_reach_images_not_the_judge(judge, photos):
    qwen_checks.gradients_reach_images_not_the_judge(
        judge, photos("astronaut")[0, :, :224, :224], photos("coffee")[0, :, :224, :336]
    )


def test_removal_and_two_image_questions_batch_like_alone(judge, photos):
    qwen_checks.removal_and_two_image_questions_batch_like_alone(
        judge, photos("astronaut")[0, :, :224, :280], photos("rocket")[0, :, :252, :196]
    )


def test_build_inputs_rejects_bad_questions(judge):
    with pytest.raises(NPEditError, match="no questions"):
        judge.build_inputs([])
    with pytest.raises(NPEditError, match="question 0: no images"):
        judge.build_inputs([Question("Is it?", [])])
    with pytest.raises(NPEditError, match=r"question 0 image 1.*\(3, H, W\)"):
        judge.build_inputs([Question("Is it?", [torch.rand(3, 56, 56), torch.rand(1, 3, 56, 56)])])


# --- loading -------------------------------------------------------------------------------------------
def test_from_pretrained_round_trip(judge, tmp_path, photos):
    judge.model.save_pretrained(tmp_path)
    judge.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 12845056}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    loaded = Qwen25VLJudge.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert loaded.spec.max_pixels == 12845056 and loaded.spec.patch_size == 14
    assert loaded.chat_template == CHAT_TEMPLATE
    questions = _questions(photos, resized=False)[1:]
    with torch.no_grad():
        assert torch.allclose(loaded.answer_logits(questions), judge.answer_logits(questions), atol=1e-5)


def test_missing_or_wrong_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "no-such-judge"
    with pytest.raises(CheckpointError, match="no-such-judge"):
        Qwen25VLJudge.from_pretrained(str(missing))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    with pytest.raises(CheckpointError, match="'qwen3_vl' model, expected 'qwen2_5_vl'"):
        Qwen25VLJudge.from_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        Qwen25VLJudge.tiny(tokenizer_path=str(missing))
