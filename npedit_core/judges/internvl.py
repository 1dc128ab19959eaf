"""InternVL3 judge (HF-native `InternVLForConditionalGeneration`, e.g. OpenGVLab/InternVL3-14B-hf).

The model: an InternViT vision tower reads one 448x448 tile (14x14 patches -> 32x32 = 1024 tokens, CLS
dropped), a 0.5 pixel shuffle folds them into 16x16 = 256 tokens, an MLP projects them into a Qwen2.5
language model, where they replace the 256 `<IMG_CONTEXT>` placeholders of each image.

Prompt, exactly as the -hf chat template plus `InternVLProcessor` lay it out (no system turn):

    <|im_start|>user\n<img><IMG_CONTEXT>*256</img>\n[<img>...</img>\n]{question}<|im_end|>\n<|im_start|>assistant\n

The judge shows each image as a single tile (`crop_to_patches=False`): the processor's own default
splits images into up to 12 tiles plus a thumbnail, which costs up to 13x the tokens.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..assets import qwen_tokenizer_dir
from ..errors import CheckpointError, NPEditError
from .base import Judge, Question
from .pil_resize import pil_resize

IMAGE_SIZE = 448
# ImageNet statistics (InternVL3-hf preprocessor_config.json), not CLIP's.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

START_IMAGE, END_IMAGE, CONTEXT_IMAGE = "<img>", "</img>", "<IMG_CONTEXT>"
# The InternVL3-hf tokenizer is Qwen2.5-VL's (special tokens up to 151664) plus these, added in this
# order by transformers' convert_internvl_weights_to_hf.py: <img> 151665, </img> 151666,
# <IMG_CONTEXT> 151667 (= config.image_token_id), ..., <video> 151674.
INTERNVL_ADDED_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>")
FIRST_ADDED_ID = 151665
EXTRA_SPECIAL_TOKENS = {
    "start_image_token": START_IMAGE, "end_image_token": END_IMAGE,
    "context_image_token": CONTEXT_IMAGE, "video_token": "<video>",
}

# The -hf checkpoints' chat_template.jinja (one '<IMG_CONTEXT>\n' per image; the processor expands it).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def preprocess(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) float in [0, 1] -> {"pixel_values": (B, 3, 448, 448) float}, differentiable.

    Matches `GotOcr2ImageProcessor` with `crop_to_patches=False`: PIL bicubic resize to 448x448 (no
    aspect ratio kept), rescale, ImageNet normalisation.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise NPEditError(f"InternVL preprocess: images must be float (B, 3, H, W); got {tuple(images.shape)} {images.dtype}")
    # The processor sees uint8 pixels, so anything outside [0, 1] is clipped there too.
    x = images.clamp(0.0, 1.0)
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        x = pil_resize(x, (IMAGE_SIZE, IMAGE_SIZE), "bicubic")
    mean = x.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return {"pixel_values": (x - mean) / std}


def internvl_tokenizer_from_qwen(qwen_dir: str | Path):
    """The InternVL3-hf tokenizer rebuilt from a Qwen tokenizer folder, with InternVL's ids.

    The shared Qwen fixture carries Qwen3's extra tokens at 151665-151668 (`<think>` ...), which
    InternVL3 (Qwen2.5 based) does not have: they are dropped and InternVL's tokens take those ids.
    Cached per folder (building it takes ~2 s); treat the result as read-only.
    """
    return _tokenizer_from_qwen(str(Path(qwen_dir).resolve()))


@lru_cache(maxsize=4)
def _tokenizer_from_qwen(qwen_dir: str):
    from tokenizers import Tokenizer
    from transformers import TokenizersBackend

    path = Path(qwen_dir) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"InternVL judge: tokenizer file {path} not found")
    spec = json.loads(path.read_text(encoding="utf-8"))
    kept = [t for t in spec["added_tokens"] if t["id"] < FIRST_ADDED_ID]
    if not kept or max(t["id"] for t in kept) != FIRST_ADDED_ID - 1:
        raise CheckpointError(f"InternVL judge: {path} is not a Qwen2.5/3 tokenizer (special tokens end before {FIRST_ADDED_ID - 1})")
    template = next(t for t in kept if t["content"] == "<|endoftext|>")
    added = [dict(template, id=FIRST_ADDED_ID + i, content=s) for i, s in enumerate(INTERNVL_ADDED_TOKENS)]
    spec["added_tokens"] = kept + added
    tokenizer = TokenizersBackend(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=EXTRA_SPECIAL_TOKENS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


class InternVLJudge(Judge):
    """InternVL3 as a yes/no judge; one 448x448 tile (256 image tokens) per image."""

    family = "internvl"

    def __init__(self, model: nn.Module, tokenizer, system_prompt: str | None = None):
        super().__init__(model, tokenizer)
        # Off by default, as in the -hf chat template; the remote-code InternVL chat() adds one.
        self.system_prompt = system_prompt
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (START_IMAGE, END_IMAGE, CONTEXT_IMAGE)}
        if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
            raise NPEditError(f"InternVL judge: tokenizer lacks the image tokens {ids}")
        if ids[CONTEXT_IMAGE] != model.config.image_token_id:
            raise NPEditError(
                f"InternVL judge: tokenizer's {CONTEXT_IMAGE} is {ids[CONTEXT_IMAGE]} but the model's "
                f"image_token_id is {model.config.image_token_id}"
            )
        if tokenizer.pad_token_id is None:
            raise NPEditError("InternVL judge: tokenizer has no pad token (needed for left padding)")
        vision = model.config.vision_config
        # (448 / 14)^2 = 1024 patch tokens, pixel shuffle 0.5 keeps a quarter: 256 per image.
        patches = (vision.image_size[0] // vision.patch_size[0]) * (vision.image_size[1] // vision.patch_size[1])
        self.image_seq_length = int(patches * model.config.downsample_ratio**2)
        if tuple(vision.image_size) != (IMAGE_SIZE, IMAGE_SIZE):
            raise NPEditError(f"InternVL judge: vision tower expects {tuple(vision.image_size)}, preprocess makes {IMAGE_SIZE}")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, dtype: torch.dtype = torch.bfloat16, device="cpu", **kwargs) -> "InternVLJudge":
        """Load an InternVL3-hf folder (config.json, safetensors, tokenizer files); never downloads."""
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"InternVL judge: folder {folder} not found")
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"InternVL judge: {folder / 'config.json'} not found (expected an InternVL3 -hf folder)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = InternVLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"InternVL judge: cannot load {folder}: {e}") from e
        return cls(model.to(device).eval(), tokenizer, **kwargs)

    @classmethod
    def tiny(cls, seed: int = 0, tokenizer_path: str | None = None) -> "InternVLJudge":
        """Random InternVL at a tiny width, with the real 448 / 14 geometry (256 image tokens) and tokenizer."""
        from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

        tokenizer = internvl_tokenizer_from_qwen(tokenizer_path or qwen_tokenizer_dir())
        vision = InternVLVisionConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            image_size=IMAGE_SIZE, patch_size=14,
        )
        text = Qwen2Config(
            vocab_size=152064,  # Qwen2.5's padded vocabulary, as in InternVL3-14B
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096, eos_token_id=151645, pad_token_id=151643,
        )
        config = InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(CONTEXT_IMAGE),
            image_seq_length=256, downsample_ratio=0.5,
        )
        torch.manual_seed(seed)
        model = InternVLForConditionalGeneration(config).eval()
        return cls(model, tokenizer)

    # --- the protocol -------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return preprocess(images)

    def prompt(self, question: Question) -> str:
        """The chat text of one question, image placeholders already expanded (what the processor feeds the tokenizer)."""
        image = f"{START_IMAGE}{CONTEXT_IMAGE * self.image_seq_length}{END_IMAGE}\n"
        system = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        return f"{system}<|im_start|>user\n{image * len(question.images)}{question.text}<|im_end|>\n<|im_start|>assistant\n"

    def build_inputs(self, questions: list[Question]) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask / position_ids (Q, L), left-padded; pixel_values (N_images, 3, 448, 448).

        pixel_values follow the order of the `<IMG_CONTEXT>` runs in the batch (question by question),
        which is the order the model scatters image features into them.
        """
        tiles = []
        for qi, q in enumerate(questions):
            if not q.images:
                raise NPEditError(f"InternVL judge: question {qi} has no image")
            for ii, img in enumerate(q.images):
                if img.ndim != 3 or img.shape[0] != 3:
                    raise NPEditError(f"InternVL judge: question {qi} image {ii} must be (3, H, W); got {tuple(img.shape)}")
                # Images may differ in size, so each is resized on its own: (1, 3, 448, 448).
                tiles.append(preprocess(img[None])["pixel_values"])
        enc = self.tokenizer([self.prompt(q) for q in questions], padding=True, padding_side="left", return_tensors="pt")
        mask = enc["attention_mask"]
        # Positions count real tokens only (as generate() does), so a padded row sees the same
        # rotary positions as when run alone; pads get a dummy position, they are masked anyway.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self.device
        return {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": mask.to(device),
            "position_ids": position_ids.to(device),
            "pixel_values": torch.cat(tiles).to(device),
        }


__all__ = ["InternVLJudge", "preprocess", "internvl_tokenizer_from_qwen", "CHAT_TEMPLATE"]
