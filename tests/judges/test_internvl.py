"""InternVL3 judge: preprocessing against the HF Pil processor, prompts and logits against InternVLProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npedit_core.errors import CheckpointError, NPEditError
from npedit_core.judges.base import Question
from npedit_core.judges.internvl import CHAT_TEMPLATE, IMAGE_MEAN, IMAGE_STD, InternVLJudge, preprocess

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def judge(qwen_tokenizer_path):
    return InternVLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)


def quantised(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, so the float image and the uint8 one given to HF are the same picture."""
    return (x * 255).round() / 255


def to_pil(x: torch.Tensor):
    """(3, H, W) in [0, 1] on the 8-bit grid -> PIL RGB image."""
    return PIL.fromarray((x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def hf_image_processor():
    """GotOcr2 Pil processor with InternVL3-hf's preprocessor_config settings, one tile per image."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, resample=3, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD),
        crop_to_patches=False, min_patches=1, max_patches=12,
    )


def hf_processor(tokenizer):
    """InternVLProcessor built offline. Its video processor needs torchvision (absent here), so the
    class check for that one slot is skipped; images and text go through the real code."""
    from transformers import InternVLProcessor

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)

    return ImageOnlyInternVLProcessor(
        image_processor=hf_image_processor(), tokenizer=tokenizer, video_processor=None,
        image_seq_length=256, chat_template=CHAT_TEMPLATE,
    )


# --- tokenizer ---------------------------------------------------------------------------------
def test_yes_no_ids_are_the_real_qwen_ids(judge):
    assert (judge.yes_id, judge.no_id) == (9454, 2753)


def test_special_token_ids_match_internvl3_hf(judge):
    tok = judge.tokenizer
    ids = tok.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</box>", "<video>"])
    assert ids == [151665, 151666, 151667, 151668, 151673, 151674]
    assert judge.model.config.image_token_id == 151667
    assert (tok.start_image_token_id, tok.end_image_token_id, tok.context_image_token_id) == (151665, 151666, 151667)
    # Qwen3's <think> (151667 in the shared fixture) is not a token of the Qwen2.5-based InternVL3.
    assert len(tok.encode("<think>", add_special_tokens=False)) > 1
    assert tok.encode("<|im_start|>user\n", add_special_tokens=False) == [151644, 872, 198]


# --- preprocessing -----------------------------------------------------------------------------
def test_preprocess_exact_without_resize(photos):
    x = quantised(photos("astronaut")[:, :, 32:480, 16:464])  # a real 448x448 crop
    ours = preprocess(x)["pixel_values"]
    ref = hf_image_processor()(to_pil(x[0]), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 448, 448)
    assert (ours - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket-portrait"])
def test_preprocess_resize_within_2_of_255(photos, name):
    # rocket-portrait (640x300) shrinks the height far more than the width: Pillow >= 13 then runs
    # the vertical pass first, and the other order is off by several /255 at the rocket's edges.
    x = quantised(photos("rocket").transpose(-1, -2)[:, :, :, :300] if name == "rocket-portrait" else photos(name))
    ours = preprocess(x)["pixel_values"]
    ref = hf_image_processor()(to_pil(x[0]), return_tensors="pt")["pixel_values"]
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    pixel_err = ((ours - ref) * std).abs().max().item() * 255  # back to 0..255 pixel units
    assert ours.shape == ref.shape == (1, 3, 448, 448)
    assert pixel_err <= 2.0


def test_preprocess_rejects_bad_shape():
    with pytest.raises(NPEditError, match=r"\(B, 3, H, W\)"):
        preprocess(torch.rand(3, 64, 64))


# --- prompts and logits --------------------------------------------------------------------------
def _questions(photos):
    crop = quantised(photos("astronaut")[0, :, 32:480, 16:464])
    chelsea, coffee = quantised(photos("chelsea")[0]), quantised(photos("coffee")[0])
    return [
        Question("The first image is the original. Was the edit made in the second? Answer Yes or No.", [chelsea, coffee]),
        Question("Is there a cat? Answer Yes or No.", [crop]),
    ]


def test_same_logits_as_model_on_its_own_processor_output(judge, photos):
    questions = _questions(photos)
    ours = judge.answer_logits(questions)  # batched, second row left-padded
    batch = judge.build_inputs(questions)
    assert batch["pixel_values"].shape == (3, 3, 448, 448)
    processor = hf_processor(judge.tokenizer)
    for row, q in enumerate(questions):
        messages = [{"role": "user", "content": [{"type": "image"}] * len(q.images) + [{"type": "text", "text": q.text}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ref_inputs = processor(images=[to_pil(i) for i in q.images], text=text, return_tensors="pt", crop_to_patches=False)
        # Same tokens: our row, once its left padding is stripped, is the processor's sequence.
        n = ref_inputs["input_ids"].shape[1]
        assert batch["input_ids"][row, -n:].tolist() == ref_inputs["input_ids"][0].tolist()
        assert batch["attention_mask"][row, :-n].sum() == 0
        with torch.no_grad():
            ref = judge.model(**ref_inputs).logits[0, -1, [judge.yes_id, judge.no_id]]
        assert torch.allclose(ours[row], ref, atol=1e-3), (row, ours[row], ref)
    # The comparison is sensitive: showing other images moves the logits far more than the tolerance.
    swapped = [Question(q.text, [torch.rand_like(i) for i in q.images]) for q in questions]
    assert (judge.answer_logits(swapped) - ours).abs().max() > 1e-2


def test_each_image_gives_256_context_tokens(judge, photos):
    questions = _questions(photos)
    ids = judge.build_inputs(questions)["input_ids"]
    assert (ids == 151667).sum(-1).tolist() == [512, 256]
    assert (ids == 151665).sum(-1).tolist() == [2, 1]
    assert ids[:, -3:].tolist() == [judge.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)] * 2


def test_gradients_reach_images_and_not_parameters(judge):
    a = torch.rand(3, 300, 451, requires_grad=True)
    b = torch.rand(3, 448, 448, requires_grad=True)
    logits = judge.answer_logits([Question("Same? Answer Yes or No.", [a, b]), Question("Cat?", [b])])
    loss = -torch.nn.functional.logsigmoid(logits[:, 0] - logits[:, 1]).mean()
    loss.backward()
    for img in (a, b):
        assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in judge.parameters())


def test_question_without_image_is_rejected(judge):
    with pytest.raises(NPEditError, match="question 0 has no image"):
        judge.build_inputs([Question("Hello?", [])])


# --- loading -------------------------------------------------------------------------------------
def test_from_pretrained_missing_folder_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        InternVLJudge.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="config.json"):
        InternVLJudge.from_pretrained(str(tmp_path))


def test_from_pretrained_round_trip(judge, tmp_path):
    judge.model.save_pretrained(tmp_path)
    judge.tokenizer.save_pretrained(tmp_path)
    loaded = InternVLJudge.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert loaded.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == 151667
    q = [Question("Cat? Answer Yes or No.", [torch.rand(3, 64, 80)])]
    assert torch.allclose(loaded.answer_logits(q), judge.answer_logits(q), atol=1e-6)
