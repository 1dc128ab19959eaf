"""Qwen3-VL judge: preprocessing against the HF Pil processor, prompts and logits against Qwen3VLProcessor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.judges import qwen_checks
from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.judges.base import Question
from npedit_core.judges.prompts import edit_questions
from npedit_core.judges.qwen3_vl import SPEC, Qwen3VLJudge, preprocess

PIL = pytest.importorskip("PIL.Image")

# The real Qwen3-VL-Instruct chat template, reduced to what a judge prompt uses: the system and
# user turns (string or image/text content) and the generation prompt. The tool, assistant and
# video branches of the original are left out; the kept lines are verbatim.
CHAT_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].content is string %}
        {{- messages[0].content }}
    {%- else %}
        {%- for content in messages[0].content %}
            {%- if 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen3-VL-8B-Instruct's preprocessor_config.json (it names the Qwen2-VL image processor).
PREPROCESSOR_CONFIG = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
}


@pytest.fixture(scope="module")
def judge(qwen_tokenizer_path):
    return Qwen3VLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)


def quantised(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, so our float image and the uint8 one given to HF are the same picture."""
    return (x * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, the form the HF processor converts everything to."""
    return (x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def hf_image_processor():
    """The Pil variant of the processor Qwen3-VL checkpoints name, with their settings."""
    from transformers import Qwen2VLImageProcessorPil

    cfg = PREPROCESSOR_CONFIG
    return Qwen2VLImageProcessorPil(
        size=cfg["size"], patch_size=cfg["patch_size"], temporal_patch_size=cfg["temporal_patch_size"],
        merge_size=cfg["merge_size"], image_mean=cfg["image_mean"], image_std=cfg["image_std"],
    )


def hf_inputs(tokenizer, question: Question) -> dict:
    """The same question the HF way: the real chat template, Qwen3VLProcessor and its Pil image processor."""
    from transformers import Qwen3VLProcessor

    class PilProcessor(Qwen3VLProcessor):
        # Without torchvision the video processor cannot be built; images need none.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    proc = PilProcessor(hf_image_processor(), tokenizer, chat_template=CHAT_TEMPLATE)
    content = [{"type": "image"}] * len(question.images) + [{"type": "text", "text": question.text}]
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    return proc(images=[to_uint8(x) for x in question.images], text=[text], return_tensors="pt")


# --- preprocessing ---------------------------------------------------------------------------------
def test_spec_is_the_checkpoint_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    assert SPEC.updated_from(tmp_path) == SPEC
    assert SPEC.factor == 32


@pytest.mark.parametrize("name,crop", [("astronaut", (448, 448)), ("coffee", (224, 448))])
def test_preprocess_is_exact_without_resize(photos, name, crop):
    image = quantised(photos(name)[:, :, : crop[0], : crop[1]])
    ours = preprocess(image)
    ref = hf_image_processor()(images=[to_uint8(image[0])], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape == (crop[0] * crop[1] // 256, 3 * 2 * 16 * 16)
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-6


@pytest.mark.parametrize(
    "name,crop", [("chelsea", None), ("coffee", None), ("rocket", None), ("astronaut", (200, 200))]
)
def test_preprocess_within_two_levels_with_resize(photos, name, crop):
    image = photos(name)
    if crop:  # 200x200 is below min_pixels (256^2): the processor scales it up
        image = image[:, :, : crop[0], : crop[1]]
    image = quantised(image)
    ours = preprocess(image)
    ref = hf_image_processor()(images=[to_uint8(image[0])], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert tuple(image.shape[-2:]) != tuple(int(g) * 16 for g in ref["image_grid_thw"][0, 1:])  # a resize happened
    diff = ((ours["pixel_values"] - ref["pixel_values"]) * 0.5).abs()  # std 0.5: back to pixel units
    assert diff.max() <= 2 / 255
    assert diff.mean() <= 0.5 / 255


def test_preprocess_is_differentiable(photos):
    image = photos("coffee").requires_grad_(True)
    preprocess(image)["pixel_values"].square().sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0 and torch.isfinite(image.grad).all()


def test_preprocess_rejects_extreme_aspect_ratio():
    with pytest.raises(NPEditError, match="aspect ratio"):
        preprocess(torch.rand(1, 3, 2, 500))


# --- the judge ---------------------------------------------------------------------------------------
def test_yes_no_are_the_real_token_ids(judge):
    assert (judge.yes_id, judge.no_id) == (9454, 2753)
    assert judge.family == "qwen3_vl"


def test_prompt_layout_is_the_real_template(judge):
    for n in (1, 2):
        ours = judge.render_prompt("Is it red? Answer Yes or No.", n)
        content = [{"type": "image"}] * n + [{"type": "text", "text": "Is it red? Answer Yes or No."}]
        ref = judge.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=CHAT_TEMPLATE,
            add_generation_prompt=True, tokenize=False,
        )
        assert ours == ref
        assert ours.startswith("<|im_start|>user\n<|vision_start|>")  # Qwen3-VL adds no system turn


def _questions(photos, resized: bool) -> list[Question]:
    if resized:  # sides that need a resize: chelsea 300x451, coffee 400x600, rocket 427x640
        a, b, c = photos("chelsea")[0], photos("coffee")[0], photos("rocket")[0]
    else:  # multiples of 32 with at least 256^2 pixels: no resize
        a = photos("astronaut")[0, :, :448, :448]
        b, c = photos("coffee")[0, :, :224, :448], photos("chelsea")[0, :, :256, :256]
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
        judge, photos("astronaut")[0, :, :256, :256], photos("coffee")[0, :, :256, :320]
    )


def test_removal_and_two_image_questions_batch_like_alone(judge, photos):
    qwen_checks.removal_and_two_image_questions_batch_like_alone(
        judge, photos("astronaut")[0, :, :224, :280], photos("rocket")[0, :, :300, :200]
    )


def test_missing_or_wrong_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "no-such-judge"
    with pytest.raises(CheckpointError, match="no-such-judge"):
        Qwen3VLJudge.from_pretrained(str(missing))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(CheckpointError, match="'qwen2_5_vl' model, expected 'qwen3_vl'"):
        Qwen3VLJudge.from_pretrained(str(tmp_path))
