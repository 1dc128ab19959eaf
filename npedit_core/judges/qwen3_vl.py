"""Qwen3-VL as the judge (`Qwen3VLForConditionalGeneration`), method.md 2.2.

Images: 16x16 patches, 2x2 merge (sides resized to multiples of 32), mean = std = 0.5, each still
image repeated over a temporal patch of 2. Qwen3-VL has no image processor class of its own: its
checkpoints use `Qwen2VLImageProcessor(Pil)` with a preprocessor_config.json that sets the values in
`SPEC`. Chat layout of the real Qwen3-VL (Instruct) template, which adds no system turn:

    <|im_start|>user\n<|vision_start|><|image_pad|>*n<|vision_end|>...{question}<|im_end|>\n
    <|im_start|>assistant\n
"""

from __future__ import annotations

import torch

from .qwen_vision import QwenVLJudge, VisionSpec
from .qwen_vision import preprocess as _preprocess

# Qwen3-VL checkpoints' preprocessor_config.json (e.g. Qwen3-VL-8B-Instruct): size.shortest_edge
# 65536 (256^2; smaller images are scaled up) and size.longest_edge 16777216 (4096^2).
SPEC = VisionSpec(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    min_pixels=65536,
    max_pixels=16777216,
)


def preprocess(images: torch.Tensor, spec: VisionSpec = SPEC) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> {"pixel_values": (B * gh * gw, 1536), "image_grid_thw": (B, 3)}, differentiable."""
    return _preprocess(images, spec)


class Qwen3VLJudge(QwenVLJudge):
    family = "qwen3_vl"
    model_type = "qwen3_vl"
    default_spec = SPEC
    system_prompt = None

    @classmethod
    def model_class(cls) -> type:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    @classmethod
    def tiny_config(cls):
        """A 2-layer text model (hidden 64) and a 2-block vision tower with the real patch/merge sizes and DeepStack."""
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(
            text_config=dict(
                vocab_size=151936,  # covers every real Qwen token id, up to </think> = 151668
                hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                # Interleaved M-RoPE over head_dim / 2 = 8 frequencies (the real model: [24, 20, 20] of 64).
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True},
                max_position_embeddings=4096,
            ),
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                num_position_embeddings=64,  # an 8x8 learned grid, bilinearly resampled to each image
                deepstack_visual_indexes=[0],  # block 0's features are added into text layer 0
            ),
            image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
            tie_word_embeddings=True,
        )
