"""Qwen2.5-VL as the judge (`Qwen2_5_VLForConditionalGeneration`), method.md 2.2.

Images: 14x14 patches, 2x2 merge (sides resized to multiples of 28), CLIP mean/std, each still image
repeated over a temporal patch of 2. Chat layout of the real Qwen2.5-VL template, which adds a
default system turn when none is given:

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\n<|vision_start|><|image_pad|>*n<|vision_end|>...{question}<|im_end|>\n
    <|im_start|>assistant\n
"""

from __future__ import annotations

import torch

from .qwen_vision import QwenVLJudge, VisionSpec
from .qwen_vision import preprocess as _preprocess

# `Qwen2VLImageProcessorPil` class defaults (transformers 5.x). Real checkpoints ship their own
# preprocessor_config.json (Qwen2.5-VL-7B-Instruct: max_pixels 12845056), read by `from_pretrained`;
# at ~512 px neither bound is reached.
SPEC = VisionSpec(
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    mean=(0.48145466, 0.4578275, 0.40821073),  # OPENAI_CLIP_MEAN
    std=(0.26862954, 0.26130258, 0.27577711),  # OPENAI_CLIP_STD
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 1280,
)


def preprocess(images: torch.Tensor, spec: VisionSpec = SPEC) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> {"pixel_values": (B * gh * gw, 1176), "image_grid_thw": (B, 3)}, differentiable."""
    return _preprocess(images, spec)


class Qwen25VLJudge(QwenVLJudge):
    family = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    default_spec = SPEC
    system_prompt = "You are a helpful assistant."

    @classmethod
    def model_class(cls) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def tiny_config(cls):
        """A 2-layer text model (hidden 64) and a 2-block vision tower with the real patch/merge/window sizes."""
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=151936,  # covers every real Qwen token id, up to </think> = 151668
                hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,  # head_dim 16
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},  # sums to 16/2
                max_position_embeddings=4096,
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                window_size=112, fullatt_block_indexes=[1],  # block 0 windowed, block 1 full, as in the real tower
            ),
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
            tie_word_embeddings=True,
        )
